package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

// TestPredictProxyMarks: a cell a dns rule governs is "D" (verdict dns-proxy), an HTTP rule's
// "L", and a Kafka rule's "K" (kafka-proxy, with its cells per topic), each with the proxy named
// in JSON.
func TestPredictProxyMarks(t *testing.T) {
	cluster := filepath.Join(warnData, "cluster.yaml")
	policies := []string{filepath.Join(seed000, "kafka-produce-consume.yaml"), filepath.Join(warnData, "dns-for-backend.yaml")}
	stdout, stderr, code := run(t, append([]string{"predict", "-v", "--cluster", cluster}, policies...)...)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	for _, want := range []string{
		`"D" DNS proxy: names the dns rules allow are answered, others REFUSED`,
		"default/backend -> kube-system/coredns 53/UDP: handed to the DNS proxy on egress by CiliumNetworkPolicy default/dns-for-backend",
		"production/backend -> production/kafka 9092/TCP: handed to the Kafka proxy on ingress by CiliumNetworkPolicy production/kafka-produce-consume spec.ingress[0]",
		`"K" Kafka proxy`,
		"    kafka produce orders: allowed by CiliumNetworkPolicy production/kafka-produce-consume",
		"    kafka produce any other topic: denied (TOPIC_AUTHORIZATION_FAILED)",
		"    kafka consume notifications: allowed by",
		"    kafka consume orders: denied (TOPIC_AUTHORIZATION_FAILED)",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "notice: "+filepath.Join(seed000, "kafka-produce-consume.yaml")+":22:13:") || strings.Contains(stderr, "warning") {
		t.Errorf("predict does not say the Kafka rule's semantics as a notice:\n%s", stderr)
	}

	stdout, _, _ = run(t, append([]string{"predict", "-o", "json", "--cluster", cluster}, policies...)...)
	var results []probeResult
	if err := json.Unmarshal([]byte(stdout), &results); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"default/backend -> kube-system/coredns":    {"dns-proxy", "dns"},
		"production/backend -> production/kafka":    {"kafka-proxy", "kafka"},
		"production/backend -> kube-system/coredns": {"allowed", ""},
	}
	for _, r := range results {
		if w, ok := want[r.From+" -> "+r.To]; ok {
			if r.Verdict != w[0] || r.Proxy != w[1] {
				t.Errorf("%s -> %s: verdict %s, proxy %q; want %s, %q", r.From, r.To, r.Verdict, r.Proxy, w[0], w[1])
			}
			if r.Proxy == "kafka" && (len(r.Kafka) != 6 || r.Kafka[2] != (policy.KafkaTopicVerdict{Topic: "orders", Role: "produce", Allowed: true, Rule: *r.Rule + " kafka[0]"})) {
				t.Errorf("kafka cells %+v", r.Kafka)
			}
			delete(want, r.From+" -> "+r.To)
		}
	}
	if len(want) > 0 {
		t.Errorf("not probed: %v", want)
	}
}
