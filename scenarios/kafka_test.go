package scenarios

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

const kafkaSeed = "seeds/000-kafka-topics.yaml"

// predictScenario predicts every cell of every step of a scenario file as the runner does, on a
// cluster of the file's pods with made-up addresses, without a backend.
func predictScenario(t *testing.T, file string) [][]CellResult {
	t.Helper()
	sc, err := LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cluster := &policy.Cluster{Nodes: []policy.Node{{Name: "local"}}}
	for _, ns := range sc.Namespaces {
		cluster.Namespaces = append(cluster.Namespaces, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	for i, p := range sc.Pods {
		ep := policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Node: "local",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(10 + i)})}}
		for _, port := range p.Ports {
			ep.Ports = append(ep.Ports, policy.NamedPort{Name: port.Name, Port: port.Port, Protocol: port.Protocol})
		}
		cluster.Endpoints = append(cluster.Endpoints, ep)
	}
	policies := map[policy.Key]*policy.Policy{}
	var out [][]CellResult
	for i := range sc.Steps {
		st := &sc.Steps[i]
		if _, err := (&Runner{}).change(sc, st, cluster, policies); err != nil {
			t.Fatal(err)
		}
		var list []*policy.Policy
		for _, p := range policies {
			list = append(list, p)
		}
		state, err := policy.Compile(cluster, &policy.Bundle{Policies: list}, policy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cells, expected, _, err := expectations(sc, st, cluster)
		if err != nil {
			t.Fatal(err)
		}
		var step []CellResult
		for _, c := range cells {
			step = append(step, unprobed(sc, state, c, expected[c.String()]))
		}
		out = append(out, step)
	}
	return out
}

// TestKafkaSeedPredicted: the engine predicts what seed 000's Kafka step expects, each probe's
// requests judged by the article's rules as the Kafka proxy judges them; a denial names the
// request no rule allows.
func TestKafkaSeedPredicted(t *testing.T) {
	for i, step := range predictScenario(t, kafkaSeed) {
		for _, c := range step {
			if c.Predicted != c.Expected {
				t.Errorf("step %d: %s: predicted %s (%s), expected %s", i, c.Cell, c.Predicted, c.Rule, c.Expected)
			}
		}
	}
	step := predictScenario(t, kafkaSeed)[1]
	rules := map[string]string{}
	for _, c := range step {
		rules[c.Cell.String()] = c.Rule
	}
	for cell, want := range map[string]string{
		"production/backend -> production/kafka 9092/TCP Kafka produce payments":      "allows metadata v",
		"production/backend -> production/kafka 9092/TCP Kafka consume orders":        "allows offsets v",
		"production/backend -> production/kafka 9092/TCP Kafka produce notifications": "allows produce v12 on notifications",
	} {
		if !strings.Contains(rules[cell], want) {
			t.Errorf("%s: rule %q lacks %q", cell, rules[cell], want)
		}
	}
}

// TestKafkaPredictedByClientAndKey: a probe's client ID is what a rule's clientID matches, and a
// request kind no rule allows is left out of the proxy's ApiVersions answer: the client cannot
// send it. A Kafka probe through an allowed flow without Kafka rules is simply allowed.
func TestKafkaPredictedByClientAndKey(t *testing.T) {
	f := filepath.Join(t.TempDir(), "kafka.yaml")
	os.WriteFile(f, []byte(`name: kafka client IDs
namespaces: [{name: a}]
pods:
  - {name: kafka, namespace: a, labels: {app: kafka}, workload: kafka, ports: ["9092/TCP"]}
  - {name: c, namespace: a, labels: {app: c}}
  - {name: d, namespace: a, labels: {app: d}}
steps:
- name: rules by client ID, and only produce for d
  apply:
    - inline: |
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: kafka, namespace: a}
        spec:
          endpointSelector: {matchLabels: {app: kafka}}
          ingress:
            - fromEndpoints: [{matchLabels: {app: c}}]
              toPorts:
                - ports: [{port: "9092", protocol: TCP}]
                  rules:
                    kafka:
                      - {role: consume, topic: orders, clientID: billing}
            - fromEndpoints: [{matchLabels: {app: d}}]
              toPorts:
                - ports: [{port: "9092", protocol: TCP}]
                  rules:
                    kafka:
                      - {apiKey: produce}
                      - {apiKey: apiversions}
  expect:
    probes:
      - {from: a/c, to: a/kafka, port: 9092, topic: orders, clientID: billing, expect: kafka-consume-ok}
      # The proxy advertises no Metadata to a client the rules' clientID leaves out.
      - {from: a/c, to: a/kafka, port: 9092, topic: orders, role: consume, expect: kafka-unsupported}
      - {from: a/d, to: a/kafka, port: 9092, topic: orders, role: produce, expect: kafka-unsupported}
- name: no policy
  delete: [CiliumNetworkPolicy a/kafka]
  expect:
    probes:
      - {from: a/d, to: a/kafka, port: 9092, topic: orders, expect: kafka-consume-ok}
`), 0o644)
	n := 0
	for i, step := range predictScenario(t, f) {
		for _, c := range step {
			n++
			if c.Predicted != c.Expected {
				t.Errorf("step %d: %s: predicted %s (%s), expected %s", i, c.Cell, c.Predicted, c.Rule, c.Expected)
			}
		}
	}
	if n != 4 {
		t.Errorf("%d cells, want 4", n)
	}
}

