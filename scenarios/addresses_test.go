package scenarios

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

const ipBlockScenario = "testdata/ipblock-pod-address.yaml"

// requireAddressSteps checks that the ipBlock scenario's steps held, each with client/allowed
// let in and client/other not: the address the policy names is the pod's in this run.
func requireAddressSteps(t *testing.T, r *Result) {
	t.Helper()
	requirePass(t, []*Result{r})
	if len(r.Steps) != 2 {
		t.Fatalf("steps %+v", r.Steps)
	}
	for _, s := range r.Steps {
		got := map[string]Outcome{}
		for _, c := range s.Cells {
			got[c.From] = c.Predicted
		}
		if got["client/allowed"] != Allow || got["client/other"] != Timeout {
			t.Errorf("step %q: predicted %v, want client/allowed allowed and client/other not", s.Name, got)
		}
	}
}

// TestIPBlockNamesAPodPredicted: a policy's ipBlock names one pod's address with {{ cidr }} (and
// an except with {{ ip }}/32): the engine lets exactly that pod in (or keeps exactly it out), on
// the addresses the Prediction backend gives the pods. No root.
func TestIPBlockNamesAPodPredicted(t *testing.T) {
	sc, err := LoadFile(ipBlockScenario)
	if err != nil {
		t.Fatal(err)
	}
	requireAddressSteps(t, (&Runner{Backend: NewPrediction()}).Run(sc))
}

// TestIPBlockNamesAPodOnTheLocalNode: the same on a local node, whose pods' addresses are its
// own: probes through the datapath agree with the engine.
func TestIPBlockNamesAPodOnTheLocalNode(t *testing.T) {
	requireAddressSteps(t, runFiles(t, ipBlockScenario)[0])
}

// addressCluster is a cluster of two pods: web/dual with an IPv4 and an IPv6 address, web/v4
// with only an IPv4 one.
func addressCluster() *policy.Cluster {
	return &policy.Cluster{Endpoints: []policy.Endpoint{
		{Namespace: "web", Name: "dual", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00::1")}},
		{Namespace: "web", Name: "v4", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.2")}},
	}}
}

// TestAddressExpressions: each function gives its address, several on a line, and every line
// stays where it was.
func TestAddressExpressions(t *testing.T) {
	in := "a: {{ ip \"web/dual\" }}\nb: {{ip6 \"web/dual\"}}\r\nc: [{{ cidr \"web/v4\" }}, {{ cidr6  \"web/dual\" }}]\n# }} alone\n"
	want := "a: 10.1.0.1\nb: fd00::1\r\nc: [10.1.0.2/32, fd00::1/128]\n# }} alone\n"
	out, err := addresses{cluster: addressCluster()}.expand("p.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != want {
		t.Errorf("expanded\n%q\nwant\n%q", out, want)
	}
}

// TestAddressExpressionErrors: an unknown pod, an unknown function, what is no expression, an
// expression that does not end on its line and a pod without the address asked for are each an
// error at the expression, naming it; every one of a file is reported.
func TestAddressExpressionErrors(t *testing.T) {
	in := strings.Join([]string{
		`a: {{ ip "web/ghost" }}`,
		`b: {{ ipv4 "web/dual" }}`,
		`c: {{ ip web/dual }}`,
		`d: {{ .Pod }}`,
		`e: {{ ip6 "web/v4" }}`,
		`f: {{ ip "web/dual"`,
		`  }}`,
	}, "\n")
	_, err := addresses{cluster: addressCluster(), context: ` (step "s" of x.yaml)`}.expand("p.yaml", []byte(in))
	list, ok := err.(policy.ErrorList)
	if !ok {
		t.Fatalf("error %v (%T), want a policy.ErrorList", err, err)
	}
	want := []string{
		`p.yaml:1:4: {{ ip "web/ghost" }} (step "s" of x.yaml): no pod "web/ghost" in the scenario`,
		`p.yaml:2:4: {{ ipv4 "web/dual" }} (step "s" of x.yaml): unknown function "ipv4": use ip, ip6, cidr or cidr6`,
		`p.yaml:3:4: {{ ip web/dual }} (step "s" of x.yaml): ip takes one pod, quoted: {{ ip "namespace/pod" }}`,
		`p.yaml:4:4: {{ .Pod }} (step "s" of x.yaml): not a pod address expression`,
		`p.yaml:5:4: {{ ip6 "web/v4" }} (step "s" of x.yaml): pod web/v4 has no IPv6 address`,
		`p.yaml:6:4: {{ ip "web/dual" (step "s" of x.yaml): has no "}}" on its line`,
	}
	if len(list) != len(want) {
		t.Fatalf("errors:\n%v\nwant %d", err, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(list[i].Error(), w) {
			t.Errorf("error %d:\n%s\nwant it to begin\n%s", i, list[i], w)
		}
	}
}

// TestAddressExpressionFailsTheStep: a bad expression in a step's policy, inline or in a file,
// fails the step (and the scenario) with the scenario file, the step and the expression; a
// policy error after an expression still names its own line.
func TestAddressExpressionFailsTheStep(t *testing.T) {
	dir := t.TempDir()
	policyFile := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: web}\nspec:\n" +
		"  podSelector: {}\n  ingress:\n    - from:\n        - ipBlock: {cidr: {{ cidr \"web/nobody\" }}}\n"
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(policyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "scenario.yaml")
	scenario := `name: bad expressions
namespaces: [{name: web}]
pods: [{name: server, namespace: web, ports: ["80/TCP"]}]
steps:
  - name: from a file
    apply: [{file: policy.yaml}]
    expect: {matrix: {ports: [80/TCP], default: timeout}}
  - name: inline
    apply:
      - inline: |
          apiVersion: networking.k8s.io/v1
          kind: NetworkPolicy
          metadata: {name: q, namespace: web}
          spec:
            podSelector: {}
            ingress:
              - from:
                  - ipBlock: {cidr: {{ cidr "web/server" }}}
                    podSelektor: {}
    expect: {matrix: {ports: [80/TCP], default: timeout}}
  - name: unknown function
    apply:
      - inline: "cidr: {{ printf \"%s\" \"web/server\" }}"
    expect: {matrix: {ports: [80/TCP], default: timeout}}
`
	if err := os.WriteFile(file, []byte(scenario), 0o644); err != nil {
		t.Fatal(err)
	}
	sc, err := LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := (&Runner{Backend: NewPrediction()}).Run(sc)
	if !r.Failed() || len(r.Steps) != 3 {
		t.Fatalf("the scenario did not fail: %+v", r)
	}
	for i, want := range []string{
		filepath.Join(dir, "policy.yaml") + `:8:27: {{ cidr "web/nobody" }} (step "from a file" of ` + file + `): no pod "web/nobody" in the scenario`,
		// The policy error's line is its line in the inline policy, as written.
		file + ` (inline policy of step inline):9:`,
		file + ` (inline policy of step unknown function):1:7: {{ printf "%s" "web/server" }}: unknown function "printf"`,
	} {
		if s := r.Steps[i]; !s.Failed || !strings.Contains(s.Error, want) {
			t.Errorf("step %q: error %q, want it to hold %q", s.Name, s.Error, want)
		}
	}
}
