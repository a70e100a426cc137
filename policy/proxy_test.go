package policy_test

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

// A decision names the proxy its L7 rules hand the flow to.

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

// TestDecideHandsKafkaFlowsToTheProxy: a flow a Kafka rule governs goes to the Kafka proxy ("K"),
// which judges each request by the rules: seed 000's produce to orders and consume from
// notifications pass, produce to payments and consume from orders do not.
func TestDecideHandsKafkaFlowsToTheProxy(t *testing.T) {
	st, err := policy.Compile(cluster(t), load(t, kafkaSeed), policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := st.Decide(netip.MustParseAddr("10.0.0.4"), netip.MustParseAddr("10.0.0.5"), policy.ProtoTCP, 9092)
	if d.Outcome != policy.OutcomeKafka || d.Proxy != policy.ParserKafka || d.Direction != policy.Ingress || d.Rule == nil ||
		d.Outcome.Mark() != "K" || !strings.Contains(d.Reason(), "Kafka proxy") {
		t.Errorf("backend -> kafka 9092: %s, proxy %q, mark %s: %s", d.Outcome, d.Proxy, d.Outcome.Mark(), d.Reason())
	}
	for _, tc := range []struct {
		r  policy.KafkaRequest
		ok bool
	}{
		{policy.KafkaRequest{APIKey: policy.KafkaProduce, APIVersion: 9, Topics: []string{"orders"}}, true},
		{policy.KafkaRequest{APIKey: policy.KafkaMetadata, APIVersion: 12, Topics: []string{"orders"}}, true},
		{policy.KafkaRequest{APIKey: policy.KafkaProduce, APIVersion: 9, Topics: []string{"payments"}}, false},
		{policy.KafkaRequest{APIKey: policy.KafkaProduce, APIVersion: 9, Topics: []string{"orders", "payments"}}, false},
		{policy.KafkaRequest{APIKey: policy.KafkaFetch, APIVersion: 6, Topics: []string{"notifications"}}, true},
		{policy.KafkaRequest{APIKey: policy.KafkaFetch, APIVersion: 6, Topics: []string{"orders"}}, false},
		// Both rules' topics together cover a metadata request on both.
		{policy.KafkaRequest{APIKey: policy.KafkaMetadata, APIVersion: 12, Topics: []string{"orders", "notifications"}}, true},
		// A metadata request for every topic names none: no rule with a topic matches it.
		{policy.KafkaRequest{APIKey: policy.KafkaMetadata, APIVersion: 12}, false},
		// Keys without topics: the rules' topics do not apply.
		{policy.KafkaRequest{APIKey: policy.KafkaHeartbeat, APIVersion: 4}, true},
		{policy.KafkaRequest{APIKey: 22, APIVersion: 4}, false}, // InitProducerId: in no role
		{policy.KafkaRequest{APIKey: policy.KafkaProduce, APIVersion: 13, Topics: []string{""}}, false},
	} {
		v := d.MatchKafka(tc.r)
		if v.Allowed != tc.ok || (!v.Allowed && !strings.Contains(v.Reason, "no kafka rule of CiliumNetworkPolicy production/kafka-produce-consume")) {
			t.Errorf("%s: allowed %v (%s), want %v", tc.r, v.Allowed, v.Reason, tc.ok)
		}
	}
}
