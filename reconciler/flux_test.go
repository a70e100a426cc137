package reconciler

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/policy"
)

// fluxRepository is policy/testdata/flux, a repository laid out for Flux (a base, overlays for
// staging and production), as files to commit.
func fluxRepository(t *testing.T) map[string]string {
	t.Helper()
	root := filepath.Join("..", "policy", "testdata", "flux")
	files := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		files[rel] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestReconcileFluxRepository: a PolicySource whose spec.path is an overlay of a Flux repository
// is built as kustomize-controller builds it, its base read from elsewhere in the checkout: the
// overlay's policies, each with its origin in the base file it was written in, are enforced;
// a revision whose overlay names a remote base is refused with file:line.
func TestReconcileFluxRepository(t *testing.T) {
	srv := newGitServer(t)
	w := srv.clone(t)
	head := w.commit("a Flux repository", fluxRepository(t))
	w.push("main")
	obj := newObj(srv.httpURL())
	obj.Spec.Path = "overlays/production"
	target := &NodeTarget{NodeName: "paper", Node: paperNode{}, Cluster: func() *policy.Cluster { return &policy.Cluster{} }}
	r := New(obj, &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 5 * time.Second}, target)
	r.WorkDir = t.TempDir()
	ctx := context.Background()
	if err := r.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); st.Status.LastEnforcedRevision != "main@sha1:"+head {
		t.Fatalf("enforced %q, want main@sha1:%s", st.Status.LastEnforcedRevision, head)
	}

	// What that reconcile enforced: the load step of the same revision's checkout.
	rev, err := r.Source.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := r.Source.Fetch(ctx, t.TempDir(), rev)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.load(obj, dir, rev.String())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range b.Policies {
		got = append(got, p.Key.String()+" "+p.Origin.Path+":"+strconv.Itoa(p.Origin.Line))
	}
	want := []string{
		"CiliumClusterwideNetworkPolicy prod-dns base/dns.yaml:1",
		"CiliumNetworkPolicy production/prod-web base/web.yaml:16",
		"NetworkPolicy production/prod-db base/db.yaml:1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("bundle:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, p := range b.Policies {
		if p.Name == "prod-web" && (p.Origin.RuleLines["spec.ingress[0]"] != 25 || !strings.Contains(string(p.Raw), `"tier":"front"`)) {
			t.Errorf("prod-web: rule lines %v, object %s", p.Origin.RuleLines, p.Raw)
		}
	}

	// An overlay that names a remote base is refused before kustomize could fetch it.
	bad := w.commit("a remote base", map[string]string{"overlays/production/kustomization.yaml": "resources:\n- github.com/example/policies//base?ref=v1\n"})
	w.push("main")
	if err := r.Reconcile(ctx); err == nil {
		t.Fatal("a remote base was accepted")
	}
	st := r.Status()
	if len(st.Status.Errors) != 1 || !strings.HasPrefix(st.Status.Errors[0], `overlays/production/kustomization.yaml:2:3: Kustomization: resources[0]: "github.com/example/policies//base?ref=v1" is remote`) ||
		st.Status.LastAttemptedRevision != "main@sha1:"+bad || st.Status.LastEnforcedRevision != "main@sha1:"+head {
		t.Errorf("status after a remote base: %+v", st.Status)
	}
}
