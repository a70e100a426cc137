package policy

import (
	"net/netip"
	"strings"
	"testing"
)

const fqdnPolicies = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-stripe, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toFQDNs: [{matchName: api.stripe.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toCIDR: [198.51.100.0/24]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

const fqdnPattern = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-any-stripe, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toFQDNs: [{matchPattern: "*.stripe.com"}]
    toPorts: [{ports: [{port: "8443", protocol: TCP}]}]
`

// TestLearnedAddresses: toFQDNs selects exactly the addresses DNS answers gave for its names,
// once learned and until forgotten; an address in a policy CIDR keeps that CIDR's rules besides;
// a pod's address is never selected; the first answer for a name needs no recompile.
func TestLearnedAddresses(t *testing.T) {
	c := twoNodeCluster(map[string]string{"a": "n1", "b": "n1"})
	b, err := LoadBytes("p.yaml", []byte(fqdnPolicies+"---\n"+fqdnPattern), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(Options{})
	if err := e.SetCluster(c); err != nil {
		t.Fatal(err)
	}
	e.SetPolicies(b.Policies)
	src := netip.MustParseAddr("10.244.0.1") // a
	if c.Endpoints[0].Name != "a" {
		src = netip.MustParseAddr("10.244.0.2")
	}
	stripe, other, inCIDR := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("198.51.100.7")
	var pod netip.Addr
	for _, ep := range c.Endpoints {
		if ep.Name == "b" {
			pod = ep.IPs[0]
		}
	}
	check := func(step string, dst netip.Addr, port uint16, want Outcome, rulePolicy string) {
		t.Helper()
		d := e.State().Decide(src, dst, ProtoTCP, port)
		if d.Outcome != want {
			t.Errorf("%s: %s:%d is %s (%s), want %s", step, dst, port, d.Outcome, d.Reason(), want)
			return
		}
		if rulePolicy != "" && (d.Rule == nil || !strings.Contains(d.Rule.Policy.String(), rulePolicy)) {
			t.Errorf("%s: %s:%d decided by %v, want a rule of %s", step, dst, port, d.Rule, rulePolicy)
		}
	}
	check("nothing learned", stripe, 443, OutcomeDefaultDenied, "")

	// api.stripe.com is matched by both policies' selectors: its class is new, and compiled.
	if !e.SetLearned(Learned{stripe: {"api.stripe.com."}, other: {"www.example.org"}}) {
		t.Error("a new class of address did not recompile")
	}
	// Another address of the same name, and the first of a name one selector matches: their
	// identities exist (the second was allocated with the policy), an ipcache write suffices.
	stripe2, shop := netip.MustParseAddr("192.0.2.12"), netip.MustParseAddr("192.0.2.13")
	if e.SetLearned(Learned{stripe: {"api.stripe.com."}, other: {"www.example.org"}, stripe2: {"api.stripe.com"}, shop: {"shop.stripe.com"}}) {
		t.Error("an address of a known class recompiled")
	}
	check("second address", stripe2, 443, OutcomeAllowed, "to-stripe")
	check("pattern only", shop, 8443, OutcomeAllowed, "to-any-stripe")
	check("pattern only, matchName's port", shop, 443, OutcomeDefaultDenied, "")
	check("learned", stripe, 443, OutcomeAllowed, "to-stripe")
	check("learned, other port", stripe, 80, OutcomeDefaultDenied, "")
	check("learned, pattern's port", stripe, 8443, OutcomeAllowed, "to-any-stripe")
	check("a name no selector matches", other, 443, OutcomeDefaultDenied, "")
	if id := e.State().Resolve("n1", other); id != IDWorldIPv4 {
		t.Errorf("an address of a name no selector matches has identity %d, want world-ipv4", id)
	}
	if got := e.State().IPCache("n1")[netip.PrefixFrom(stripe, 32)]; got < FirstLocalID {
		t.Errorf("the ipcache gives %s identity %d, want a node-local FQDN identity", stripe, got)
	}

	e.SetLearned(Learned{stripe: {"API.Stripe.com"}, inCIDR: {"api.stripe.com"}, pod: {"api.stripe.com"}})
	check("learned in a policy CIDR", inCIDR, 443, OutcomeAllowed, "to-stripe")
	check("learned in a policy CIDR keeps the CIDR's rule", inCIDR, 80, OutcomeAllowed, "to-stripe")
	check("a pod's address is not selected by toFQDNs", pod, 443, OutcomeDefaultDenied, "")

	e.SetLearned(nil)
	check("forgotten", stripe, 443, OutcomeDefaultDenied, "")
	check("forgotten, in the CIDR", inCIDR, 80, OutcomeAllowed, "to-stripe")
}

const dnsForA = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchName: api.stripe.com}]}}]
`

// TestDecideResolved: a toFQDNs cell is allowed once resolved only when the source's lookups of
// the name go through the DNS proxy with a rule allowing it; otherwise it stays dropped and
// says why.
func TestDecideResolved(t *testing.T) {
	c := twoNodeCluster(map[string]string{"a": "n1", "b": "n1"})
	var src netip.Addr
	for _, ep := range c.Endpoints {
		if ep.Name == "a" {
			src = ep.IPs[0]
		}
	}
	stripe := netip.MustParseAddr("192.0.2.10")
	for _, tc := range []struct {
		name, policies string
		names          []string
		want           Outcome
		reason         string
	}{
		{"no dns rule", fqdnPolicies, []string{"api.stripe.com"}, OutcomeDefaultDenied, "nothing is learned"},
		{"with a dns rule", fqdnPolicies + "---\n" + dnsForA, []string{"api.stripe.com"}, OutcomeOnceResolved, "once api.stripe.com is resolved"},
		{"a name the dns rule refuses", fqdnPattern + "---\n" + dnsForA, []string{"shop.stripe.com"}, OutcomeDefaultDenied, "nothing is learned"},
		{"a name no toFQDNs selects", fqdnPolicies + "---\n" + dnsForA, []string{"www.example.org"}, OutcomeDefaultDenied, "default deny"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := LoadBytes("p.yaml", []byte(tc.policies), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			st, err := Compile(c, b, Options{})
			if err != nil {
				t.Fatal(err)
			}
			port := uint16(443)
			if strings.Contains(tc.policies, "to-any-stripe") {
				port = 8443
			}
			d := st.DecideResolved(src, stripe, tc.names, ProtoTCP, port)
			if d.Outcome != tc.want || !strings.Contains(d.Reason(), tc.reason) {
				t.Errorf("%s (%s), want %s saying %q", d.Outcome, d.Reason(), tc.want, tc.reason)
			}
		})
	}
}
