package reconciler

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/netpact/netpact/api/v1alpha1"
)

// hangingServer accepts connections and never answers.
func hangingServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(done)
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// TestStatusRedactsCredentials: a source URL with user:token@ fails to resolve; neither the URL
// in the status nor any message or error shows the token.
func TestStatusRedactsCredentials(t *testing.T) {
	addr := hangingServer(t)
	url := "http://netpact:tok3n-s3cr3t@" + addr + "/policies.git"
	obj := newObj(url)
	r := New(obj, &Source{URL: url, Ref: obj.Spec.Ref, Timeout: 300 * time.Millisecond, Auth: Auth{Password: "other-s3cr3t"}})
	r.WorkDir = t.TempDir()
	if err := r.Reconcile(context.Background()); err == nil {
		t.Fatal("an unreachable source was accepted")
	}
	st := r.Status()
	all := st.Spec.URL + "\n" + strings.Join(st.Status.Errors, "\n")
	for _, c := range st.Status.Conditions {
		all += "\n" + c.Message
	}
	if !strings.Contains(all, addr) {
		t.Fatalf("the status does not name the source at all: %s", all)
	}
	for _, secret := range []string{"tok3n-s3cr3t", "other-s3cr3t"} {
		if strings.Contains(all, secret) {
			t.Errorf("the status shows %q:\n%s", secret, all)
		}
	}
}

// TestStatusDoesNotWaitForAReconcile: while a pass waits on a server that never answers, Status
// answers at once.
func TestStatusDoesNotWaitForAReconcile(t *testing.T) {
	url := "http://" + hangingServer(t) + "/policies.git"
	obj := newObj(url)
	r := New(obj, &Source{URL: url, Ref: obj.Spec.Ref, Timeout: 3 * time.Second})
	r.WorkDir = t.TempDir()
	passDone := make(chan struct{})
	go func() { r.Reconcile(context.Background()); close(passDone) }()
	defer func() { <-passDone }()
	time.Sleep(200 * time.Millisecond) // the pass is now waiting on the server
	got := make(chan *v1alpha1.PolicySource, 1)
	go func() { got <- r.Status() }()
	select {
	case st := <-got:
		if !conditions.IsTrue(st, meta.ReconcilingCondition) {
			t.Errorf("the status of a pass in progress is not Reconciling: %+v", st.Status.Conditions)
		}
	case <-time.After(time.Second):
		t.Fatal("Status blocked while a reconcile waited on the network")
	}
}

// TestRevisionIsTheCommitCheckedOut: a push lands between listing the ref and cloning it; the
// status names the commit that was cloned and enforced, not the one listed.
func TestRevisionIsTheCommitCheckedOut(t *testing.T) {
	srv := newGitServer(t)
	target, probe := localNode(t)
	w := srv.clone(t)
	listed := w.commit("allow b", map[string]string{"policies/a.yaml": allowB})
	w.push("main")
	obj := newObj(srv.httpURL())
	r := New(obj, &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 5 * time.Second}, target)
	r.WorkDir = t.TempDir()
	var cloned string
	r.afterResolve = func() {
		cloned = w.commit("allow c", map[string]string{"policies/a.yaml": allowC})
		w.push("main")
	}
	if err := r.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := r.Status()
	if want := "main@sha1:" + cloned; st.Status.LastEnforcedRevision != want || st.Status.LastAttemptedRevision != want {
		t.Errorf("status names enforced %s, attempted %s; the clone was %s (listed %s)", st.Status.LastEnforcedRevision,
			st.Status.LastAttemptedRevision, cloned, listed)
	}
	if probe("c") != allowed || probe("b") != timedOut {
		t.Error("the datapath does not hold the cloned revision")
	}
}

const otherNamespace = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: closed, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

