package policy

import (
	"net/netip"
	"testing"
)

const dnsOnlyStripe = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchName: api.stripe.com}]}}]
`

// TestDNSRedirectWinsOverAllow: a dns rule's redirect is kept where a plain allow also applies,
// on the same port or a wider one, and then allows every name (Cilium redirects there too, so
// answers are learned for toFQDNs); alone, it allows only its names.
func TestDNSRedirectWinsOverAllow(t *testing.T) {
	allowSamePort := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
`
	allowAllPorts := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{}]
`
	for _, c := range []struct {
		name, extra string
		other       bool // whether another name is allowed
	}{{"dns rule alone", "", false}, {"and an allow on the port", allowSamePort, true}, {"and an allow of every port", allowAllPorts, true}} {
		t.Run(c.name, func(t *testing.T) {
			src := dnsOnlyStripe
			if c.extra != "" {
				src += "---\n" + c.extra
			}
			b, err := LoadBytes("p.yaml", []byte(src), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cl := twoNodeCluster(map[string]string{"a": "n1", "b": "n1"})
			st, err := Compile(cl, b, Options{})
			if err != nil {
				t.Fatal(err)
			}
			addr := map[string]netip.Addr{}
			for _, ep := range cl.Endpoints {
				addr[ep.Name] = ep.IPs[0]
			}
			d := st.Decide(addr["a"], addr["b"], ProtoUDP, 53)
			if d.Outcome != OutcomeDNS || d.Egress == nil || d.Egress.Match.Entry == nil {
				t.Fatalf("a to b on 53/UDP: %s (%s), want the DNS proxy", d.Outcome, d.Reason())
			}
			l7 := d.Egress.Match.Entry.L7
			if ok, _ := l7.MatchDNS("api.stripe.com."); !ok {
				t.Error("api.stripe.com is refused")
			}
			if ok, _ := l7.MatchDNS("www.example.org."); ok != c.other {
				t.Errorf("www.example.org allowed = %v, want %v", ok, c.other)
			}
		})
	}
}
