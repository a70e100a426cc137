package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// TestDecisionMatchDNS: a DNS rule allows the names it matches and refuses the others naming its
// policy; a port rule without dns rules allows every name; a flow L3/L4 refuses (the rule's peer
// does not select the server, or default deny) allows none; a name the egress rules allow to a
// server whose ingress refuses the pod is allowed but unreachable.
func TestDecisionMatchDNS(t *testing.T) {
	b, err := Load([]string{"testdata/dns/policies.yaml"}, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	pod := func(ns, name, addr string, labels map[string]string) Endpoint {
		return Endpoint{Namespace: ns, Name: name, Labels: labels, IPs: []netip.Addr{ip(addr)}}
	}
	c := &Cluster{Namespaces: []Namespace{{Name: "app"}, {Name: "kube-system"}}, Endpoints: []Endpoint{
		pod("app", "client", "10.0.0.2", map[string]string{"app": "client"}),
		pod("app", "open", "10.0.0.3", map[string]string{"app": "open"}),
		pod("app", "closed", "10.0.0.4", map[string]string{"app": "closed"}),
		pod("app", "rogue", "10.0.0.99", map[string]string{"app": "rogue"}),
		pod("kube-system", "coredns", "10.0.0.53", map[string]string{"k8s-app": "kube-dns"}),
	}}
	st, err := Compile(c, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dst string
		proto    Proto
		name     string
		allowed  bool
		index    int
		// reason and unreachable are substrings of the verdict's; rule of its rule ("" none).
		rule, reason, unreachable string
	}{
		{"10.0.0.2", "10.0.0.53", ProtoUDP, "api.stripe.com", true, 0, "app/client-dns", "", "default deny on ingress"},
		{"10.0.0.2", "10.0.0.53", ProtoTCP, "API.Stripe.COM.", true, 0, "app/client-dns", "", "enforced by CiliumNetworkPolicy kube-system/kube-dns"},
		{"10.0.0.2", "10.0.0.53", ProtoUDP, "www.example.com.", true, 1, "app/client-dns", "", "kube-system/kube-dns"},
		{"10.0.0.2", "10.0.0.53", ProtoUDP, "evil.org", false, -1, "app/client-dns",
			"no DNS rule of CiliumNetworkPolicy app/client-dns", ""},
		{"10.0.0.2", "10.0.0.53", ProtoUDP, "a.b.example.com", false, -1, "app/client-dns", "matches a.b.example.com.", ""},
		{"10.0.0.2", "10.0.0.99", ProtoUDP, "api.stripe.com", false, -1, "", "default deny on egress", ""},
		{"10.0.0.3", "10.0.0.53", ProtoUDP, "anything.at.all", true, -1, "kube-system/kube-dns", "", ""},
		{"10.0.0.3", "10.0.0.53", ProtoTCP, "anything.at.all", false, -1, "", "default deny on egress", ""},
		{"10.0.0.4", "10.0.0.53", ProtoUDP, "api.stripe.com", false, -1, "", "default deny on egress (no rule allows it; enforced by CiliumNetworkPolicy app/closed)", ""},
		{"192.0.2.1", "198.51.100.1", ProtoUDP, "api.stripe.com", true, -1, "", "", ""},
	} {
		d := st.Decide(ip(tc.src), ip(tc.dst), tc.proto, 53)
		v := d.MatchDNS(tc.name)
		where := tc.src + " -> " + tc.dst + "/" + tc.proto.String() + " " + tc.name
		if v.Allowed != tc.allowed || v.Index != tc.index {
			t.Errorf("%s: allowed %v by rule %d (%s), want %v by %d", where, v.Allowed, v.Index, v.Reason, tc.allowed, tc.index)
		}
		if got := ruleName(v.Rule); !strings.Contains(got, tc.rule) || (tc.rule == "") != (v.Rule == nil) {
			t.Errorf("%s: rule %s, want %q", where, got, tc.rule)
		}
		if !strings.Contains(v.Reason, tc.reason) || (tc.reason == "") != (v.Reason == "") {
			t.Errorf("%s: reason %q, want %q", where, v.Reason, tc.reason)
		}
		if !strings.Contains(v.Unreachable, tc.unreachable) || (tc.unreachable == "") != (v.Unreachable == "") {
			t.Errorf("%s: unreachable %q, want %q", where, v.Unreachable, tc.unreachable)
		}
		if v.Allowed && v.Index >= 0 && v.Direction != Egress {
			t.Errorf("%s: decided on %s, want egress (DNS rules are egress rules)", where, v.Direction)
		}
	}
}

func ruleName(r *RuleInfo) string {
	if r == nil {
		return ""
	}
	return r.String()
}
