package scenarios

import (
	"slices"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

const kafkaSeed = "seeds/000-kafka-topics.yaml"

// predictScenario predicts every cell of every step of a scenario file as the runner does: on the
// Prediction backend.
func predictScenario(t *testing.T, file string) [][]CellResult {
	t.Helper()
	sc, err := LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := (&Runner{Backend: NewPrediction()}).Run(sc)
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	var out [][]CellResult
	for _, s := range r.Steps {
		if s.Error != "" || s.Pending != "" {
			t.Fatalf("step %s: %s%s", s.Name, s.Error, s.Pending)
		}
		out = append(out, s.Cells)
	}
	return out
}

// compileSteps compiles the policies of a scenario's steps up to the last one, on the cluster
// the Prediction backend makes of the file's pods.
func compileSteps(t *testing.T, sc *Scenario, last int) (*policy.State, *policy.Cluster) {
	t.Helper()
	cluster, err := NewPrediction().Start(sc)
	if err != nil {
		t.Fatal(err)
	}
	policies := map[policy.Key]*policy.Policy{}
	for i := 0; i <= last; i++ {
		if _, err := (&Runner{}).change(sc, &sc.Steps[i], cluster, policies); err != nil {
			t.Fatal(err)
		}
	}
	var list []*policy.Policy
	for _, p := range policies {
		list = append(list, p)
	}
	state, err := policy.Compile(cluster, &policy.Bundle{Policies: list}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return state, cluster
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
	n := 0
	for i, step := range predictScenario(t, "testdata/kafka-client-ids.yaml") {
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

// TestKafkaRequestVersions: the prediction judges each request at the version the probe's client
// sends: its newest (Kafka 4.1's), or the newest the rules allow, which is all the proxy's
// ApiVersions answer lists.
func TestKafkaRequestVersions(t *testing.T) {
	sc, err := LoadFile("testdata/kafka-versions.yaml")
	if err != nil {
		t.Fatal(err)
	}
	state, cluster := compileSteps(t, sc, 0)
	d := state.Decide(cluster.Endpoints[1].IPs[0], cluster.Endpoints[0].IPs[0], policy.ProtoTCP, 9092)
	var got []string
	for _, c := range []Cell{{Kafka: "consume", Topic: "t"}, {Kafka: "produce", Topic: "t", ClientID: "x"}} {
		for _, key := range policy.KafkaRoleRequests(c.Kafka) {
			r, ok := kafkaRequest(c, d, key)
			if !ok {
				t.Fatalf("%s: key %d not listed", c.Kafka, key)
			}
			got = append(got, r.String())
		}
	}
	want := []string{"metadata v9 on t", "offsets v10 on t", "fetch v12 on t",
		`metadata v9 from client "x" on t`, `produce v12 from client "x" on t`}
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
	sc, err = LoadFile("testdata/kafka-topics.yaml")
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
	_, err := LoadFile("testdata/kafka-bad-probes.yaml")
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
	_, err = LoadFile("testdata/kafka-bad-topic.yaml")
	if want := `line 10: topic: invalid Kafka topic "orders/eu": up to 249 letters, digits, '.', '_' and '-'`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("want %q in %v", want, err)
	}
}

// TestKafkaSeed runs seed 000's Kafka step on a local node: a kfake broker in a pod, franz-go's
// client producing and consuming from the other pods, through the node's Kafka proxy.
func TestKafkaSeed(t *testing.T) {
	requirePass(t, runFiles(t, kafkaSeed))
}

// TestKafkaEgressRules: Kafka rules on the client's egress are judged by the source's Kafka
// proxy, and a broker that drops the client leaves every request unanswered.
func TestKafkaEgressRules(t *testing.T) {
	for i, step := range predictScenario(t, "testdata/kafka-egress.yaml") {
		for _, c := range step {
			if c.Predicted != c.Expected {
				t.Errorf("step %d: %s: predicted %s (%s), expected %s", i, c.Cell, c.Predicted, c.Rule, c.Expected)
			}
		}
	}
	requirePass(t, runFiles(t, "testdata/kafka-egress.yaml"))
}
