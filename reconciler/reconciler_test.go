package reconciler

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/testenv"
)

// gitServer is a bare repository served by Debian's git over HTTP (git http-backend behind a
// Go CGI handler, pushes enabled) and by git daemon.
type gitServer struct {
	root    string
	http    *httptest.Server
	daemon  *exec.Cmd
	gitPort int
}

func run(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=netpact", "GIT_AUTHOR_EMAIL=test@netpact.io",
		"GIT_COMMITTER_NAME=netpact", "GIT_COMMITTER_EMAIL=test@netpact.io")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func newGitServer(t testing.TB) *gitServer {
	t.Helper()
	testenv.RequireCommand(t, "git", "git")
	backend := "/usr/lib/git-core/git-http-backend"
	if _, err := os.Stat(backend); err != nil {
		testenv.Missing(t, backend, "apt-get install git")
	}
	s := &gitServer{root: t.TempDir()}
	run(t, s.root, "git", "init", "-q", "--bare", "-b", "main", "policies.git")
	run(t, filepath.Join(s.root, "policies.git"), "git", "config", "http.receivepack", "true")
	run(t, filepath.Join(s.root, "policies.git"), "git", "config", "receive.denyDeleteCurrent", "ignore")
	s.http = httptest.NewServer(&cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + s.root, "GIT_HTTP_EXPORT_ALL=1"}})
	t.Cleanup(s.http.Close)
	return s
}

func (s *gitServer) httpURL() string { return s.http.URL + "/policies.git" }

// startDaemon serves the same repository with git daemon on a free port.
func (s *gitServer) startDaemon(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.gitPort = l.Addr().(*net.TCPAddr).Port
	l.Close()
	s.daemon = exec.Command("git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack", "--base-path="+s.root,
		"--listen=127.0.0.1", fmt.Sprintf("--port=%d", s.gitPort), s.root)
	// git runs git-daemon as a child: both in a process group of their own, killed together,
	// or the daemon outlives the test.
	s.daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-s.daemon.Process.Pid, syscall.SIGKILL); s.daemon.Wait() })
	url := fmt.Sprintf("git://127.0.0.1:%d/policies.git", s.gitPort)
	for i := 0; i < 50; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.gitPort)); err == nil {
			c.Close()
			return url
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("git daemon did not start")
	return ""
}

// workTree is a clone to commit and push from.
type workTree struct {
	t   testing.TB
	dir string
}

func (s *gitServer) clone(t testing.TB) *workTree {
	dir := filepath.Join(t.TempDir(), "work")
	run(t, filepath.Dir(dir), "git", "clone", "-q", s.httpURL(), dir)
	run(t, dir, "git", "checkout", "-q", "-B", "main")
	return &workTree{t: t, dir: dir}
}

func (w *workTree) commit(msg string, files map[string]string) string {
	for name, body := range files {
		p := filepath.Join(w.dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			w.t.Fatal(err)
		}
	}
	run(w.t, w.dir, "git", "add", "-A")
	run(w.t, w.dir, "git", "commit", "-q", "-m", msg)
	return run(w.t, w.dir, "git", "rev-parse", "HEAD")
}

func (w *workTree) push(args ...string) {
	run(w.t, w.dir, append([]string{"git", "push", "-q", "origin"}, args...)...)
}

var allowB = testPolicy("a-allows-b-on-8080.yaml")

// testPolicy is a policy of the repository's testdata/policies, which the tests of several
// packages share.
func testPolicy(name string) string {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "policies", name))
	if err != nil {
		panic(err)
	}
	return string(b)
}

const allowC = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

