package kafkaproxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/policy"
)

// seedRules are seed 000's kafka rules.
var seedRules = []ciliumv2.PortRuleKafka{{Role: "produce", Topic: "orders"}, {Role: "consume", Topic: "notifications"}}

// The flow the tests' connections stand for: a client pod to a broker pod.
var (
	clientPod = netip.MustParseAddrPort("10.0.0.1:40000")
	brokerPod = netip.MustParseAddrPort("10.0.0.2:9092")
)

// decideRules decides flows with the engine: a policy that lets the client pod reach the broker
// pod on 9092 with the kafka rules.
func decideRules(t *testing.T, rules []ciliumv2.PortRuleKafka) func(src, dst netip.AddrPort) (policy.Decision, bool) {
	t.Helper()
	r, err := json.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"kafka","namespace":"app"},
"spec":{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toEndpoints":[{"matchLabels":{"app":"kafka"}}],
"toPorts":[{"ports":[{"port":"9092","protocol":"TCP"}],"rules":{"kafka":` + string(r) + `}}]}]}}`
	file := filepath.Join(t.TempDir(), "kafka.yaml")
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := policy.Load([]string{file}, policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := func(name string, a netip.AddrPort) policy.Endpoint {
		return policy.Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name}, IPs: []netip.Addr{a.Addr()}}
	}
	c := &policy.Cluster{Namespaces: []policy.Namespace{{Name: "app"}}, Endpoints: []policy.Endpoint{pod("client", clientPod), pod("kafka", brokerPod)}}
	st, err := policy.Compile(c, b, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return func(netip.AddrPort, netip.AddrPort) (policy.Decision, bool) {
		return st.Decide(clientPod.Addr(), brokerPod.Addr(), policy.ProtoTCP, brokerPod.Port()), true
	}
}

// world is a kfake broker behind a proxy that the test's clients reach on a plain listener: the
// proxy serves each connection as the flow to the broker (its datapath side is tested on a node).
type world struct {
	broker  *kfake.Cluster
	proxied string // the address clients dial
	p       *Proxy
	mu      sync.Mutex
	seen    []Request
}

// newWorld starts a broker with topics, and a proxy judging by the rules on the flow's egress.
func newWorld(t *testing.T, rules []ciliumv2.PortRuleKafka, brokerOpts ...kfake.Opt) *world {
	t.Helper()
	return newWorldLimits(t, rules, Limits{}, brokerOpts...)
}

// newWorldLimits is newWorld with the proxy's limits.
func newWorldLimits(t *testing.T, rules []ciliumv2.PortRuleKafka, limits Limits, brokerOpts ...kfake.Opt) *world {
	t.Helper()
	w := &world{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The broker advertises the proxy's address, so that every connection of the clients goes
	// through it, as every connection to a broker pod goes through the datapath's redirect.
	port := ln.Addr().(*net.TCPAddr).Port
	brokerLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	brokerPort := brokerLn.Addr().(*net.TCPAddr).Port
	brokerLn.Close()
	opts := append([]kfake.Opt{kfake.NumBrokers(1), kfake.Ports(brokerPort),
		kfake.SeedTopics(1, "orders", "notifications", "payments")}, brokerOpts...)
	w.broker, err = kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	_ = port
	w.proxied = ln.Addr().String()
	decide := decideRules(t, rules)
	w.p = newProxy(Options{Decide: decide, KeepSource: func(netip.Addr) bool { return false }, Limits: limits,
		OnRequest: func(r Request) { w.mu.Lock(); w.seen = append(w.seen, r); w.mu.Unlock() }})
	dst := netip.MustParseAddrPort(w.broker.ListenAddrs()[0])
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if closed, _ := w.p.track(c); closed {
				c.Close()
				return
			}
			w.p.wg.Add(1)
			go func() {
				defer w.p.wg.Done()
				defer w.p.untrack(c)
				w.p.serve(c, flow{src: netip.MustParseAddrPort(c.RemoteAddr().String()), dst: dst})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		w.p.Close()
		w.broker.Close()
	})
	return w
}

func (w *world) client(t *testing.T, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	// The broker's Metadata names its own address; the clients are pointed back at the proxy's.
	dialer := func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, w.proxied)
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(w.proxied), kgo.Dialer(dialer),
		kgo.RequestRetries(0), kgo.RetryTimeout(2 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func produce(t *testing.T, w *world, topic string) error {
	t.Helper()
	cl := w.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("hello")}).FirstErr()
}

// consume reads a record of the topic from its start, or returns the error the client saw.
func consume(t *testing.T, w *world, topic string, opts ...kgo.Opt) error {
	t.Helper()
	cl := w.client(t, append([]kgo.Opt{kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, opts...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, e := range fs.Errors() {
			return e.Err
		}
		if fs.NumRecords() > 0 {
			return nil
		}
	}
}

// seed writes one record to each topic, directly to the broker.
func (w *world) seed(t *testing.T, topics ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(w.broker.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, topic := range topics {
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Value: []byte("seed")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSeedRules(t *testing.T) {
	w := newWorld(t, seedRules)
	w.seed(t, "orders", "notifications", "payments")
	if err := produce(t, w, "orders"); err != nil {
		t.Errorf("produce to orders: %v, want it to succeed", err)
	}
	if err := produce(t, w, "payments"); !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Errorf("produce to payments: %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}
	if err := consume(t, w, "notifications"); err != nil {
		t.Errorf("consume from notifications: %v, want a record", err)
	}
	if err := consume(t, w, "orders"); !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Errorf("consume from orders: %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var denied int
	for _, r := range w.seen {
		if r.ErrorCode == ErrTopicAuthorizationFailed {
			denied++
		}
		if r.Refused != "" {
			t.Errorf("the proxy refused %+v", r)
		}
	}
	if denied == 0 {
		t.Error("no request was reported denied with error 29")
	}
}

// TestOldBroker runs the seed rules against a broker of Kafka 2.0's versions, which Cilium's
// proxy parsed too.
func TestOldBroker(t *testing.T) {
	w := newWorld(t, seedRules, kfake.MaxVersions(kversion.V2_0_0()))
	w.seed(t, "orders", "notifications")
	if err := produce(t, w, "orders"); err != nil {
		t.Errorf("produce to orders: %v", err)
	}
	if err := produce(t, w, "payments"); !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Errorf("produce to payments: %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}
	if err := consume(t, w, "notifications"); err != nil {
		t.Errorf("consume from notifications: %v", err)
	}
}

func TestAdvertise(t *testing.T) {
	keys := []kmsg.ApiVersionsResponseApiKey{{ApiKey: 0, MinVersion: 3, MaxVersion: 13}, {ApiKey: 1, MinVersion: 4, MaxVersion: 18},
		{ApiKey: 3, MinVersion: 0, MaxVersion: 13}, {ApiKey: 18, MinVersion: 0, MaxVersion: 4}, {ApiKey: 22, MinVersion: 0, MaxVersion: 5},
		{ApiKey: 9999, MinVersion: 0, MaxVersion: 1}}
	decide := decideRules(t, []ciliumv2.PortRuleKafka{{Role: "produce", Topic: "orders"}, {APIKey: "fetch", APIVersion: "5"}})
	d, _ := decide(clientPod, brokerPod)
	got := advertise(keys, d, "kgo")
	want := map[int16][2]int16{0: {3, 12}, 1: {5, 5}, 3: {0, 13}, 18: {0, 4}}
	if len(got) != len(want) {
		t.Fatalf("advertised %v, want %v", got, want)
	}
	for _, k := range got {
		if w := want[k.ApiKey]; w != [2]int16{k.MinVersion, k.MaxVersion} {
			t.Errorf("key %d: %d-%d, want %d-%d", k.ApiKey, k.MinVersion, k.MaxVersion, w[0], w[1])
		}
	}
}

// TestConsumeAcrossFetches: a consumer keeps reading the topic fetch after fetch (incremental
// fetches of its session name no topic), and records produced after it started reach it.
func TestConsumeAcrossFetches(t *testing.T) {
	w := newWorld(t, seedRules)
	w.seed(t, "notifications")
	cl := w.client(t, kgo.ConsumeTopics("notifications"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := 0
	for round := 0; got < 3; round++ {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("got %d records of 3", got)
		}
		for _, e := range fs.Errors() {
			t.Fatalf("fetch error: %v", e.Err)
		}
		got += fs.NumRecords()
		if fs.NumRecords() > 0 && got < 3 {
			w.seed(t, "notifications") // one more, for a later fetch of the session
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	fetches := 0
	for _, r := range w.seen {
		if r.APIKey == policy.KafkaFetch {
			fetches++
			if !r.Verdict.Allowed {
				t.Errorf("fetch denied: %+v", r)
			}
		}
	}
	if fetches < 3 {
		t.Errorf("%d fetches judged, want one per poll at least", fetches)
	}
}
