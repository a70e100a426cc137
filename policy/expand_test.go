package policy

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadExpand: LoadOptions.Expand rewrites every file before it is read, kustomize's inputs
// included; its located errors are the file's, and an expansion that moves lines is refused.
func TestLoadExpand(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	withLabel := strings.Replace(okPolicy, "podSelector: {}", "podSelector: {matchLabels: {app: LABEL}}", 1)
	write(t, root, map[string]string{
		"plain/p.yaml":            withLabel,
		"kust/kustomization.yaml": "resources: [p.yaml]\n",
		"kust/p.yaml":             strings.Replace(withLabel, "name: ok", "name: built", 1),
	})
	label := func(_ string, data []byte) ([]byte, error) {
		return []byte(strings.ReplaceAll(string(data), "LABEL", "web")), nil
	}
	b, err := Load([]string{filepath.Join(root, "plain"), filepath.Join(root, "kust")}, LoadOptions{Expand: label})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range b.Policies {
		if got := p.KNP.Spec.PodSelector.MatchLabels["app"]; got != "web" {
			t.Errorf("%s: podSelector app=%q, want the expanded web", p.Key, got)
		}
	}
	located := func(file string, _ []byte) ([]byte, error) {
		return nil, &Error{File: file, Line: 5, Column: 3, Message: "bad expression"}
	}
	_, err = LoadBytes("inline", []byte(withLabel), LoadOptions{Expand: located})
	wantLoadError(t, err, "inline:5:3: bad expression")
	moved := func(_ string, data []byte) ([]byte, error) { return append([]byte("# one more\n"), data...), nil }
	_, err = LoadBytes("inline", []byte(withLabel), LoadOptions{Expand: moved})
	wantLoadError(t, err, "inline:0:0: expanding the file changed its 6 lines to 7: refused")
}
