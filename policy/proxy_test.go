package policy_test

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

// A decision names the proxy its L7 rules hand the flow to, and a flow for a proxy that does not
// run is dropped, as the datapath drops it.

// TestDecideNamesTheProxy: a flow a dns rule governs goes to the DNS proxy ("D"), one an HTTP
// rule governs to the HTTP proxy ("L").
func TestDecideNamesTheProxy(t *testing.T) {
	st, err := policy.Compile(cluster(t), load(t, filepath.Join(warnData, "dns-for-backend.yaml")), policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := st.Decide(netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.2"), policy.ProtoUDP, 53)
	if d.Outcome != policy.OutcomeDNS || d.Proxy != policy.ParserDNS || d.Outcome.Mark() != "D" ||
		!strings.Contains(d.Reason(), "handed to the DNS proxy on egress by CiliumNetworkPolicy default/dns-for-backend spec.egress[0]") {
		t.Errorf("backend -> coredns 53/UDP: %s, proxy %q, mark %s: %s", d.Outcome, d.Proxy, d.Outcome.Mark(), d.Reason())
	}
	if policy.OutcomeL7.Mark() != "L" || !strings.Contains(strings.Join(policy.Legend(), " "), `"D" DNS proxy`) {
		t.Errorf("marks: L7 %s, legend %q", policy.OutcomeL7.Mark(), policy.Legend())
	}
}

// TestDecideDropsKafkaFlows: a flow a Kafka rule governs is predicted dropped, with the rule and a
// reason that says why: the datapath hands it to a Kafka proxy, and none runs.
func TestDecideDropsKafkaFlows(t *testing.T) {
	st, err := policy.Compile(cluster(t), load(t, kafkaSeed), policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := st.Decide(netip.MustParseAddr("10.0.0.4"), netip.MustParseAddr("10.0.0.5"), policy.ProtoTCP, 9092)
	if d.Outcome != policy.OutcomeDenied || d.Proxy != policy.ParserKafka || d.Direction != policy.Ingress || d.Rule == nil ||
		d.Outcome.Mark() != "X" || !strings.Contains(d.Reason(), "kafka rules, which are not enforced by netpact yet") {
		t.Errorf("backend -> kafka 9092: %s, proxy %q, mark %s: %s", d.Outcome, d.Proxy, d.Outcome.Mark(), d.Reason())
	}
	// The map state still hands the flow to the Kafka parser: the datapath drops it there.
	if d.Ingress.Outcome != policy.OutcomeL7 || d.Ingress.Proxy() != policy.ParserKafka {
		t.Errorf("ingress side %s, proxy %q: want the map state's proxy verdict", d.Ingress.Outcome, d.Ingress.Proxy())
	}
}
