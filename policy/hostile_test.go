package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Policy repositories written to hurt the loader, which runs as root: it must refuse each with a
// clear error naming the file, quickly, and without echoing what it should not have read.

const okPolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: app}
spec:
  podSelector: {}
`

// write makes files under dir: name -> contents.
func write(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// loadWithin runs Load with a deadline, so that a loader that hangs fails the test.
func loadWithin(t *testing.T, d time.Duration, paths ...string) (*Bundle, error) {
	t.Helper()
	type result struct {
		b   *Bundle
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := Load(paths, LoadOptions{})
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-time.After(d):
		t.Fatalf("Load(%v) did not return within %s", paths, d)
		return nil, nil
	}
}

func wantLoadError(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("Load succeeded, want an error")
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q lacks %q", err, p)
		}
	}
}

const secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n"

func TestSymlinkOutOfTheBundleRefused(t *testing.T) {
	outside, root := t.TempDir(), t.TempDir()
	write(t, outside, map[string]string{"id_ed25519": secret, "policies/p.yaml": okPolicy})
	write(t, root, map[string]string{"ok.yaml": okPolicy})
	if err := os.Symlink(filepath.Join(outside, "id_ed25519"), filepath.Join(root, "key.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "policies"), filepath.Join(root, "more")); err != nil {
		t.Fatal(err)
	}
	_, err := loadWithin(t, 2*time.Second, root)
	wantLoadError(t, err, filepath.Join(root, "key.yaml"), filepath.Join(root, "more"), "leads outside")
	if strings.Contains(err.Error(), "b3Bl") || strings.Contains(err.Error(), "BEGIN") {
		t.Errorf("the error shows the file behind the symlink: %v", err)
	}
	// A symlink that stays inside the bundle is read.
	inside := t.TempDir()
	write(t, inside, map[string]string{"real/p.yaml": okPolicy})
	if err := os.Symlink("real/p.yaml", filepath.Join(inside, "link.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := loadWithin(t, 2*time.Second, filepath.Join(inside, "link.yaml")); err != nil {
		t.Errorf("a symlink named on the command line: %v", err)
	}
}

func TestKeyFileContentsNotEchoed(t *testing.T) {
	root := t.TempDir()
	write(t, root, map[string]string{"id.yaml": secret})
	_, err := loadWithin(t, 2*time.Second, root)
	wantLoadError(t, err, "id.yaml", "must be an object")
	if strings.Contains(err.Error(), "b3Bl") || strings.Contains(err.Error(), "BEGIN") {
		t.Errorf("the error quotes the file: %v", err)
	}
}

func TestKustomizationCyclesAndEscapesRefused(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	write(t, root, map[string]string{
		"self/kustomization.yaml":    "resources: [.]\n",
		"pair/a/kustomization.yaml":  "resources: [../b]\n",
		"pair/b/kustomization.yaml":  "resources: [../a]\n",
		"up/kustomization.yaml":      "resources: [../../elsewhere]\n",
		"dotdot/kustomization.yaml":  "resources: [../../../../etc/passwd]\n",
		"sibling/kustomization.yaml": "resources: [../self]\n",
	})
	pair := filepath.Join(root, "pair")
	for _, c := range []struct {
		dir   string
		parts []string
	}{
		{"self", []string{"a cycle", filepath.Join(root, "self") + " -> " + filepath.Join(root, "self")}},
		{"pair", []string{"a cycle", filepath.Join(pair, "a") + " -> " + filepath.Join(pair, "b") + " -> " + filepath.Join(pair, "a")}},
		{"up", []string{"elsewhere", "leads outside"}},
		{"dotdot", []string{"etc/passwd", "leads outside"}},
		{"sibling", []string{"self", "leads outside"}},
	} {
		_, err := loadWithin(t, 2*time.Second, filepath.Join(root, c.dir))
		wantLoadError(t, err, c.parts...)
	}
}

func TestSymlinkLoopsRefused(t *testing.T) {
	root := t.TempDir()
	write(t, root, map[string]string{"p.yaml": okPolicy})
	// Every folder links back to the root twice: a walk that follows them is exponential.
	for _, d := range []string{"x", "y", "z"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{"up1", "up2"} {
			if err := os.Symlink("..", filepath.Join(root, d, l)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Symlink("self.yaml", filepath.Join(root, "self.yaml")); err != nil {
		t.Fatal(err)
	}
	_, err := loadWithin(t, 2*time.Second, root)
	wantLoadError(t, err, "a cycle", "symlink loop")
}

func TestSpecialFilesRefused(t *testing.T) {
	root := t.TempDir()
	write(t, root, map[string]string{"p.yaml": okPolicy})
	if err := syscall.Mkfifo(filepath.Join(root, "fifo.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadWithin(t, 2*time.Second, root)
	wantLoadError(t, err, "fifo.yaml", "not a regular file (a FIFO)")
}

func TestAliasBombRefused(t *testing.T) {
	// About 1 KB that expands to 9^9 nodes, inside a field the API server takes as free-form
	// JSON (managedFields[].fieldsV1), so that nothing stops before the expansion.
	var b strings.Builder
	b.WriteString("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bomb\n  namespace: app\n  managedFields:\n  - fieldsV1:\n")
	b.WriteString("      x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "      x%d: &a%d [", i, i)
		for j := 0; j < 9; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]\n")
	}
	b.WriteString("spec:\n  podSelector: {}\n")
	if b.Len() > 1100 {
		t.Fatalf("the bomb is %d bytes", b.Len())
	}
	root := t.TempDir()
	write(t, root, map[string]string{"bomb.yaml": b.String()})
	_, err := loadWithin(t, 2*time.Second, root)
	wantLoadError(t, err, "bomb.yaml:", "YAML aliases expand this document")
	// A few aliases, as people use them to share a selector, are fine.
	write(t, root, map[string]string{"bomb.yaml": `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: shared, namespace: app}
