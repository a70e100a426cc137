package reconciler

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Receiver is an HTTP endpoint that triggers a reconcile on a push, as Flux's notification
// receiver does: GitHub (X-Hub-Signature-256: sha256=HMAC of the body), GitLab (X-Gitlab-Token,
// the shared secret itself) and generic HMAC (X-Signature: sha256=HMAC of the body). A bad
// signature or token gets 401 and triggers nothing; a body over 1 MiB gets 413 before anything
// else is read; a delivery id seen before (X-GitHub-Delivery, X-Gitlab-Event-UUID,
// X-Delivery-ID) gets 409. Delivery ids are not signed, so a captured request could be replayed
// with a new id: the signed body bounds its age instead. A GitHub push carries
// repository.pushed_at; a generic-HMAC body must carry "timestamp" (Unix seconds or RFC 3339).
// A delivery more than MaxAge from now gets 409 and triggers nothing. GitLab's token is the
// secret itself and signs nothing: whoever captured one request can forge any, so nothing more is
// checked there (use a secret per source, over TLS). GitHub's ping is answered without a
// trigger, and events other than push are ignored.
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
	// MaxAge bounds how far a signed delivery's time may be from now; DefaultMaxHookAge when
	// zero.
	MaxAge time.Duration
	Now    func() time.Time

	mu   sync.Mutex
	seen map[string]bool
	ring []string // delivery ids in the order seen, at most maxDeliveries
}

const (
	maxHookBody   = 1 << 20
	maxDeliveries = 4096
	// DefaultMaxHookAge is how old (or how far ahead, for clock skew) a delivery may be.
	DefaultMaxHookAge = 10 * time.Minute
)

var errTooLarge = errors.New("body too large")

// deliveryHeaders is the header naming a delivery's id, for each kind of hook served.
var deliveryHeaders = map[string]string{
	"github":       "X-GitHub-Delivery",
	"gitlab":       "X-Gitlab-Event-UUID",
	"generic-hmac": "X-Delivery-ID",
}

// ServeHTTP takes a delivery through its checks in turn; each that refuses it has answered.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	kind := strings.TrimPrefix(r.URL.Path, "/hook/")
	deliveryHeader, ok := deliveryHeaders[kind]
	if !ok {
		http.NotFound(w, r)
		return
	}
	body, ok := rc.authenticate(w, r, kind)
	if !ok {
		return
	}
	if kind == "github" && !isGitHubPush(w, r) {
		return
	}
	if kind != "gitlab" && !rc.recent(w, kind, body) {
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

func (rc *Receiver) secret(r *http.Request) []byte {
	switch {
	case rc.SecretFor != nil:
		return rc.SecretFor(r)
	case rc.SecretFunc != nil:
		return rc.SecretFunc()
	}
	return rc.Secret
}

// authenticate checks a delivery's token or signature, and returns the body it read to check
// a signature; false when it refused the delivery.
func (rc *Receiver) authenticate(w http.ResponseWriter, r *http.Request, kind string) ([]byte, bool) {
	secret := rc.secret(r)
	if len(secret) == 0 {
		http.Error(w, "invalid signature or token", http.StatusUnauthorized)
		return nil, false
	}
	if r.ContentLength > maxHookBody {
		http.Error(w, errTooLarge.Error(), http.StatusRequestEntityTooLarge)
		return nil, false
	}
	var ok bool
	var body []byte
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
		var err error
		body, err = readBody(r.Body)
		if errors.Is(err, errTooLarge) {
			http.Error(w, errTooLarge.Error(), http.StatusRequestEntityTooLarge)
			return nil, false
		}
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return nil, false
		}
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		ok = hmac.Equal(sig, mac.Sum(nil))
	}
	if !ok {
		http.Error(w, "invalid signature or token", http.StatusUnauthorized)
		return nil, false
	}
	return body, true
}

// isGitHubPush answers a GitHub event other than push, and says whether the event is a push.
func isGitHubPush(w http.ResponseWriter, r *http.Request) bool {
	switch event := r.Header.Get("X-GitHub-Event"); event {
	case "push":
		return true
	case "ping":
		w.Write([]byte("pong\n"))
	case "":
		http.Error(w, "no X-GitHub-Event", http.StatusBadRequest)
	default:
		w.Write([]byte("event " + event + " ignored: only push triggers a reconcile\n"))
	}
	return false
}

// recent refuses a delivery whose signed body is older (or further ahead) than MaxAge: a
// replay under a new delivery id.
func (rc *Receiver) recent(w http.ResponseWriter, kind string, body []byte) bool {
	at, err := deliveryTime(kind, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	maxAge := rc.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultMaxHookAge
	}
	now := time.Now()
	if rc.Now != nil {
		now = rc.Now()
	}
	if age := now.Sub(at); age > maxAge || age < -maxAge {
		http.Error(w, fmt.Sprintf("delivery signed for %s, %s from now (at most %s): a replay?",
			at.UTC().Format(time.RFC3339), age.Round(time.Second), maxAge), http.StatusConflict)
		return false
	}
	return true
}

// deliveryTime reads the time a signed body carries: a GitHub push's repository.pushed_at
// (Unix seconds), a generic-HMAC body's top-level "timestamp" (Unix seconds or RFC 3339).
func deliveryTime(kind string, body []byte) (time.Time, error) {
	var raw json.RawMessage
	field := "timestamp"
	if kind == "github" {
		field = "repository.pushed_at"
		var push struct {
			Repository struct {
				PushedAt json.RawMessage `json:"pushed_at"`
			} `json:"repository"`
		}
		if err := json.Unmarshal(body, &push); err != nil {
			return time.Time{}, fmt.Errorf("push body: %w", err)
		}
		raw = push.Repository.PushedAt
	} else {
		var msg struct {
			Timestamp json.RawMessage `json:"timestamp"`
		}
		if err := json.Unmarshal(body, &msg); err != nil {
			return time.Time{}, fmt.Errorf("body is not a JSON object with a \"timestamp\": %w", err)
		}
		raw = msg.Timestamp
	}
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}, fmt.Errorf("the signed body has no %s: it bounds how long a delivery can be replayed", field)
	}
	var secs json.Number
	if err := json.Unmarshal(raw, &secs); err == nil {
		n, err := secs.Int64()
		if err != nil {
			return time.Time{}, fmt.Errorf("%s %s: want whole Unix seconds", field, secs)
		}
		return time.Unix(n, 0), nil
	}
	var text string
	if err := json.Unmarshal(raw, &text); err == nil {
		if t, err := time.Parse(time.RFC3339, text); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%s %s: want Unix seconds or an RFC 3339 time", field, raw)
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