// TestKafkaRequestVersions: the prediction judges the versions the probe's client sends, Produce
// and Fetch at most v12 (the last to name topics).
func TestKafkaRequestVersions(t *testing.T) {
	var got []string
	for _, r := range kafkaRequests(Cell{Kafka: "consume", Topic: "t"}) {
		got = append(got, r.String())
	}
	for _, r := range kafkaRequests(Cell{Kafka: "produce", Topic: "t", ClientID: "x"}) {
		got = append(got, r.String())
	}
	want := []string{"metadata v13 on t", "offsets v11 on t", "fetch v12 on t",
		`metadata v13 from client "x" on t`, `produce v12 from client "x" on t`}
	if !slices.Equal(got, want) {
		t.Errorf("requests %q, want %q", got, want)
	}
}

// TestLoadKafkaProbes: a Kafka probe is a cell of its own, named by role and topic, and the
// kafka workload seeds the topics the probes to it name.
func TestLoadKafkaProbes(t *testing.T) {
	sc, err := LoadFile(kafkaSeed)
	if err != nil {
		t.Fatal(err)
	}
	cells, expected, _, err := expectations(sc, &sc.Steps[1], nil)
	if err != nil {
		t.Fatal(err)
	}
	c := cells[1]
	if c.Kafka != "produce" || c.Topic != "payments" || c.HTTP || c.Port.Port != 9092 || c.Port.Protocol != policy.ProtoTCP {
		t.Errorf("cell %+v", c)
	}
	if want := "production/backend -> production/kafka 9092/TCP Kafka produce payments"; c.String() != want || expected[want] != KafkaProduceDenied {
		t.Errorf("cell %q (%s), want %q", c.String(), expected[c.String()], want)
	}
	if len(cells) != 7 {
		t.Errorf("%d cells, want 7: produce and consume on the same topic are two", len(cells))
	}
	f := filepath.Join(t.TempDir(), "topics.yaml")
	os.WriteFile(f, []byte(`name: topics
namespaces: [{name: a}]
pods:
  - {name: kafka, namespace: a, workload: kafka, ports: ["9092/TCP"]}
  - {name: c, namespace: a}
steps:
- name: s
  expect:
    probes:
      - {from: a/c, to: a/kafka, port: 9092, topic: zeta, expect: kafka-produce-ok}
      - {from: a/c, to: a/kafka, port: 9092, topic: audit.log, expect: kafka-consume-ok}
      - {from: a/c, to: a/kafka, port: 9092, topic: orders, expect: kafka-consume-ok}
      - {from: a/c, to: a/kafka, port: 9092, topic: zeta, expect: kafka-consume-ok}
`), 0o644)
	sc, err = LoadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if got := sc.kafkaTopics("a/kafka"); !slices.Equal(got, []string{"audit.log", "zeta"}) {
		t.Errorf("topics %v, want [audit.log zeta]", got)
	}
}

