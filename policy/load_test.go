package policy_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/netpact/netpact/policy"
)

func TestLoadMultiDocumentYAMLAndJSON(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend}
spec: {}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: one, namespace: prod}
spec:
  endpointSelector: {}
  ingress: [{}]
---
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: two}
  spec:
    podSelector: {}
    egress: [{ports: [{port: 53}]}]
`)
	write("b.json", `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"three"},
"spec":{"endpointSelector":{},"egress":[{"toEntities":["world"]}]}}`)
	write("notes.txt", "not a policy file")
	b, err := policy.Load([]string{dir}, policy.LoadOptions{DefaultNamespace: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range b.Policies {
		keys = append(keys, p.Key.String())
	}
	want := "CiliumClusterwideNetworkPolicy three,CiliumNetworkPolicy prod/one,NetworkPolicy dev/two"
	if got := strings.Join(keys, ","); got != want {
		t.Errorf("policies %s, want %s", got, want)
	}
	if len(b.Notices) != 1 || !strings.Contains(b.Notices[0].Message, "skipped apps/v1 Deployment \"frontend\"") || b.Notices[0].Line != 2 {
		t.Errorf("notices %v", b.Notices)
	}
	// Kubernetes defaulting: policyTypes from the sections present, protocol TCP.
	knp := b.Policies[2].KNP
	if len(knp.Spec.PolicyTypes) != 2 || knp.Spec.PolicyTypes[1] != networkingv1.PolicyTypeEgress {
		t.Errorf("policyTypes not defaulted: %v", knp.Spec.PolicyTypes)
	}
	if p := knp.Spec.Egress[0].Ports[0].Protocol; p == nil || *p != "TCP" {
		t.Errorf("protocol not defaulted to TCP: %v", p)
	}
}

func TestLoadKustomizationNamespace(t *testing.T) {
	b, err := policy.Load([]string{"../policies/002-flask-postgres-l3-and-l7"}, policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range b.Policies {
		if p.Namespace != "db" {
			t.Errorf("%s: namespace %q, want db from kustomization.yaml", p.Key, p.Namespace)
		}
	}
	if len(b.Policies) != 2 {
		t.Errorf("want 2 policies, got %d", len(b.Policies))
	}
}

func TestLoadReportsEveryError(t *testing.T) {
	_, err := policy.LoadBytes("bundle.yaml", []byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: prod}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [internet]
    toPorts: [{ports: [{port: "99999"}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: prod}
spec:
  podSelector: {}
  ingress: [{from: [{}]}]
  bogus: true
`), policy.LoadOptions{})
	var list policy.ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("want ErrorList, got %v", err)
	}
	got := list.Error()
	for _, want := range []string{
		"bundle.yaml:8:20: CiliumNetworkPolicy prod/a: spec.ingress[0].fromEntities[0]: unknown entity",
		"bundle.yaml:9:25: CiliumNetworkPolicy prod/a: spec.ingress[0].toPorts[0].ports[0].port: port 99999 is out of range",
		"bundle.yaml:17:3: NetworkPolicy prod/b: spec.bogus: unknown field \"bogus\"",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
}

func TestLoadNeverPanics(t *testing.T) {
	for _, in := range []string{
		"", "---", "- a\n- b", "apiVersion: cilium.io/v2", "kind: CiliumNetworkPolicy", "{]", "*a",
		"a: &x [*x]", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nspec: 5",
		"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: ''}], rules: {}}]}]}",
		"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 1, endPort: 99999999999}]}]}",
	} {
		policy.LoadBytes("fuzz.yaml", []byte(in), policy.LoadOptions{})
	}
}

// TestSharedTestPoliciesLoad: each policy that other packages' tests share (testdata/policies at
// the repository's root) loads, so that a test using one fails on what it tests, not on it.
func TestSharedTestPoliciesLoad(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "testdata", "policies", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no shared test policies")
	}
	for _, f := range files {
		if b, err := policy.Load([]string{f}, policy.LoadOptions{}); err != nil || len(b.Policies) != 1 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
