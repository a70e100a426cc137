package policy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testdata/flux is a repository laid out for Flux: a base, and overlays for staging and
// production that put it in their namespace with a name prefix, add labels and patch it (staging
// moves web's port, production adds a label to web's selector). clusters/ holds what Flux
// applies, which is no policy.

// fluxPolicy is what a test checks of one loaded policy.
type fluxPolicy struct {
	source   string
	labels   map[string]string
	selector map[string]string
	port     string
}

func describeFlux(t *testing.T, b *Bundle) map[string]fluxPolicy {
	t.Helper()
	out := map[string]fluxPolicy{}
	for _, p := range b.Policies {
		var meta struct {
			Metadata struct {
				Labels    map[string]string `json:"labels"`
				Namespace string            `json:"namespace"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(p.Raw, &meta); err != nil {
			t.Fatal(err)
		}
		f := fluxPolicy{source: p.Source.String(), labels: meta.Metadata.Labels}
		switch {
		case p.KNP != nil:
			f.selector = p.KNP.Spec.PodSelector.MatchLabels
			f.port = p.KNP.Spec.Ingress[0].Ports[0].Port.String()
		case p.Kind == KindCNP:
			f.selector = p.Cilium[0].EndpointSelector.MatchLabels
			f.port = p.Cilium[0].Ingress[0].ToPorts[0].Ports[0].Port
		case p.Kind == KindCCNP:
			f.port = p.Cilium[0].Egress[0].ToPorts[0].Ports[0].Port
			if meta.Metadata.Namespace != "" {
				t.Errorf("%s keeps the namespace %q kustomize gave it", p.Key, meta.Metadata.Namespace)
			}
		}
		out[p.Key.String()] = f
	}
	return out
}

func TestLoadFluxRepository(t *testing.T) {
	b, err := loadWithin(t, 10*time.Second, "testdata/flux")
	if err != nil {
		t.Fatal(err)
	}
	web, db, dns := "testdata/flux/base/web.yaml:16:1", "testdata/flux/base/db.yaml:1:1", "testdata/flux/base/dns.yaml:1:1"
	want := map[string]fluxPolicy{
		// The base, built on its own: what `kubectl apply -k base` would apply.
		"CiliumNetworkPolicy default/web":    {web, nil, map[string]string{"app": "web"}, "8080"},
		"NetworkPolicy default/db":           {db, nil, map[string]string{"app": "db"}, "5432"},
		"CiliumClusterwideNetworkPolicy dns": {dns, nil, nil, "53"},
		// labels (without selectors) and a JSON patch on the port.
		"CiliumNetworkPolicy staging/staging-web":    {web, map[string]string{"env": "staging"}, map[string]string{"app": "web"}, "8081"},
		"NetworkPolicy staging/staging-db":           {db, map[string]string{"env": "staging"}, map[string]string{"app": "db"}, "5432"},
		"CiliumClusterwideNetworkPolicy staging-dns": {dns, map[string]string{"env": "staging"}, nil, "53"},
		// commonLabels, which kustomize also adds to a NetworkPolicy's selectors (not to a
		// CiliumNetworkPolicy's, whose schema it does not know), and a strategic merge patch.
		"CiliumNetworkPolicy production/prod-web": {web, map[string]string{"env": "production"}, map[string]string{"app": "web", "tier": "front"}, "8080"},
		"NetworkPolicy production/prod-db":        {db, map[string]string{"env": "production"}, map[string]string{"app": "db", "env": "production"}, "5432"},
		"CiliumClusterwideNetworkPolicy prod-dns": {dns, map[string]string{"env": "production"}, nil, "53"},
	}
	if got := describeFlux(t, b); !reflect.DeepEqual(got, want) {
		t.Errorf("policies:\n%v\nwant\n%v", got, want)
	}
	// An overlay's rules point into the base, where they were written.
	for _, p := range b.Policies {
		if p.Name == "prod-web" {
			if lines := p.RuleLines(); lines["spec.ingress[0]"] != 25 {
				t.Errorf("prod-web's rule lines %v, want spec.ingress[0]=25 (base/web.yaml)", lines)
			}
		}
	}
	var notices []string
	for _, n := range b.Notices {
		notices = append(notices, n.String())
	}
	for _, want := range []string{
		`notice: testdata/flux/base/web.yaml:1: skipped apps/v1 Deployment "prod-web": not a network policy`,
		`notice: testdata/flux/clusters/production/apps.yaml:2: skipped kustomize.toolkit.fluxcd.io/v1 Kustomization "apps": not a network policy`,
	} {
		if !strings.Contains(strings.Join(notices, "\n"), want) {
			t.Errorf("notices lack %q:\n%s", want, strings.Join(notices, "\n"))
		}
	}
}

// TestLoadFluxOverlay: an overlay reads its base beside it only when the repository is the root
// (as for the reconciler, which loads spec.path in its checkout); given alone, the overlay is
// the root and its base outside it.
func TestLoadFluxOverlay(t *testing.T) {
	b, err := Load([]string{"testdata/flux/overlays/production"}, LoadOptions{Root: "testdata/flux"})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range b.Policies {
		keys = append(keys, p.Key.String())
	}
	if got, want := strings.Join(keys, ", "), "CiliumClusterwideNetworkPolicy prod-dns, CiliumNetworkPolicy production/prod-web, NetworkPolicy production/prod-db"; got != want {
		t.Errorf("policies %s, want %s", got, want)
	}
	_, err = Load([]string{"testdata/flux/overlays/production"}, LoadOptions{})
	wantLoadError(t, err, "testdata/flux/overlays/production/kustomization.yaml:6:5: Kustomization: resources[0]: ../../base: leads outside")
	_, err = Load([]string{"testdata/flux/base"}, LoadOptions{Root: "testdata/flux/overlays"})
	wantLoadError(t, err, "testdata/flux/base:0:0: leads outside")
}

// TestKustomizationErrorsNameTheFile: a policy made invalid by an overlay's patch is located in
// the file it was written in; kustomize's own errors name the kustomization and the entry.
func TestKustomizationErrorsNameTheFile(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, map[string]string{
		"base/kustomization.yaml": "resources: [p.yaml]\n",
		"base/p.yaml":             "# a policy\n" + okPolicy,
		"bad/kustomization.yaml": `resources: [../base]
patches:
- target: {kind: NetworkPolicy}
  patch: |-
    - {op: add, path: /spec/podSelector/matchLabels, value: {"a/b/c": x}}
`,
		"missing/kustomization.yaml": "resources: [../base]\npatches:\n- path: nowhere.yaml\n",
		// The same object twice: kustomize's own error, at the entry it names.
		"conflict/kustomization.yaml": "resources: [../base, again.yaml]\n",
		"conflict/again.yaml":         okPolicy,
	})
	_, err = loadWithin(t, 10*time.Second, root)
	wantLoadError(t, err,
		// The label the patch added is located where it was added.
		filepath.Join(root, "base/p.yaml")+":6:16: NetworkPolicy app/ok: spec.podSelector.matchLabels.a/b/c: invalid label key",
		filepath.Join(root, "missing/kustomization.yaml")+":3:9: Kustomization: patches[0].path: nowhere.yaml: cannot read: no such file",
		filepath.Join(root, "conflict/kustomization.yaml")+":1:22: Kustomization: resources[1]: kustomize build: accumulating resources")
}

// TestKustomizationHelmAndPluginsRefused: fields that render charts or run plugins are refused
// at their line, before kustomize runs.
func TestKustomizationHelmAndPluginsRefused(t *testing.T) {
	root := t.TempDir()
	write(t, root, map[string]string{"kustomization.yaml": `resources: [p.yaml]
helmCharts:
- name: cilium
  repo: https://helm.cilium.io
transformers: [t.yaml]
`, "p.yaml": okPolicy})
	_, err := loadWithin(t, 10*time.Second, root)
	wantLoadError(t, err, "kustomization.yaml:2:1: Kustomization: helmCharts: Helm charts are not rendered by netpact",
		"kustomization.yaml:5:1: Kustomization: transformers: netpact builds kustomizations without plugins")
}

// TestKustomizationRemoteRefused: nothing remote reaches kustomize, which would fetch a URL and
// clone a repository with git; a base that names one refuses every overlay built on it.
func TestKustomizationRemoteRefused(t *testing.T) {
	root := t.TempDir()
	write(t, root, map[string]string{
		"url/kustomization.yaml":     "resources:\n- p.yaml\n- https://example.com/policies.yaml\n",
		"url/p.yaml":                 okPolicy,
		"git/kustomization.yaml":     "resources:\n- github.com/org/policies//base?ref=v1\n- git@example.com:org/policies.git\n",
		"patch/kustomization.yaml":   "resources: [../url/p.yaml]\npatches:\n- path: http://example.com/p.yaml\n",
		"overlay/kustomization.yaml": "resources: [../url]\n",
	})
	_, err := loadWithin(t, 10*time.Second, root)
	wantLoadError(t, err,
		`url/kustomization.yaml:3:3: Kustomization: resources[1]: "https://example.com/policies.yaml" is remote`,
		`git/kustomization.yaml:2:3: Kustomization: resources[0]: "github.com/org/policies//base?ref=v1" is remote`,
		`git/kustomization.yaml:3:3: Kustomization: resources[1]: "git@example.com:org/policies.git" is remote`,
		`patch/kustomization.yaml:3:9: Kustomization: patches[0].path: "http://example.com/p.yaml" is remote`)
	if strings.Contains(err.Error(), "overlay/") || strings.Count(err.Error(), "policies.yaml") != 1 {
		t.Errorf("the overlay of a refused base is built or reported again:\n%v", err)
	}
}

// TestKustomizationLeavesTheRoot: a resource that leaves the root by name or through a
// symlink, a symlinked patch or generator file, and a cycle are each refused with the file
// that names them; nothing behind the symlinks is shown.
func TestKustomizationLeavesTheRoot(t *testing.T) {
	outside := t.TempDir()
	write(t, outside, map[string]string{"id_ed25519": secret, "base/kustomization.yaml": "resources: [p.yaml]\n", "base/p.yaml": okPolicy,
		"patch.yaml": "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ok}\nspec: {podSelector: {matchLabels: {x: y}}}\n"})
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, map[string]string{
		"p.yaml":                           okPolicy,
		"dotdot/kustomization.yaml":        "resources: [../outside]\n",
		"linked/kustomization.yaml":        "resources: [base]\n",
		"patched/kustomization.yaml":       "resources: [p.yaml]\npatches: [{path: patch.yaml}]\n",
		"patched/p.yaml":                   okPolicy,
		"keyed/kustomization.yaml":         "configMapGenerator:\n- name: keys\n  files: [key=id]\n",
		"cycle/base/kustomization.yaml":    "resources: [../overlay]\n",
		"cycle/overlay/kustomization.yaml": "resources: [../base]\n",
	})
	for link, target := range map[string]string{"linked/base": "base", "patched/patch.yaml": "patch.yaml", "keyed/id": "id_ed25519"} {
		if err := os.Symlink(filepath.Join(outside, target), filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		dir   string
		parts []string
	}{
		{"dotdot", []string{"dotdot/kustomization.yaml:1:13: Kustomization: resources[0]: ../outside: leads outside " + filepath.Join(root, "dotdot")}},
		{"linked", []string{"linked/kustomization.yaml:1:13: Kustomization: resources[0]: base: leads outside"}},
		{"patched", []string{"patched/kustomization.yaml:2:18: Kustomization: patches[0].path: patch.yaml: leads outside"}},
		{"keyed", []string{"keyed/kustomization.yaml:3:11: Kustomization: configMapGenerator[0].files[0]: id: leads outside"}},
		{"cycle", []string{"cycle/overlay/kustomization.yaml:1:13: Kustomization: resources[0]: ../base: a cycle: " +
			filepath.Join(root, "cycle/base") + " -> " + filepath.Join(root, "cycle/overlay") + " -> " + filepath.Join(root, "cycle/base")}},
	} {
		_, err := loadWithin(t, 10*time.Second, filepath.Join(root, c.dir))
		wantLoadError(t, err, c.parts...)
		if err != nil && (strings.Contains(err.Error(), "b3Bl") || strings.Contains(err.Error(), "BEGIN")) {
			t.Errorf("%s: the error shows the file behind the symlink: %v", c.dir, err)
		}
	}
	// The whole root: each kustomization once, the cycle from the first folder it is met in.
	_, err = loadWithin(t, 10*time.Second, root)
	wantLoadError(t, err, "a cycle", "dotdot/kustomization.yaml", "linked/kustomization.yaml", "patched/kustomization.yaml", "keyed/kustomization.yaml")
}

// TestKustomizationOutputBounded: a small kustomization that would make kustomize build too
// much is refused naming it, before kustomize runs: too many objects, patches that may apply to
// every object, and bases included so often that they add up to too many objects.
func TestKustomizationOutputBounded(t *testing.T) {
	root := t.TempDir()
	var many strings.Builder
	for i := 0; i <= maxBuildObjects; i++ {
		fmt.Fprintf(&many, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c%d}\n", i)
	}
	var part strings.Builder
	for i := 0; i < 1099; i++ {
		fmt.Fprintf(&part, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c%d}\n", i)
	}
	pad := strings.Repeat("x", 64<<10)
	files := map[string]string{
		"many/kustomization.yaml":   "resources: [objects.yaml]\n",
		"many/objects.yaml":         many.String(),
		"padded/kustomization.yaml": "resources: [part.yaml]\npatches:\n- target: {kind: ConfigMap}\n  patch: |-\n    [{op: add, path: /metadata/annotations, value: {pad: " + pad + "}}]\n",
		"padded/part.yaml":          part.String(),
	}
	// Ten folders each include the ten of the level below: 10^4 copies of one object.
	files["fan/l0/kustomization.yaml"] = "resources: [../l1/a, ../l1/b, ../l1/c, ../l1/d, ../l1/e, ../l1/f, ../l1/g, ../l1/h, ../l1/i, ../l1/j]\n"
	for level := 1; level <= 4; level++ {
		for _, d := range "abcdefghij" {
			k := fmt.Sprintf("namePrefix: %c%d-\nresources: [", d, level)
			if level == 4 {
				k += "../../big.yaml]\n"
			} else {
				for i, e := range "abcdefghij" {
					if i > 0 {
						k += ", "
					}
					k += fmt.Sprintf("../../l%d/%c", level+1, e)
				}
				k += "]\n"
			}
			files[fmt.Sprintf("fan/l%d/%c/kustomization.yaml", level, d)] = k
		}
	}
	files["fan/big.yaml"] = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\n"
	write(t, root, files)
	for dir, want := range map[string]string{
		"many":   "many/kustomization.yaml:0:0: Kustomization: the kustomization reads 2001 objects, more than the 2000",
		"padded": "padded/kustomization.yaml:0:0: Kustomization: 1099 objects and 64 KiB of patches could build more than 64 MiB",
		"fan":    "fan/l0/kustomization.yaml:0:0: Kustomization: the kustomization reads 10000 objects",
	} {
		start := time.Now()
		_, err := loadWithin(t, 20*time.Second, filepath.Join(root, dir))
		wantLoadError(t, err, want)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: refused after %s", dir, d)
		}
	}
}

// TestKustomizeFSStaysInside: whatever kustomize asks for goes through the root's checks, also
// what the kustomization check did not look at, and nothing is written.
func TestKustomizeFSStaysInside(t *testing.T) {
	outside := t.TempDir()
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	write(t, outside, map[string]string{"id_ed25519": secret})
	write(t, root, map[string]string{"p.yaml": okPolicy})
	if err := os.Symlink(filepath.Join(outside, "id_ed25519"), filepath.Join(root, "key")); err != nil {
		t.Fatal(err)
	}
	tr := newTree()
	tr.root, tr.given, tr.name = root, root, "repo"
	fs := newKustomizeFS(tr)
	if data, err := fs.ReadFile(filepath.Join(root, "p.yaml")); err != nil || string(data) != okPolicy {
		t.Fatalf("a file inside: %q, %v", data, err)
	}
	if _, err := fs.ReadFile(filepath.Join(root, "key")); err == nil || !strings.Contains(err.Error(), "repo/key: leads outside") || strings.Contains(err.Error(), "BEGIN") {
		t.Errorf("a symlink out: %v", err)
	}
	if _, _, err := fs.CleanedAbs(filepath.Join(root, "..")); err == nil {
		t.Error("the root's parent was resolved")
	}
	if fs.refusal == nil || !strings.Contains(fs.refusal.Error(), "repo/key") {
		t.Errorf("the first refusal is %v, want the symlink's", fs.refusal)
	}
	if err := fs.WriteFile(filepath.Join(root, "new.yaml"), []byte("x")); err == nil {
		t.Error("a write went through")
	}
	if _, err := os.Stat(filepath.Join(root, "new.yaml")); err == nil {
		t.Error("a file was written")
	}
}