const broken = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoint: [{matchLabels: {app: c}}]
`

func newObj(url string) *v1alpha1.PolicySource {
	return &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Name: "policies", Namespace: "netpact-system"},
		Spec: v1alpha1.PolicySourceSpec{URL: url, Ref: v1alpha1.GitRef{Branch: "main"}, Path: "policies",
			Interval: metav1.Duration{Duration: time.Minute}}}
}

func ready(obj *v1alpha1.PolicySource) (bool, string, string) {
	c := conditions.Get(obj, meta.ReadyCondition)
	if c == nil {
		return false, "", ""
	}
	return c.Status == metav1.ConditionTrue, c.Reason, c.Message
}

// TestPushToEnforced walks a repository's life over HTTP: a good commit is enforced (real probes
// show it), a broken one is refused with file:line while the previous stays enforced, a fix is
// enforced, force-pushed history is followed, and a deleted branch, an unreachable server and a
// timeout each leave the last good revision enforced with a clear status.
func TestPushToEnforced(t *testing.T) {
	srv := newGitServer(t)
	target, probe := localNode(t)
	w := srv.clone(t)
	first := w.commit("allow b", map[string]string{"policies/a.yaml": allowB, "README.md": "policies\n"})
	w.push("main")

	obj := newObj(srv.httpURL())
	r := New(obj, &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 5 * time.Second}, target)
	r.WorkDir = t.TempDir()
	ctx := context.Background()

	if err := r.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	st := r.Status()
	if want := "main@sha1:" + first; st.Status.LastEnforcedRevision != want || st.Status.LastAppliedRevision != want {
		t.Fatalf("enforced %q applied %q, want %q", st.Status.LastEnforcedRevision, st.Status.LastAppliedRevision, want)
	}
	if ok, _, msg := ready(st); !ok || !conditions.IsTrue(st, v1alpha1.EnforcedCondition) {
		t.Fatalf("not ready: %s", msg)
	}
	if probe("b") != allowed || probe("c") != timedOut {
		t.Fatalf("first revision not enforced: b %s, c %s", probe("b"), probe("c"))
	}

	// A broken policy: refused with file:line, nothing applied, the first revision stays.
	bad := w.commit("break it", map[string]string{"policies/a.yaml": broken})
	w.push("main")
	if err := r.Reconcile(ctx); err == nil {
		t.Fatal("a broken revision was accepted")
	}
	st = r.Status()
	if ok, reason, msg := ready(st); ok || reason != v1alpha1.ValidationFailedReason || !strings.Contains(msg, "sha1:"+bad) || !strings.Contains(msg, "still enforcing main@sha1:"+first) {
		t.Fatalf("status after a broken push: ready=%v %s: %s", ok, reason, msg)
	}
	if len(st.Status.Errors) != 1 || !strings.HasPrefix(st.Status.Errors[0], "policies/a.yaml:7:5: CiliumNetworkPolicy app/a: spec.ingress[0].fromEndpoint: unknown field") {
		t.Fatalf("errors do not name file:line: %v", st.Status.Errors)
	}
	if !conditions.IsTrue(st, meta.StalledCondition) || st.Status.LastEnforcedRevision != "main@sha1:"+first || st.Status.LastAttemptedRevision != "main@sha1:"+bad {
		t.Fatalf("revisions after a broken push: %+v", st.Status)
	}
	if probe("b") != allowed || probe("c") != timedOut {
		t.Fatal("the previous revision is no longer enforced after a broken push")
	}

	// The fix is enforced.
	fix := w.commit("allow c instead", map[string]string{"policies/a.yaml": allowC})
	w.push("main")
	if err := r.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if st = r.Status(); st.Status.LastEnforcedRevision != "main@sha1:"+fix || conditions.Has(st, meta.StalledCondition) {
		t.Fatalf("fix not enforced: %+v", st.Status)
	}
	if probe("b") != timedOut || probe("c") != allowed {
		t.Fatal("the fix is not what the datapath enforces")
	}

	// Force-pushed history: a fresh clone follows it.
	run(t, w.dir, "git", "reset", "-q", "--hard", first)
	rewritten := w.commit("rewritten history", map[string]string{"policies/a.yaml": allowB, "NOTES.md": "rewritten\n"})
	w.push("--force", "main")
	if err := r.Reconcile(ctx); err != nil {
		t.Fatalf("force-pushed history: %v", err)
	}
	if st = r.Status(); st.Status.LastEnforcedRevision != "main@sha1:"+rewritten {
		t.Fatalf("force-pushed revision not enforced: %+v", st.Status)
	}
	if probe("b") != allowed || probe("c") != timedOut {
		t.Fatal("force-pushed revision not what the datapath enforces")
	}
	good := "main@sha1:" + rewritten

	keeps := func(what, reason, contains string) {
		t.Helper()
		st := r.Status()
		ok, gotReason, msg := ready(st)
		if ok || gotReason != reason || !strings.Contains(msg, contains) || !strings.Contains(msg, "still enforcing "+good) {
			t.Errorf("%s: ready=%v %s: %s", what, ok, gotReason, msg)
		}
		if st.Status.LastEnforcedRevision != good {
			t.Errorf("%s: enforced revision changed to %s", what, st.Status.LastEnforcedRevision)
		}
		if probe("b") != allowed || probe("c") != timedOut {
			t.Errorf("%s: the last good revision is no longer enforced", what)
		}
	}

	// A deleted branch.
	w.push("--delete", "main")
	if err := r.Reconcile(ctx); err == nil {
		t.Error("a deleted branch was not reported")
	}
	keeps("deleted branch", v1alpha1.GitOperationFailedReason, `branch "main" does not exist`)
	w.push("main")

	// An unreachable server.
	r.Source.URL = "http://127.0.0.1:1/policies.git"
	if err := r.Reconcile(ctx); err == nil {
		t.Error("an unreachable server was not reported")
	}
	keeps("unreachable server", v1alpha1.GitOperationFailedReason, "connection refused")

	// A server that accepts and never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	r.Source.URL, r.Source.Timeout = "http://"+l.Addr().String()+"/policies.git", time.Second
	start := time.Now()
	if err := r.Reconcile(ctx); err == nil {
		t.Error("a hanging server was not reported")
	}
	// The source's timeout is 1 s; 5 s tells a timeout that works from one that does not (go-git's
	// own would wait minutes), not how fast it is.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the timeout took %s", took)
	}
	keeps("timeout", v1alpha1.GitOperationFailedReason, "timed out")
}

// TestGitDaemonAndRefs follows tags, semver ranges, named refs and commits over git://.
func TestGitDaemonAndRefs(t *testing.T) {
	srv := newGitServer(t)
	url := srv.startDaemon(t)
	w := srv.clone(t)
	c1 := w.commit("one", map[string]string{"policies/a.yaml": allowB})
	run(t, w.dir, "git", "tag", "-a", "v1.2.0", "-m", "v1.2.0")
	c2 := w.commit("two", map[string]string{"policies/a.yaml": allowC})
	run(t, w.dir, "git", "tag", "v1.3.0")
	w.push("main", "--tags")
	ctx := context.Background()
	for _, tc := range []struct {
		ref  v1alpha1.GitRef
		want string
	}{
		{v1alpha1.GitRef{Branch: "main"}, "main@sha1:" + c2},
		{v1alpha1.GitRef{Tag: "v1.2.0"}, "v1.2.0@sha1:" + c1},
		{v1alpha1.GitRef{SemVer: "~1.2"}, "v1.2.0@sha1:" + c1},
		{v1alpha1.GitRef{SemVer: ">=1.0.0"}, "v1.3.0@sha1:" + c2},
		{v1alpha1.GitRef{Name: "refs/heads/main"}, "refs/heads/main@sha1:" + c2},
		{v1alpha1.GitRef{Commit: c1}, "sha1:" + c1},
	} {
		src := &Source{URL: url, Ref: tc.ref, Timeout: 10 * time.Second}
		rev, err := src.Resolve(ctx)
		if err != nil {
			t.Errorf("%+v: %v", tc.ref, err)
			continue
		}
		if rev.String() != tc.want {
			t.Errorf("%+v: revision %s, want %s", tc.ref, rev, tc.want)
		}
		dir, commit, err := src.Fetch(ctx, t.TempDir(), rev)
		if err != nil {
			t.Errorf("%+v: fetch: %v", tc.ref, err)
			continue
		}
		if commit.Hash != rev.Hash {
			t.Errorf("%+v: fetched %s, resolved %s", tc.ref, commit.Hash, rev.Hash)
		}
		if _, err := os.Stat(filepath.Join(dir, "policies", "a.yaml")); err != nil {
			t.Errorf("%+v: checkout lacks the policy: %v", tc.ref, err)
		}
	}
}

// TestSignedCommits applies only commits signed by a key of the keyring.
func TestSignedCommits(t *testing.T) {
	srv := newGitServer(t)
	trusted, err := openpgp.NewEntity("netpact trusted", "", "trusted@netpact.io", nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := openpgp.NewEntity("someone else", "", "other@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	var kr strings.Builder
	aw, _ := armor.Encode(&kr, openpgp.PublicKeyType, nil)
	trusted.Serialize(aw)
	aw.Close()

	seed := srv.clone(t)
	seed.commit("initial", map[string]string{"README.md": "policies\n"})
	seed.push("main")
	dir := filepath.Join(t.TempDir(), "signed")
	repo, err := git.PlainClone(dir, false, &git.CloneOptions{URL: srv.httpURL()})
	if err != nil {
		t.Fatal(err)
	}
	wt, _ := repo.Worktree()
	commitAs := func(msg string, key *openpgp.Entity) string {
		os.MkdirAll(filepath.Join(dir, "policies"), 0o755)
		os.WriteFile(filepath.Join(dir, "policies", "a.yaml"), []byte(allowB+"# "+msg+"\n"), 0o644)
		wt.Add(".")
		h, err := wt.Commit(msg, &git.CommitOptions{SignKey: key, Author: &object.Signature{Name: "netpact", Email: "test@netpact.io", When: time.Now()}})
		if err != nil {
			t.Fatal(err)
		}
		run(t, dir, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
		return h.String()
	}
	target, _ := localNode(t)
	obj := newObj(srv.httpURL())
	obj.Spec.VerifyKeyring = kr.String()
	r := New(obj, &Source{URL: srv.httpURL(), Ref: obj.Spec.Ref, Timeout: 5 * time.Second}, target)
	r.WorkDir = t.TempDir()
	ctx := context.Background()

	signed := commitAs("signed by the trusted key", trusted)
	if err := r.Reconcile(ctx); err != nil {
		t.Fatalf("trusted signature refused: %v", err)
	}
	for _, tc := range []struct {
		name string
		key  *openpgp.Entity
		want string
	}{{"unsigned", nil, "is not signed"}, {"signed by another key", other, "not signed by a trusted key"}} {
		commitAs(tc.name, tc.key)
		err := r.Reconcile(ctx)
		st := r.Status()
		ok, reason, msg := ready(st)
		if err == nil || ok || reason != v1alpha1.VerificationFailedReason || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: err %v, ready=%v %s: %s", tc.name, err, ok, reason, msg)
		}
		if st.Status.LastEnforcedRevision != "main@sha1:"+signed {
			t.Errorf("%s: enforced revision moved to %s", tc.name, st.Status.LastEnforcedRevision)
		}
	}
	// Signatures go-git cannot check are refused with a reason.
	c := &object.Commit{PGPSignature: "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----"}
	if err := VerifyCommit(c, kr.String()); err == nil || !strings.Contains(err.Error(), "SSH signature") {
		t.Errorf("SSH signature: %v", err)
	}
}

func TestWebhookSignatures(t *testing.T) {
	secret := []byte("s3cret")
	triggered := 0
	rc := &Receiver{Secret: secret, Trigger: func() { triggered++ }}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	body := githubPush(time.Now())
	mac := func(s string) string {
		h := hmacSHA256(secret, []byte(s))
		return "sha256=" + h
	}
	for _, tc := range []struct {
		name, path, header, value string
		want                      int
	}{
		{"github good", "/hook/github", "X-Hub-Signature-256", mac(body), http.StatusAccepted},
		{"github bad", "/hook/github", "X-Hub-Signature-256", mac(body + "x"), http.StatusUnauthorized},
		{"github missing", "/hook/github", "X-Other", "x", http.StatusUnauthorized},
		{"gitlab good", "/hook/gitlab", "X-Gitlab-Token", "s3cret", http.StatusAccepted},
		{"gitlab bad", "/hook/gitlab", "X-Gitlab-Token", "s3creT", http.StatusUnauthorized},
		{"generic good", "/hook/generic-hmac", "X-Signature", mac(body), http.StatusAccepted},
		{"generic bad", "/hook/generic-hmac", "X-Signature", "sha256=00", http.StatusUnauthorized},
	} {
		before := triggered
		req, _ := http.NewRequest(http.MethodPost, srv.URL+tc.path, strings.NewReader(body))
		req.Header.Set(tc.header, tc.value)
		req.Header.Set("X-GitHub-Event", "push")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
		if fired := triggered > before; fired != (tc.want == http.StatusAccepted) {
			t.Errorf("%s: triggered=%v", tc.name, fired)
		}
	}
}

// githubPush is a push event's body signed at time at: repository.pushed_at as GitHub sends it
// (Unix seconds), and a top-level timestamp as a generic-HMAC sender must.
func githubPush(at time.Time) string {
	return fmt.Sprintf(`{"ref":"refs/heads/main","timestamp":%d,"repository":{"pushed_at":%d}}`, at.Unix(), at.Unix())
}

func hmacSHA256(key, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// TestPollingAndBasicAuth checks that an unchanged ref makes no clone, and that HTTPS basic or
// token authentication is sent and required.
func TestPollingAndBasicAuth(t *testing.T) {
	srv := newGitServer(t)
	w := srv.clone(t)
	w.commit("allow b", map[string]string{"policies/a.yaml": allowB})
	w.push("main")
	authed, ca := basicAuthServer(t, srv)
	ctx := context.Background()
	if _, err := (&Source{URL: authed.URL + "/policies.git", Timeout: 5 * time.Second, Auth: Auth{CABundle: ca}}).Resolve(ctx); err == nil || !strings.Contains(err.Error(), "authentication required") {
		t.Errorf("no credentials: %v", err)
	}
	if _, err := (&Source{URL: authed.URL + "/policies.git", Timeout: 5 * time.Second, Auth: Auth{Username: "bot", Password: "wrong", CABundle: ca}}).Resolve(ctx); err == nil {
		t.Error("wrong credentials accepted")
	}
	if _, err := (&Source{URL: authed.URL + "/policies.git", Timeout: 5 * time.Second, Auth: Auth{Username: "bot", Password: "token-123"}}).Resolve(ctx); err == nil {
		t.Error("a certificate of an unknown CA accepted")
	}
	// Credentials never go over plain http.
	if _, err := (&Source{URL: srv.httpURL(), Timeout: 5 * time.Second, Auth: Auth{Username: "bot", Password: "token-123"}}).Resolve(ctx); err == nil ||
		!strings.Contains(err.Error(), "credentials are not sent over plain http") {
		t.Errorf("basic auth over http: %v", err)
	}

	target, _ := localNode(t)
	obj := newObj(authed.URL + "/policies.git")
	src := &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 5 * time.Second, Auth: Auth{Username: "bot", Password: "token-123", CABundle: ca}}
	r := New(obj, src, target)
	r.WorkDir = t.TempDir()
	for i := 0; i < 3; i++ {
		if err := r.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if src.Clones != 1 {
		t.Errorf("three polls of an unchanged ref made %d clones, want 1", src.Clones)
	}
	w.commit("allow c", map[string]string{"policies/a.yaml": allowC})
	w.push("main")
	if err := r.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if src.Clones != 2 {
		t.Errorf("a new revision made %d clones in all, want 2", src.Clones)
	}
}

// basicAuthServer is the repository over https behind basic authentication (user bot, password
// token-123), with the PEM of the CA its certificate is from.
func basicAuthServer(t testing.TB, srv *gitServer) (*httptest.Server, []byte) {
	authed := httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bot" || p != "token-123" {
			rw.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(rw, "unauthorized", http.StatusUnauthorized)
			return
		}
		srv.http.Config.Handler.ServeHTTP(rw, r)
	}))
	t.Cleanup(authed.Close)
	return authed, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authed.Certificate().Raw})
}

// TestSSHSource reads the repository over SSH from Debian's sshd, with a key and known_hosts;
// a host key that does not match known_hosts is refused.
func TestSSHSource(t *testing.T) {
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		testenv.Missing(t, sshd, "apt-get install openssh-server")
	}
	testenv.RequireCommand(t, "ssh-keygen", "openssh-client")
	testenv.RequireRoot(t)
	srv := newGitServer(t)
	w := srv.clone(t)
	head := w.commit("allow b", map[string]string{"policies/a.yaml": allowB})
	w.push("main")

	dir := t.TempDir()
	for _, k := range []string{"host", "user", "other"} {
		run(t, dir, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k))
	}
	userPub, _ := os.ReadFile(filepath.Join(dir, "user.pub"))
	os.WriteFile(filepath.Join(dir, "authorized_keys"), userPub, 0o600)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host
AuthorizedKeysFile %s/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile %s/sshd.pid
`, port, dir, dir, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	cmd := exec.Command(sshd, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var out strings.Builder
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	hostPub, _ := os.ReadFile(filepath.Join(dir, "host.pub"))
	otherPub, _ := os.ReadFile(filepath.Join(dir, "other.pub"))
	userKey, _ := os.ReadFile(filepath.Join(dir, "user"))
	known := func(pub []byte) []byte { return []byte(fmt.Sprintf("[127.0.0.1]:%d %s", port, pub)) }
	url := fmt.Sprintf("ssh://root@127.0.0.1:%d%s/policies.git", port, srv.root)
	ctx := context.Background()

	src := &Source{URL: url, Ref: v1alpha1.GitRef{Branch: "main"}, Timeout: 10 * time.Second, Auth: Auth{SSHKey: userKey, KnownHosts: known(hostPub)}}
	rev, err := src.Resolve(ctx)
	if err != nil {
		t.Fatalf("resolve over ssh: %v\nsshd: %s", err, out.String())
	}
	if rev.String() != "main@sha1:"+head {
		t.Errorf("revision %s", rev)
	}
	checkout, _, err := src.Fetch(ctx, t.TempDir(), rev)
	if err != nil {
		t.Fatalf("clone over ssh: %v", err)
	}
	if _, err := os.Stat(filepath.Join(checkout, "policies", "a.yaml")); err != nil {
		t.Error(err)
	}
	wrong := &Source{URL: url, Ref: v1alpha1.GitRef{Branch: "main"}, Timeout: 10 * time.Second, Auth: Auth{SSHKey: userKey, KnownHosts: known(otherPub)}}
	if _, err := wrong.Resolve(ctx); err == nil || !strings.Contains(err.Error(), "key mismatch") {
		t.Errorf("a host key missing from known_hosts: %v", err)
	}
	noKnown := &Source{URL: url, Timeout: 10 * time.Second, Auth: Auth{SSHKey: userKey}}
	if _, err := noKnown.Resolve(ctx); err == nil || !strings.Contains(err.Error(), "known_hosts") {
		t.Errorf("an SSH key without known_hosts: %v", err)
	}
}

