package scenarios

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// requirePass fails the test with the report of every step when a scenario failed.
func requirePass(t *testing.T, results []*Result) {
	t.Helper()
	for _, r := range results {
		if r.Failed() {
			var b bytes.Buffer
			Print(&b, results, true)
			t.Fatalf("scenario %s failed:\n%s", r.Scenario, b.String())
		}
	}
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

func TestLoadRejectsBadServiceProbes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(`name: x
namespaces: [{name: a}]
pods:
  - {name: web, namespace: a, labels: {app: web}, ports: ["8080/TCP"]}
  - {name: c, namespace: a}
services:
  - {name: web, namespace: a, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - {name: db, namespace: a, selector: {app: db}, type: Headless, ports: [{port: 5432, nodePort: 30001}]}
steps:
- name: s
  expect:
    probes:
      - {from: a/c, service: a/web, port: 81, expect: allow}
      - {from: a/c, service: a/web, via: nodePort, port: 80, expect: allow}
      - {from: a/c, service: a/nope, port: 80, expect: allow}
      - {from: a/c, to: a/web, service: a/web, port: 80, expect: allow}
      - {from: a/c, service: a/web, via: carrier-pigeon, port: 80, expect: allow}
`), 0o644)
	_, err := Load([]string{bad})
	for _, want := range []string{
		"service a/web has no port 81",
		"service a/web is not a NodePort service",
		`probe to unknown service "a/nope"`,
		"a probe needs exactly one of to, service, lookup and external",
		`unknown via "carrier-pigeon"`,
		"service a/db: nodePort on a Headless service",
		"service a/db: no pod it selects serves port 5432",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}

// A service probe through the ClusterIP may reach any backend: the engine predicts each, and
// backends that disagree (one allowed by egress policy, one not) are mixed on both sides; the
// local node probes the real virtual address, and a service without a backend is refused.
func TestServiceProbeOverEveryBackend(t *testing.T) {
	f := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(f, []byte(`name: services over every backend
namespaces: [{name: a}]
pods:
  - {name: c, namespace: a, labels: {app: c}}
  - {name: web-1, namespace: a, labels: {app: web, tier: one}, ports: ["8080/TCP"]}
  - {name: web-2, namespace: a, labels: {app: web, tier: two}, ports: ["8080/TCP"]}
services:
  - {name: web, namespace: a, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - {name: one, namespace: a, selector: {tier: one}, ports: [{port: 80, targetPort: 8080}]}
steps:
- name: open
  expect:
    probes:
      - {from: a/c, service: a/web, port: 80, expect: allow}
- name: c reaches tier one only
  apply:
    - inline: |
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: c, namespace: a}
        spec:
          endpointSelector: {matchLabels: {app: c}}
          egress:
            - toEndpoints: [{matchLabels: {tier: one}}]
              toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  expect:
    probes:
      - {from: a/c, service: a/one, port: 80, expect: allow}
      - {from: a/c, service: a/web, port: 80, expect: "mixed(allow,timeout)"}
- name: web-1 leaves tier one; service one has no backend
  setPodLabels: [{pod: a/web-1, labels: {app: web}}]
  expect:
    probes:
      - {from: a/c, service: a/one, port: 80, expect: refused}
      - {from: a/c, service: a/web, port: 80, expect: timeout}
`), 0o644)
	requirePass(t, runFiles(t, f))
}

// A service probe is predicted, and probed on the local node, as its first backend pod on the
// target port.
func TestServiceProbeResolvesToBackend(t *testing.T) {
	f := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(f, []byte(`name: x
namespaces: [{name: a}]
pods:
  - {name: c, namespace: a}
  - {name: web-1, namespace: a, labels: {app: web}, ports: ["8080/TCP"]}
services:
  - {name: web, namespace: a, selector: {app: web}, type: NodePort, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
steps:
- name: s
  expect:
    probes:
      - {from: a/c, service: a/web, via: nodePort, port: 80, path: /x, expect: http-200}
`), 0o644)
	sc, err := LoadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	cells, expected, _, err := expectations(sc, &sc.Steps[0], nil)
	if err != nil || len(cells) != 1 {
		t.Fatalf("cells %v, %v", cells, err)
	}
	c := cells[0]
	if c.To != "a/web-1" || c.Port.Port != 8080 || c.Service != "a/web" || c.Via != "nodePort" || !c.HTTP || !c.Explicit {
		t.Fatalf("cell %+v", c)
	}
	if want := "a/c -> service a/web:80 via nodePort (a/web-1 8080/TCP) GET /x"; c.String() != want || expected[want] != HTTP200 {
		t.Fatalf("cell %q, want %q", c.String(), want)
	}
}

// TestLoadRejectsBadHeaderProbes: headers, host and seen belong to HTTP probes, and seen to a
// destination of the http workload, which says what it received.
func TestLoadRejectsBadHeaderProbes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(`name: x
namespaces: [{name: a}]
pods:
  - {name: web, namespace: a, labels: {app: web}, workload: nginx, ports: ["80/TCP"]}
  - {name: c, namespace: a}
steps:
- name: s
  expect:
    probes:
      - {from: a/c, to: a/web, port: 80, protocol: TCP, headers: {X-Team: blue}, expect: allow}
      - {from: a/c, to: a/web, port: 80, protocol: TCP, path: /, seen: {X-Team: blue}, expect: http-200}
`), 0o644)
	_, err := Load([]string{bad})
	for _, want := range []string{
		"host, headers and seen are for HTTP probes",
		"seen needs a destination pod of workload http",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}

// TestBlockedProbeEndsOnTheDrop: a probe the datapath drops ends on the datapath's drop event of
// its own packet, not on its timeout. The probe timeout is a minute, so a probe that waited for
// it would say "no answer" (and make the test slow); the failing step's report must say that the
// datapath dropped the probe's packet, with the flow and its reason.
func TestBlockedProbeEndsOnTheDrop(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	scs, err := Load([]string{"testdata/wrong-expectation.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	r := (&Runner{Backend: NewLocal(LocalOptions{ProbeTimeout: time.Minute})}).Run(scs[0])
	var b bytes.Buffer
	Print(&b, []*Result{r}, false)
	out := b.String()
	want := "galaxy/curl -> echo/echo 80/TCP: dropped by the datapath: ingress TCP galaxy/curl:"
	if !strings.Contains(out, want) || strings.Contains(out, "no answer") {
		t.Errorf("the report does not say the blocked probe ended on its drop (%q):\n%s", want, out)
	}
	for _, c := range r.Steps[0].Cells {
		if c.From == "galaxy/curl" && c.To == "echo/echo" && c.Observed != Timeout {
			t.Errorf("%s -> %s observed %s, want timeout", c.From, c.To, c.Observed)
		}
	}
}
