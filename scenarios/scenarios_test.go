package scenarios

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
)

func runFiles(t *testing.T, paths ...string) []*Result {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	scs, err := Load(paths)
	if err != nil {
		t.Fatal(err)
	}
	var out []*Result
	for _, sc := range scs {
		out = append(out, (&Runner{Backend: NewLocal(LocalOptions{})}).Run(sc))
	}
	return out
}

// TestWrongExpectationFails checks that a wrong expectation fails with the side-by-side tables
// and the flow events, and that the JUnit report names the failing cell.
func TestWrongExpectationFails(t *testing.T) {
	results := runFiles(t, "testdata/wrong-expectation.yaml")
	r := results[0]
	if !r.Failed() {
		t.Fatal("a wrong expectation passed")
	}
	var b bytes.Buffer
	Print(&b, results, false)
	out := b.String()
	for _, want := range []string{
		"FAIL     the wrong step",
		"from \\ to      expected  predicted  observed",
		"galaxy/curl    . - -    X - -    X!- -   2",
		"wrong: galaxy/curl -> echo/echo 80/TCP: expected allow, predicted timeout, observed timeout",
		"flow: ingress TCP galaxy/curl:",
		"-> echo/echo:80 dropped: default deny, no rule",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	junit := filepath.Join(t.TempDir(), "report.xml")
	if err := WriteJUnit(junit, results); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(junit)
	var suites junitSuites
	if err := xml.Unmarshal(data, &suites); err != nil {
		t.Fatal(err)
	}
	c := suites.Suites[0].Cases[0]
	if suites.Suites[0].Failures != 1 || c.Failure == nil || !strings.Contains(c.Failure.Message, "galaxy/curl -> echo/echo 80/TCP: expected allow, predicted timeout, observed timeout") {
		t.Errorf("junit does not name the failing cell:\n%s", data)
	}
}

func TestLoadRejectsBadScenarios(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`name: x
namespaces: [{name: a}]
pods: [{name: p, namespace: b}]
steps:
- name: s
  expect: {matrix: {ports: [80/TCP], default: maybe}}
  bogus: 1
`), 0o644)
	_, err := Load([]string{bad})
	if err == nil || !strings.Contains(err.Error(), "field bogus not found") {
		t.Fatalf("unknown field not reported: %v", err)
	}
	os.WriteFile(bad, []byte(`name: x
namespaces: [{name: a}]
pods: [{name: p, namespace: b}]
steps:
- name: s
  expect: {matrix: {ports: [80/TCP], default: maybe}}
`), 0o644)
	_, err = Load([]string{bad})
	for _, want := range []string{`namespace "b" is not listed`, `unknown expectation "maybe"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}