// TestEmptyingRevisionRefused: a revision that deletes every policy, or every policy of a
// namespace that had some, would open everything: it is refused (Stalled, EmptyBundle) and the
// last good revision stays enforced, unless the source allows it.
func TestEmptyingRevisionRefused(t *testing.T) {
	srv := newGitServer(t)
	target, probe := localNode(t)
	w := srv.clone(t)
	first := w.commit("two namespaces", map[string]string{"policies/a.yaml": allowB, "policies/other.yaml": otherNamespace})
	w.push("main")
	obj := newObj(srv.httpURL())
	r := New(obj, &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 5 * time.Second}, target)
	r.WorkDir = t.TempDir()
	ctx := context.Background()
	if err := r.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	refused := func(what, contains string) {
		t.Helper()
		if err := r.Reconcile(ctx); err == nil {
			t.Fatalf("%s: accepted", what)
		}
		st := r.Status()
		ok, reason, msg := ready(st)
		if ok || reason != v1alpha1.EmptyBundleReason || !strings.Contains(msg, contains) || !conditions.IsTrue(st, meta.StalledCondition) {
			t.Errorf("%s: ready=%v %s: %s", what, ok, reason, msg)
		}
		if st.Status.LastEnforcedRevision != "main@sha1:"+first {
			t.Errorf("%s: enforced revision is now %s", what, st.Status.LastEnforcedRevision)
		}
		if probe("b") != allowed || probe("c") != timedOut {
			t.Errorf("%s: the last good revision is no longer enforced", what)
		}
	}
	run(t, w.dir, "git", "rm", "-q", "policies/other.yaml")
	w.commit("drop the other namespace's policy", nil)
	w.push("main")
	refused("a namespace emptied", "namespace other")

	run(t, w.dir, "git", "rm", "-q", "policies/a.yaml")
	w.commit("drop every policy", map[string]string{"policies/README.md": "nothing\n"})
	w.push("main")
	refused("every policy removed", "no policy")

	// Allowed explicitly, it is enforced: everything opens, as asked.
	r.mu.Lock()
	r.obj.Spec.AllowEmpty = true
	r.mu.Unlock()
	r.stalledAt = ""
	if err := r.Reconcile(ctx); err != nil {
		t.Fatalf("allowEmpty: %v", err)
	}
	if probe("c") != allowed {
		t.Error("allowEmpty: the empty bundle is not enforced")
	}
}

// TestWebhookHardening: a body over the limit is refused as too large before it is read whole,
// an unsigned request is refused without reading its body, and an authenticated delivery id is
// accepted once.
func TestWebhookHardening(t *testing.T) {
	secret := []byte("hook-secret")
	triggered := 0
	srv := httptest.NewServer(&Receiver{Secret: secret, Trigger: func() { triggered++ }})
	defer srv.Close()
	post := func(path string, body string, headers map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 512)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		return resp.StatusCode, b.String()
	}
	big := strings.Repeat("x", maxHookBody+1)
	if code, msg := post("/hook/github", big, map[string]string{"X-Hub-Signature-256": "sha256=" + hmacSHA256(secret, []byte(big))}); code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "body too large") {
		t.Errorf("a body over 1 MiB: %d %q", code, msg)
	}
	if code, _ := post("/hook/github", "{}", nil); code != http.StatusUnauthorized {
		t.Errorf("no signature: %d", code)
	}
	body := githubPush(time.Now())
	signed := map[string]string{"X-Hub-Signature-256": "sha256=" + hmacSHA256(secret, []byte(body)), "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
		"X-GitHub-Event": "push"}
	if code, _ := post("/hook/github", body, signed); code != http.StatusAccepted {
		t.Errorf("first delivery: %d", code)
	}
	if code, msg := post("/hook/github", body, signed); code != http.StatusConflict || !strings.Contains(msg, "already seen") {
		t.Errorf("replayed delivery: %d %q", code, msg)
	}
	gl := map[string]string{"X-Gitlab-Token": string(secret), "X-Gitlab-Event-UUID": "a-uuid"}
	if code, _ := post("/hook/gitlab", body, gl); code != http.StatusAccepted {
		t.Errorf("gitlab delivery: %d", code)
	}
	if code, _ := post("/hook/gitlab", body, gl); code != http.StatusConflict {
		t.Errorf("replayed gitlab delivery: %d", code)
	}
	if triggered != 2 {
		t.Errorf("%d triggers, want 2 (one per first delivery)", triggered)
	}
}

func TestSecretFileTrailingNewline(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ data, want string }{
		{"t0ken\n", "t0ken"}, {"t0ken\r\n", "t0ken"}, {"t0ken", "t0ken"}, {" t0ken \n\n", " t0ken "},
	} {
		p := filepath.Join(dir, "secret")
		if err := os.WriteFile(p, []byte(c.data), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadSecretFile(p)
		if err != nil || string(got) != c.want {
			t.Errorf("%q: got %q, %v; want %q", c.data, got, err, c.want)
		}
	}
}

