//go:build linux

package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/reconciler"
)

// TestReconcilerOnceAndStatus reconciles a Git repository made from policies/ onto a local node
// through the CLI and reads the status back.
func TestReconcilerOnceAndStatus(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "git", "git")
	tmp := t.TempDir()
	repo := filepath.Join(tmp, "repo")
	if out, err := exec.Command("cp", "-r", filepath.Join("..", "..", "policies"), repo).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"-c", "user.name=t", "-c", "user.email=t@netpact.io", "commit", "-q", "-m", "seed"}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	head, _ := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	status := filepath.Join(tmp, "status.json")
	_, stderr, code := run(t, "reconciler", "local", "--once", "--source", "file://"+repo, "--path", ".",
		"--node", filepath.Join("..", "..", "docs", "examples", "cluster.yaml"), "--status-file", status)
	if code != 0 {
		t.Fatalf("reconciler exit %d: %s", code, stderr)
	}
	stdout, _, code := run(t, "status", "--status-file", status, "-o", "json")
	if code != 0 {
		t.Fatalf("status exit %d", code)
	}
	var st v1alpha1.PolicySource
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatal(err)
	}
	want := "main@sha1:" + strings.TrimSpace(string(head))
	if st.Status.LastEnforcedRevision != want {
		t.Errorf("enforced %q, want %q", st.Status.LastEnforcedRevision, want)
	}
	// The status may name files and rules of the repository: root's alone.
	if fi, err := os.Stat(status); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("status file mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestStatusOnlyWhereTheOperatorChose: the webhook's listener faces the Git host and serves no
// status; the status listener serves it with the source's credentials redacted.
func TestStatusOnlyWhereTheOperatorChose(t *testing.T) {
	url := "https://netpact:s3cr3t-t0ken@git.example/policies.git"
	obj := &v1alpha1.PolicySource{Spec: v1alpha1.PolicySourceSpec{URL: url}}
	r := reconciler.New(obj, &reconciler.Source{URL: url})
	get := func(h http.Handler) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
		return rec
	}
	if rec := get(webhookMux(r, []byte("secret"))); rec.Code != http.StatusNotFound {
		t.Errorf("the webhook listener answers /status with %d", rec.Code)
	}
	rec := get(statusMux(r))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "git.example") {
		t.Fatalf("status listener: %d %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "s3cr3t") {
		t.Errorf("the status shows the token: %s", rec.Body)
	}
}
