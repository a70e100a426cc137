//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var fluxRepo = filepath.Join("..", "..", "policy", "testdata", "flux")

// TestValidateFluxRepository: a repository laid out for Flux validates as a whole (the base on
// its own and each overlay built on it), an overlay with the repository as its root, and not an
// overlay alone, whose base lies outside it.
func TestValidateFluxRepository(t *testing.T) {
	stdout, stderr, code := run(t, "validate", fluxRepo)
	if code != 0 || stdout != "9 policies valid\n" {
		t.Fatalf("validate the repository: exit %d, %q\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, filepath.Join(fluxRepo, "base", "web.yaml")+`:1: skipped apps/v1 Deployment "prod-web": not a network policy`) {
		t.Errorf("the built Deployment is not named where it was written:\n%s", stderr)
	}
	overlay := filepath.Join(fluxRepo, "overlays", "production")
	stdout, stderr, code = run(t, "validate", "-o", "json", "--root", fluxRepo, overlay)
	if code != 0 || !strings.Contains(stdout, `"CiliumNetworkPolicy production/prod-web"`) || strings.Contains(stdout, "staging") {
		t.Errorf("validate the production overlay: exit %d\n%s\n%s", code, stdout, stderr)
	}
	_, stderr, code = run(t, "validate", overlay)
	if code != 1 || !strings.Contains(stderr, filepath.Join(overlay, "kustomization.yaml")+":6:5: Kustomization: resources[0]: ../../base: leads outside") {
		t.Errorf("validate the overlay alone: exit %d\n%s", code, stderr)
	}
}

// TestValidateStdin: `helm template ... | netpact validate -` reads the rendered policies from
// standard input, and errors are located as <stdin>:line:column.
func TestValidateStdin(t *testing.T) {
	policy, err := os.ReadFile(filepath.Join("..", "..", "testdata", "policies", "a-allows-b-on-8080.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rendered := "---\n# Source: chart/templates/deployment.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n---\n# Source: chart/templates/policy.yaml\n" + string(policy)
	if stdout, stderr, code := runStdin(t, rendered, "validate", "-"); code != 0 || stdout != "1 policies valid\n" {
		t.Errorf("a rendered chart: exit %d, %q\n%s", code, stdout, stderr)
	}
	broken := strings.Replace(rendered, "toPorts", "toPort", 1)
	_, stderr, code := runStdin(t, broken, "validate", "-")
	if code != 1 || !strings.HasPrefix(stderr, `<stdin>:15:5: CiliumNetworkPolicy app/a: spec.ingress[0].toPort: unknown field "toPort"`) {
		t.Errorf("a broken policy on stdin: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := runStdin(t, "", "validate", "-"); code != 1 || stderr != "<stdin>:0:0: holds no policy (give --allow-empty to accept that)\n1 error\n" {
		t.Errorf("nothing on stdin: exit %d\n%s", code, stderr)
	}
	big := strings.Repeat("# padding\n", 2<<20)
	if _, stderr, code := runStdin(t, big, "validate", "-"); code != 1 || !strings.Contains(stderr, "<stdin>:0:0: standard input is larger than 16 MiB") {
		t.Errorf("20 MiB on stdin: exit %d\n%s", code, stderr)
	}
}

// TestValidateEmpty: a folder (or file) holding no policy fails validation unless
// --allow-empty, as does a path that is not there; plan still compares against an empty base.
func TestValidateEmpty(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.MkdirAll(empty, 0o755)
	os.WriteFile(filepath.Join(dir, "deploy.yaml"), []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"), 0o644)
	seed := filepath.Join("..", "..", "policies", "001-frontend-to-backend")
	_, stderr, code := run(t, "validate", seed, empty)
	if code != 1 || !strings.Contains(stderr, empty+":0:0: holds no policy (give --allow-empty to accept that)") || strings.Contains(stderr, seed+":") {
		t.Errorf("an empty folder beside a seed: exit %d\n%s", code, stderr)
	}
	if _, stderr, code := run(t, "validate", filepath.Join(dir, "deploy.yaml")); code != 1 || !strings.Contains(stderr, "deploy.yaml:0:0: holds no policy") {
		t.Errorf("a file of no policy: exit %d\n%s", code, stderr)
	}
	if stdout, stderr, code := run(t, "validate", "--allow-empty", empty); code != 0 || stdout != "0 policies valid\n" {
		t.Errorf("--allow-empty: exit %d, %q\n%s", code, stdout, stderr)
	}
	if _, stderr, code := run(t, "validate", "--allow-empty", filepath.Join(dir, "nowhere")); code != 1 || !strings.Contains(stderr, "nowhere:0:0: cannot read: no such file or directory") {
		t.Errorf("a path that is not there: exit %d\n%s", code, stderr)
	}
	cluster := filepath.Join("..", "..", "docs", "examples", "cluster.yaml")
	if _, stderr, code := run(t, "plan", "--cluster", cluster, empty, seed); code != planChanges {
		t.Errorf("plan from an empty base: exit %d, want %d\n%s", code, planChanges, stderr)
	}
}

// TestPlanFluxOverlay: plan reads an overlay of a repository's revisions with the checkout as
// its root, as the reconciler does, so its base beside it is read.
func TestPlanFluxOverlay(t *testing.T) {
	r := newScratchRepo(t)
	r.copyTree(fluxRepo, ".")
	r.commit("a Flux repository")
	kust := filepath.Join(r.dir, "overlays", "production", "kustomization.yaml")
	data, err := os.ReadFile(kust)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(kust, []byte(string(data)+"  - target: {kind: CiliumNetworkPolicy, name: web}\n    patch: '[{\"op\": \"replace\", \"path\": \"/spec/ingress/0/toPorts/0/ports/0/port\", \"value\": \"9090\"}]'\n"), 0o644)
	r.commit("production's web on 9090")
	cluster := filepath.Join("..", "..", "docs", "examples", "cluster.yaml")
	_, stderr, code := run(t, "plan", "--cluster", cluster, "--repo", r.dir, "--base", "HEAD~1", "--head", "HEAD", filepath.Join(r.dir, "overlays", "production"))
	if (code != 0 && code != planChanges) || strings.Contains(stderr, "error") || strings.Contains(stderr, "leads outside") {
		t.Errorf("plan of an overlay: exit %d\n%s", code, stderr)
	}
}