spec:
  endpointSelector: &web {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [*web]
`})
	if _, err := loadWithin(t, 2*time.Second, root); err != nil {
		t.Errorf("a shared selector through an alias: %v", err)
	}
}

func TestDuplicateKeysRefused(t *testing.T) {
	_, err := LoadBytes("dup.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dup, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: web, app: db}}
`), LoadOptions{})
	wantLoadError(t, err, "dup.yaml:5:", "spec.endpointSelector.matchLabels.app", `key "app" is given twice`)
}

func TestControlCharactersEscaped(t *testing.T) {
	_, err := LoadBytes("ctl.yaml", []byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: \"a\\e[2Jb\", namespace: app}\nspec:\n  endpointSelector: {}\n  bogus: 1\n"), LoadOptions{})
	if err == nil {
		t.Fatal("want an error")
	}
	if strings.ContainsRune(err.Error(), 0x1b) {
		t.Errorf("the error carries a raw escape character: %q", err)
	}
	if !strings.Contains(err.Error(), `a\x1b[2Jb`) {
		t.Errorf("the error does not show the escaped name: %q", err)
	}
}

func TestBundleBounds(t *testing.T) {
	root := t.TempDir()
	big := strings.Repeat("# padding\n", (maxFileSize/10)-10)
	files := map[string]string{}
	for i := 0; i < maxBundleBytes/maxFileSize+1; i++ {
		files[filepath.Join("big", string(rune('a'+i))+".yaml")] = big
	}
	write(t, root, files)
	_, err := loadWithin(t, 10*time.Second, root)
	wantLoadError(t, err, "the bundle is larger than 64 MiB in all")
}

// TestKafkaRuleFieldsRefused: a Kafka rule's apiKey must be one of Cilium's names and its
// apiVersion a number from 0 to 32767 (Cilium's Sanitize refuses "-1" too); each error names
// the file, line and field.
func TestKafkaRuleFieldsRefused(t *testing.T) {
	doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: k, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
  - toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {apiKey: sharefetch}
        - {apiKey: Produce, apiVersion: "-1"}
        - {role: Consume, apiVersion: "99999"}
        - {role: produce, apiKey: fetch}
`
	_, err := LoadBytes("k.yaml", []byte(doc), LoadOptions{})
	if err == nil {
		t.Fatal("the rules validated")
	}
	for _, want := range []string{
		`k.yaml:11:`, `rules.kafka[0].apiKey: unknown Kafka API key "sharefetch"`,
		`rules.kafka[1].apiVersion: invalid Kafka API version "-1"`,
		`rules.kafka[2].apiVersion: invalid Kafka API version "99999"`,
		`rules.kafka[3].apiKey: role and apiKey cannot both be set`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "kafka[1].apiKey") || strings.Contains(err.Error(), "kafka[2].role") {
		t.Errorf("a case-insensitive name or role was refused:\n%v", err)
	}
}
