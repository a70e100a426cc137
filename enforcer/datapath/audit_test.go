package datapath

import (
	"net/netip"
	"testing"

	"github.com/netpact/netpact/policy"
)

// auditPolicies: pod a is selected by a policy in audit mode that denies c and allows b on 80
// (its default deny is audited), and by an enforced policy that allows b on 8080 only on
// egress (its egress default deny is real).
const auditPolicies = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: audited
  namespace: app
  annotations:
    policy.cilium.io/audit-mode: "true"
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: enforced
  namespace: app
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "9"}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: audited-egress-deny
  namespace: app
  annotations:
    netpact.io/audit: "true"
spec:
  endpointSelector: {matchLabels: {app: a}}
  egressDeny:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

// TestAuditMode: the datapath passes and reports what audit-mode policies would drop, drops
// what enforced ones drop, and agrees with the engine on each packet, rule included.
func TestAuditMode(t *testing.T) {
	d, st, ep := unitSetup(t, auditPolicies)
	tcp := policy.ProtoTCP
	cases := []verdictCase{
		{"allowed by the audited policy", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 41000, dport: 80, syn: true}, tcOK, ReasonForwardPolicy},
		{"audited default deny", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 41001, dport: 81, syn: true}, tcOK, ReasonAuditDefaultDeny},
		{"audited deny rule", policy.Ingress, pkt{src: "10.0.0.3", dst: "10.0.0.1", proto: tcp, sport: 41002, dport: 22, syn: true}, tcOK, ReasonAuditDeny},
		{"audited deny over an allow", policy.Egress, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: tcp, sport: 41003, dport: 8080, syn: true}, tcOK, ReasonAuditDeny},
		{"enforced default deny", policy.Egress, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: tcp, sport: 41004, dport: 8081, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"enforced deny", policy.Egress, pkt{src: "10.0.0.1", dst: "10.0.0.3", proto: tcp, sport: 41005, dport: 9, syn: true}, tcShot, ReasonDropDeny},
		{"ipv6 audited default deny", policy.Ingress, pkt{src: "fd00::2", dst: "fd00::1", proto: tcp, sport: 41006, dport: 81, syn: true}, tcOK, ReasonAuditDefaultDeny},
	}
	flows, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	for _, tc := range cases {
		prog := d.objs.TcToPod
		if tc.dir == policy.Egress {
			prog = d.objs.TcFromPod
		}
		before, _ := d.Counters()
		got := runProg(t, prog, ep.Ifindex, tc.p.build(t))
		after, _ := d.Counters()
		if got != tc.want {
			t.Errorf("%s: verdict %d, want %d", tc.name, got, tc.want)
		}
		if after[tc.reason].Packets != before[tc.reason].Packets+1 {
			t.Errorf("%s: counter %q did not move", tc.name, tc.reason)
		}
		f := readFlow(t, flows)
		if f.Reason != tc.reason {
			t.Errorf("%s: flow event reason %q, want %q", tc.name, f.Reason, tc.reason)
		}
		wantVerdict := map[bool]string{true: "AUDIT", false: "FORWARDED"}[tc.reason.Audited()]
		if tc.want == tcShot {
			wantVerdict = "DROPPED"
		}
		if f.Verdict() != wantVerdict {
			t.Errorf("%s: flow event verdict %s, want %s", tc.name, f.Verdict(), wantVerdict)
		}
		dec := st.Decide(netip.MustParseAddr(tc.p.src), netip.MustParseAddr(tc.p.dst), tc.p.proto, portOf(tc.p))
		if engineAllows := dec.Outcome == policy.OutcomeAllowed || dec.Outcome == policy.OutcomeAudited; engineAllows != (got == tcOK) {
			t.Errorf("%s: engine says %s (%s), datapath %d", tc.name, dec.Outcome, dec.Reason(), got)
		}
		if (dec.Outcome == policy.OutcomeAudited) != tc.reason.Audited() {
			t.Errorf("%s: engine says %s (%s), datapath reason %q", tc.name, dec.Outcome, dec.Reason(), tc.reason)
		}
		// The event names the audit-mode deny rule; an audited default deny names none.
		if tc.reason == ReasonAuditDeny && (len(dec.Audited) == 0 || f.Rule != dec.Audited[0].ID) {
			t.Errorf("%s: flow event rule %d, engine's audited rules %v", tc.name, f.Rule, dec.Audited)
		}
		if tc.reason == ReasonAuditDefaultDeny && (f.Rule != 0 || len(dec.Audited) == 0 || dec.Audited[0].Policy.Name != "audited") {
			t.Errorf("%s: flow event rule %d, engine's audited rules %v", tc.name, f.Rule, dec.Audited)
		}
	}
	// The audit entries are written and read back in their own key space.
	dump, err := d.Dump(ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	audits := 0
	for _, e := range dump {
		if e.Verdict == policy.VerdictAudit {
			audits++
		}
	}
	if audits != 2 {
		t.Errorf("%d audit entries read back, want 2: %v", audits, dump)
	}
	// A reply of an audited flow passes by conntrack.
	if v := runProg(t, d.objs.TcFromPod, ep.Ifindex, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: tcp, sport: 81, dport: 41001, syn: true, ack: true}.build(t)); v != tcOK {
		t.Errorf("reply of an audited flow: %d", v)
	}
}