// TestSymlinkedPathStaysInTheCheckout: a repository that commits `.p -> ..` and sets spec.path
// .p would read the directory around its checkout, where other sources' checkouts are. The path
// is resolved beneath the checkout: refused, naming only the path as written; nothing of the
// neighbours is read, and no absolute path is in the status.
func TestSymlinkedPathStaysInTheCheckout(t *testing.T) {
	srv := newGitServer(t)
	w := srv.clone(t)
	w.commit("allow b", map[string]string{"policies/a.yaml": allowB})
	if err := os.Symlink("..", filepath.Join(w.dir, ".p")); err != nil {
		t.Fatal(err)
	}
	w.commit("a link out", nil)
	w.push("main")
	target, _ := localNode(t)
	obj := newObj(srv.httpURL())
	obj.Spec.Path = ".p"
	r := New(obj, &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 5 * time.Second}, target)
	r.WorkDir = t.TempDir()
	// Another source's checkout, beside this one's.
	neighbour := filepath.Join(r.WorkDir, "checkout-other", "policies")
	os.MkdirAll(neighbour, 0o700)
	os.WriteFile(filepath.Join(neighbour, "theirs.yaml"), []byte(strings.Replace(allowC, "name: a,", "name: theirs,", 1)), 0o600)
	r.Reconcile(context.Background())
	st := r.Status()
	ok, reason, msg := ready(st)
	if ok || reason != meta.InvalidPathReason || !strings.Contains(msg, `path ".p" leaves the repository`) {
		t.Fatalf("spec.path .p -> ..: ready %v, %s: %s", ok, reason, msg)
	}
	all, _ := json.Marshal(st.Status)
	if strings.Contains(string(all), "theirs") || strings.Contains(string(all), r.WorkDir) {
		t.Errorf("the status shows the neighbour's policy or an absolute path: %s", all)
	}
}

