package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// TestAuditOutcomes: the engine's side of audit mode (the datapath's is enforcer/datapath's
// TestAuditMode): an audit-mode deny over an allow, an audited default deny, a real default
// deny an enforced policy keeps, and a flow handed to a proxy, which the proxy judges and
// reports (no audit at L3/L4, as the datapath does).
func TestAuditOutcomes(t *testing.T) {
	src := dnsOnlyStripe + `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: audited, namespace: app, annotations: {netpact.io/audit: "true"}}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: b}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: audited-ingress, namespace: app, annotations: {policy.cilium.io/audit-mode: "true"}}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
`
	b, err := LoadBytes("p.yaml", []byte(src), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cl := twoNodeCluster(map[string]string{"a": "n1", "b": "n1", "d": "n2"})
	st, err := Compile(cl, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := map[string]netip.Addr{}
	for _, ep := range cl.Endpoints {
		addr[ep.Name] = ep.IPs[0]
	}
	// a's egress: DNS to b is redirected (the proxy judges it): no audit, though the audit-mode
	// deny to b matches.
	if d := st.Decide(addr["a"], addr["b"], ProtoUDP, 53); d.Outcome != OutcomeDNS || len(d.Audited) != 0 {
		t.Errorf("DNS to b: %s, audited %v", d.Outcome, d.Audited)
	}
	// a's egress is default deny by the dns policy (enforced): TCP to b stays dropped, the
	// audit-mode deny notwithstanding.
	if d := st.Decide(addr["a"], addr["b"], ProtoTCP, 80); d.Outcome != OutcomeDefaultDenied {
		t.Errorf("a -> b:80: %s (%s)", d.Outcome, d.Reason())
	}
	// b's ingress default deny comes only from the audit-mode policy: d -> b passes, reported,
	// naming it.
	checked := 0
	for _, ep := range cl.Endpoints {
		if ep.Name != "d" {
			continue
		}
		checked++
		d := st.Decide(ep.IPs[0], addr["b"], ProtoTCP, 80)
		if d.Outcome != OutcomeAudited || len(d.Audited) == 0 || d.Audited[0].Policy.Name != "audited-ingress" || d.AuditDirection != Ingress {
			t.Errorf("%s -> b:80: %s (%s), audited %v", ep.Name, d.Outcome, d.Reason(), d.Audited)
		}
		if d.Outcome.Mark() != "A" {
			t.Errorf("mark %q", d.Outcome.Mark())
		}
	}
	if checked != 1 {
		t.Fatalf("%d pods d", checked)
	}
}

// TestHostileOriginAnnotations: the source annotations only describe a policy; whatever a writer
// puts there loads without failing the policy, and what is not a path, a line or a rule line is
// left out, never read as one.
func TestHostileOriginAnnotations(t *testing.T) {
	for _, c := range []struct {
		path, rules string
		wantPath    string
		wantLine    int
		wantRules   int
	}{
		{"x.yaml:12", "spec=7 spec.ingress[0]=9", "x.yaml", 12, 2},
		{":", "=", ":", 0, 0},
		{"a:b:-3", "spec=-1 spec=abc spec.ingress[0]=99999999999999999999 =5", "a:b:-3", 0, 1},
		{"p.yaml:0", strings.Repeat("spec=1 ", 10000), "p.yaml:0", 0, 1},
		{"", "spec=7", "", 0, 0},
	} {
		ann := map[string]string{AnnotationSourcePath: c.path, AnnotationSourceRules: c.rules, AnnotationSourceRevision: "main@sha1:\x00"}
		o := originOf(ann)
		if c.wantPath == "" {
			if o != nil {
				t.Errorf("%q: an origin without a path: %+v", c.path, o)
			}
			continue
		}
		if o == nil || o.Path != c.wantPath || o.Line != c.wantLine || len(o.RuleLines) != c.wantRules {
			t.Errorf("%q %q: origin %+v", c.path, c.rules, o)
		}
	}
	// Through the loader: the policy loads, its rules name the annotated lines.
	doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
  namespace: app
  annotations:
    netpact.io/source-path: "repo/p.yaml:40"
    netpact.io/source-rules: "spec.ingress[0]=44 junk"
    netpact.io/audit: "yes"
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
`
	b, err := LoadBytes("p.yaml", []byte(doc), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := b.Policies[0]
	if p.Audit {
		t.Error(`netpact.io/audit "yes" put the policy in audit mode: only "true" does`)
	}
	lines := map[string]int{}
	for _, ri := range normalize(p, func() RuleID { return 1 }).infos {
		if ri.Git != nil {
			lines[ri.Path] = ri.Git.Line
		}
	}
	if lines["spec.ingress[0]"] != 44 || lines["spec"] != 40 {
		t.Errorf("rule lines %v", lines)
	}
}
