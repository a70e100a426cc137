package reconciler

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
)

// Receiver is an HTTP endpoint that triggers a reconcile on a push, as Flux's notification
// receiver does: GitHub (X-Hub-Signature-256: sha256=HMAC of the body), GitLab (X-Gitlab-Token,
// the shared secret itself) and generic HMAC (X-Signature: sha256=HMAC of the body). A bad
// signature or token gets 401 and triggers nothing; a body over 1 MiB gets 413 before anything
// else is read; a delivery id seen before (X-GitHub-Delivery, X-Gitlab-Event-UUID,
// X-Delivery-ID) gets 409, so a captured request cannot be replayed.
type Receiver struct {
	Secret  []byte
	Trigger func()
	// SecretFunc, when set, gives the secret at each request instead of Secret (a mounted
	// Secret that appears or rotates while the process runs).
	SecretFunc func() []byte
	// SecretFor, when set, gives the secret for a request (the source its path names may have
	// one of its own) instead of SecretFunc and Secret.
	SecretFor func(r *http.Request) []byte
	// OnPush, when set, is called instead of Trigger with the authenticated request (the
	// cluster controller pokes the source the request's path names).
	OnPush func(r *http.Request)

	mu   sync.Mutex
	seen map[string]bool
	ring []string // delivery ids in the order seen, at most maxDeliveries
}

const (
	maxHookBody   = 1 << 20
	maxDeliveries = 4096
)

var errTooLarge = errors.New("body too large")

func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	kind := strings.TrimPrefix(r.URL.Path, "/hook/")
	var deliveryHeader string
	switch kind {
	case "github":
		deliveryHeader = "X-GitHub-Delivery"
	case "gitlab":
		deliveryHeader = "X-Gitlab-Event-UUID"
	case "generic-hmac":
		deliveryHeader = "X-Delivery-ID"
	default:
		http.NotFound(w, r)
		return
	}
	secret := rc.Secret
	switch {
	case rc.SecretFor != nil:
		secret = rc.SecretFor(r)
	case rc.SecretFunc != nil:
		secret = rc.SecretFunc()
	}
	if len(secret) == 0 {
		http.Error(w, "invalid signature or token", http.StatusUnauthorized)
		return
	}
	if r.ContentLength > maxHookBody {
		http.Error(w, errTooLarge.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	var ok bool
	switch kind {
	case "gitlab":
		// The token authenticates without the body, which is not read at all.
		token := r.Header.Get("X-Gitlab-Token")
		ok = token != "" && subtle.ConstantTimeCompare([]byte(token), secret) == 1
	default:
		header := "X-Signature"
		if kind == "github" {
			header = "X-Hub-Signature-256"
		}
		sig, well := signature(r.Header.Get(header))
		if !well {
			break // no signature: nothing is worth reading
		}
		body, err := readBody(r.Body)
		if errors.Is(err, errTooLarge) {
			http.Error(w, errTooLarge.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		ok = hmac.Equal(sig, mac.Sum(nil))
	}
	if !ok {
		http.Error(w, "invalid signature or token", http.StatusUnauthorized)
		return
	}
	if id := r.Header.Get(deliveryHeader); id != "" && !rc.firstDelivery(kind+"/"+id) {
		http.Error(w, "delivery already seen", http.StatusConflict)
		return
	}
	if rc.OnPush != nil {
		rc.OnPush(r)
	} else {
		rc.Trigger()
	}
	w.WriteHeader(http.StatusAccepted)
}

// signature parses "sha256=<hex>".
func signature(header string) ([]byte, bool) {
	hexSig, found := strings.CutPrefix(header, "sha256=")
	if !found {
		return nil, false
	}
	sig, err := hex.DecodeString(hexSig)
	return sig, err == nil && len(sig) == sha256.Size
}

// readBody reads at most maxHookBody bytes and says when there were more.
func readBody(body io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(body, maxHookBody+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxHookBody {
		return nil, errTooLarge
	}
	return data, nil
}

// firstDelivery records an authenticated delivery id and reports whether it is new; the
// oldest ids are forgotten past maxDeliveries.
func (rc *Receiver) firstDelivery(id string) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.seen == nil {
		rc.seen = map[string]bool{}
	}
	if rc.seen[id] {
		return false
	}
	rc.seen[id] = true
	rc.ring = append(rc.ring, id)
	if len(rc.ring) > maxDeliveries {
		delete(rc.seen, rc.ring[0])
		rc.ring = rc.ring[1:]
	}
	return true
}