// TestWebhookDeliveryAge: a delivery id is not signed, so a captured push replayed with a new id
// would trigger again; the time in the signed body bounds how long that works. GitHub's ping and
// other events trigger nothing.
func TestWebhookDeliveryAge(t *testing.T) {
	secret := []byte("hook-secret")
	triggered := 0
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	srv := httptest.NewServer(&Receiver{Secret: secret, Trigger: func() { triggered++ }, Now: func() time.Time { return now }})
	defer srv.Close()
	id := 0
	post := func(kind, event, body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/hook/"+kind, strings.NewReader(body))
		id++
		sig := "sha256=" + hmacSHA256(secret, []byte(body))
		switch kind {
		case "github":
			req.Header.Set("X-Hub-Signature-256", sig)
			req.Header.Set("X-GitHub-Delivery", fmt.Sprint(id))
			req.Header.Set("X-GitHub-Event", event)
		default:
			req.Header.Set("X-Signature", sig)
			req.Header.Set("X-Delivery-ID", fmt.Sprint(id))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	old := githubPush(now.Add(-20 * time.Minute))
	for _, c := range []struct {
		name, kind, event, body string
		code                    int
		triggers                bool
	}{
		{"fresh push", "github", "push", githubPush(now.Add(-time.Minute)), http.StatusAccepted, true},
		{"a push of 20 minutes ago, new delivery id", "github", "push", old, http.StatusConflict, false},
		{"the same again, another id", "github", "push", old, http.StatusConflict, false},
		{"a push signed an hour ahead", "github", "push", githubPush(now.Add(time.Hour)), http.StatusConflict, false},
		{"a push without pushed_at", "github", "push", `{"ref":"refs/heads/main"}`, http.StatusBadRequest, false},
		{"no event header", "github", "", githubPush(now), http.StatusBadRequest, false},
		{"ping", "github", "ping", `{"zen":"Keep it logically awesome."}`, http.StatusOK, false},
		{"another event", "github", "issues", githubPush(now), http.StatusOK, false},
		{"generic fresh", "generic-hmac", "", fmt.Sprintf(`{"timestamp":%d}`, now.Unix()), http.StatusAccepted, true},
		{"generic RFC 3339", "generic-hmac", "", `{"timestamp":"2026-12-07T11:58:00Z"}`, http.StatusAccepted, true},
		{"generic old", "generic-hmac", "", fmt.Sprintf(`{"timestamp":%d}`, now.Add(-11*time.Minute).Unix()), http.StatusConflict, false},
		{"generic without a timestamp", "generic-hmac", "", `{"ref":"refs/heads/main"}`, http.StatusBadRequest, false},
		{"generic, not JSON", "generic-hmac", "", `ref=main`, http.StatusBadRequest, false},
		{"generic, a fraction", "generic-hmac", "", `{"timestamp":1.5}`, http.StatusBadRequest, false},
	} {
		before := triggered
		if code := post(c.kind, c.event, c.body); code != c.code {
			t.Errorf("%s: %d, want %d", c.name, code, c.code)
		}
		if (triggered > before) != c.triggers {
			t.Errorf("%s: triggered %v, want %v", c.name, triggered > before, c.triggers)
		}
	}
}

// TestPokeBudget: a flood of notifications for one source (replays within the age bound, or a
// sender gone wrong) starts a burst of reconciles, then one per pokeEvery: the pokes in between are
// folded into one, not lost, and not each a fetch. Names that are no source get nothing and
// cannot reset the sources' budgets.
func TestPokeBudget(t *testing.T) {
	c := &Controller{pokes: make(chan event.GenericEvent, 1000), sources: map[types.NamespacedName]*sourceState{
		{Namespace: "tenant", Name: "src"}: {}, {Namespace: "other", Name: "src"}: {}}}
	for i := range 5000 {
		c.Poke("tenant", fmt.Sprint("none-", i)) // names that are no source: nothing, nothing kept
	}
	if n := len(c.pokes); n != 0 {
		t.Fatalf("%d reconciles asked for names that are no source", n)
	}
	for range 100 {
		c.Poke("tenant", "src")
	}
	c.Poke("other", "src") // another source has a budget of its own
	if n := len(c.pokes); n != pokeBurst+1 {
		t.Fatalf("%d reconciles asked at once, want the burst %d and the other source's", n, pokeBurst)
	}
	for range pokeBurst + 1 {
		<-c.pokes
	}
	select {
	case ev := <-c.pokes:
		if ev.Object.GetNamespace() != "tenant" {
			t.Errorf("the folded poke is for %s", ev.Object.GetNamespace())
		}
	case <-time.After(5 * pokeEvery):
		t.Fatal("the pokes past the budget were lost, not folded into one")
	}
	select {
	case <-c.pokes:
		t.Error("more than one reconcile for the pokes past the budget")
	case <-time.After(2 * pokeEvery):
	}
}