// TestCheckoutBounds: a blob that inflates past the bound (20 MiB of zeros, a few KiB on the
// wire) is refused by its declared size before it is written, and nothing of the checkout
// stays; a normal repository still checks out.
func TestCheckoutBounds(t *testing.T) {
	srv := newGitServer(t)
	w := srv.clone(t)
	w.commit("allow b", map[string]string{"policies/a.yaml": allowB})
	w.push("main")
	src := &Source{URL: srv.httpURL(), Ref: v1alpha1.GitRef{Branch: "main"}, Timeout: 10 * time.Second}
	ctx := context.Background()
	parent := t.TempDir()
	rev, err := src.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := src.Fetch(ctx, parent, rev)
	if err != nil {
		t.Fatalf("a normal repository: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "policies", "a.yaml")); err != nil || string(b) != allowB {
		t.Fatalf("checked out %q, %v", b, err)
	}
	os.RemoveAll(dir)
	w.commit("a bomb", map[string]string{"zeros.bin": strings.Repeat("\x00", 20<<20)})
	w.push("main")
	if rev, err = src.Resolve(ctx); err != nil {
		t.Fatal(err)
	}
	if dir, _, err = src.Fetch(ctx, parent, rev); err == nil || !strings.Contains(err.Error(), "zeros.bin is 20971520 bytes, more than the 16777216 a file may have") {
		t.Fatalf("20 MiB of zeros: %v (%s)", err, dir)
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("the refused checkout left %d entries", len(left))
	}
}

// TestCheckoutStaysInside: a crafted tree (git accepts it) holds a symlink l to a directory
// outside the checkout and, under the same name, a directory l with a file: written naively the
// file would land outside. The checkout refuses it and nothing is written there.
func TestCheckoutStaysInside(t *testing.T) {
	srv := newGitServer(t)
	w := srv.clone(t)
	w.commit("allow b", map[string]string{"policies/a.yaml": allowB})
	outside := t.TempDir()
	sh := func(script string) string {
		t.Helper()
		cmd := exec.Command("sh", "-c", script)
		cmd.Dir = w.dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", script, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	link := sh("printf '" + outside + "' | git hash-object -w --stdin")
	file := sh("printf 'pwned' | git hash-object -w --stdin")
	sub := sh(`printf '100644 blob ` + file + `\tevil\n' | git mktree`)
	root := sh(`printf '120000 blob ` + link + `\tl\n040000 tree ` + sub + `\tl\n' | git mktree`)
	commit := sh("git commit-tree " + root + " -p HEAD -m crafted")
	sh("git update-ref refs/heads/main " + commit)
	w.push("main")
	src := &Source{URL: srv.httpURL(), Ref: v1alpha1.GitRef{Branch: "main"}, Timeout: 10 * time.Second}
	ctx := context.Background()
	rev, err := src.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if dir, _, err := src.Fetch(ctx, t.TempDir(), rev); err == nil {
		t.Errorf("the crafted tree was checked out in %s", dir)
	}
	if _, err := os.Stat(filepath.Join(outside, "evil")); err == nil {
		t.Fatal("the checkout wrote a file outside itself")
	}
}
