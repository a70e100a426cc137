package enforcer

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/netpact/netpact/enforcer/kafkaproxy"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/policy"
)

const kafkaPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: orders}
`

// TestKafkaFlowsAsHubble: a request the Kafka proxy judged is a kafka-request flow as Hubble
// prints it, with the API key, topic and the policy that decided; a denied one also gets the
// proxy's answer with its return code, both DROPPED.
func TestKafkaFlowsAsHubble(t *testing.T) {
	b, err := policy.LoadBytes("kafka.yaml", []byte(kafkaPolicy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := policy.Compile(benchCluster(), b, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &Enforcer{state: st}
	e.publishLocked()
	src, dst := netip.MustParseAddrPort("10.0.0.2:41000"), netip.MustParseAddrPort("10.0.0.1:9092")
	d := st.Decide(src.Addr(), dst.Addr(), policy.ProtoTCP, dst.Port())
	print := func(r kafkaproxy.Request) string {
		var out strings.Builder
		p, err := observe.NewPrinter(&out, observe.PrinterOptions{Numeric: true, PolicyNames: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, fl := range e.HubbleFlows(KafkaFlow(r, st), "node-1") {
			if err := p.WriteResponse(&observe.GetFlowsResponse{Flow: fl, NodeName: "node-1", Time: fl.Time}); err != nil {
				t.Fatal(err)
			}
		}
		p.Flush()
		return out.String()
	}
	allowed := kafkaproxy.Request{Src: src, Dst: dst, APIKey: policy.KafkaProduce, APIVersion: 9, CorrelationID: 7, Topics: []string{"orders"}}
	allowed.Verdict = d.MatchKafka(policy.KafkaRequest{APIKey: policy.KafkaProduce, APIVersion: 9, Topics: []string{"orders"}})
	got := print(allowed)
	for _, want := range []string{"10.0.0.2:41000 (ID:257) -> 10.0.0.1:9092 (ID:256) kafka-request FORWARDED BY app/kafka (CiliumNetworkPolicy) spec.ingress[0] at kafka.yaml:7:5 (Kafka request produce correlation id 7 topic 'orders')"} {
		if !strings.Contains(got, want) || strings.Count(got, "\n") != 1 {
			t.Errorf("allowed request printed %q, want one line with %q", got, want)
		}
	}
	denied := kafkaproxy.Request{Src: src, Dst: dst, APIKey: policy.KafkaProduce, APIVersion: 9, CorrelationID: 8, Topics: []string{"payments"},
		ErrorCode: kafkaproxy.ErrTopicAuthorizationFailed}
	denied.Verdict = d.MatchKafka(policy.KafkaRequest{APIKey: policy.KafkaProduce, APIVersion: 9, Topics: []string{"payments"}})
	got = print(denied)
	for _, want := range []string{"-> 10.0.0.1:9092 (ID:256) kafka-request DROPPED BY app/kafka (CiliumNetworkPolicy) spec.ingress[0] at kafka.yaml:7:5 (Kafka request produce correlation id 8 topic 'payments')\n",
		"<- 10.0.0.1:9092 (ID:256) kafka-response DROPPED BY app/kafka (CiliumNetworkPolicy) spec.ingress[0] at kafka.yaml:7:5 (Kafka response produce correlation id 8 topic 'payments' return code 29)\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("denied request printed %q, want %q", got, want)
		}
	}
}