// TestLoadRejectsBadKafkaProbes: a Kafka probe has a topic Kafka allows and goes to the port of
// a kafka workload's pod; a topic without a Kafka outcome, or a Kafka outcome in a matrix, is an
// error that says what to write.
func TestLoadRejectsBadKafkaProbes(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(`name: x
namespaces: [{name: a}]
pods:
  - {name: kafka, namespace: a, workload: kafka, ports: ["9092/TCP"]}
  - {name: two, namespace: a, workload: kafka, ports: ["9092/TCP", "9093/TCP"]}
  - {name: web, namespace: a, labels: {app: web}, ports: ["9092/TCP"]}
  - {name: c, namespace: a}
services:
  - {name: kafka, namespace: a, selector: {app: web}, ports: [{port: 9092}]}
steps:
- name: s
  expect:
    matrix: {ports: [9092/TCP], default: kafka-produce-ok, exceptions: [{from: a/c, to: a/web, expect: kafka-consume-denied}]}
    probes:
      - {from: a/c, to: a/kafka, port: 9092, expect: kafka-produce-ok}
      - {from: a/c, to: a/kafka, port: 9092, topic: orders, expect: allow}
      - {from: a/c, to: a/web, port: 9092, topic: orders, expect: kafka-consume-ok}
      - {from: a/c, to: a/kafka, port: 9093, topic: orders, expect: kafka-consume-ok}
      - {from: a/c, service: a/kafka, port: 9092, topic: orders, expect: kafka-consume-ok}
      - {from: a/c, to: a/kafka, port: 9092, protocol: UDP, path: /x, topic: orders, expect: kafka-consume-ok}
      - {from: a/c, to: a/kafka, port: 9092, topic: orders, expect: timeout}
      - {from: a/c, to: a/kafka, port: 9092, topic: orders, role: write, expect: refused}
      - {from: a/c, to: a/kafka, port: 9092, topic: orders, role: produce, expect: kafka-consume-ok}
      - {from: a/c, to: a/web, port: 9092, clientID: billing, expect: allow}
`), 0o644)
	_, err := Load([]string{bad})
	for _, want := range []string{
		`pod a/two: the kafka workload is one broker on one TCP port`,
		`matrix default: kafka-produce-ok is a Kafka probe's (a probe with a topic) outcome`,
		`exception: kafka-consume-denied is a Kafka probe's (a probe with a topic) outcome`,
		`expect kafka-produce-ok: a Kafka probe needs a topic`,
		`expect allow: a Kafka probe (a probe with a topic) expects kafka-produce-ok, kafka-produce-denied, kafka-consume-ok, kafka-consume-denied, or with a role timeout, refused or kafka-unsupported`,
		`expect timeout: a Kafka probe that expects timeout needs a role, produce or consume`,
		`unknown role "write": a Kafka probe's role is produce or consume`,
		`role produce: the probe expects kafka-consume-ok, which is a consume probe's`,
		`role and clientID are for Kafka probes, which need a topic`,
		`a Kafka probe goes to a pod of the kafka workload, and a/web is not one`,
		`port 9093: the broker in a/kafka listens on 9092`,
		`a Kafka probe goes to a pod of the kafka workload (to), not to a service`,
		`a Kafka probe is over TCP, not UDP`,
		`a Kafka probe takes no via, method, path, host, headers or seen`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	// A topic Kafka refuses is refused where it is written.
	os.WriteFile(bad, []byte(`name: x
namespaces: [{name: a}]
pods:
  - {name: kafka, namespace: a, workload: kafka, ports: ["9092/TCP"]}
  - {name: c, namespace: a}
steps:
- name: s
  expect:
    probes:
      - {from: a/c, to: a/kafka, port: 9092, topic: "orders/eu", expect: kafka-produce-ok}
`), 0o644)
	_, err = Load([]string{bad})
	if want := `line 10: topic: invalid Kafka topic "orders/eu": up to 249 letters, digits, '.', '_' and '-'`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("want %q in %v", want, err)
	}
}

// TestKafkaSeed runs seed 000's Kafka step on a local node: a kfake broker in a pod, franz-go's
// client producing and consuming from the other pods, through the node's Kafka proxy.
func TestKafkaSeed(t *testing.T) {
	requirePass(t, runFiles(t, kafkaSeed))
}
