package reconciler

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
)

// Receiver is an HTTP endpoint that triggers a reconcile on a push, as Flux's notification
// receiver does: GitHub (X-Hub-Signature-256: sha256=HMAC of the body), GitLab (X-Gitlab-Token,
// the shared secret itself) and generic HMAC (X-Signature: sha256=HMAC of the body). A bad
// signature or token gets 401 and triggers nothing.
type Receiver struct {
	Secret  []byte
	Trigger func()
}

const maxHookBody = 1 << 20

func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxHookBody))
	if err != nil {
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	var ok bool
	switch strings.TrimPrefix(r.URL.Path, "/hook/") {
	case "github":
		ok = rc.hmacOK(r.Header.Get("X-Hub-Signature-256"), body)
	case "gitlab":
		token := r.Header.Get("X-Gitlab-Token")
		ok = token != "" && subtle.ConstantTimeCompare([]byte(token), rc.Secret) == 1
	case "generic-hmac":
		ok = rc.hmacOK(r.Header.Get("X-Signature"), body)
	default:
		http.NotFound(w, r)
		return
	}
	if !ok || len(rc.Secret) == 0 {
		http.Error(w, "invalid signature or token", http.StatusUnauthorized)
		return
	}
	rc.Trigger()
	w.WriteHeader(http.StatusAccepted)
}

// hmacOK checks "sha256=<hex>" against the HMAC-SHA256 of the body, in constant time.
func (rc *Receiver) hmacOK(header string, body []byte) bool {
	sig, found := strings.CutPrefix(header, "sha256=")
	if !found {
		return false
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, rc.Secret)
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}
