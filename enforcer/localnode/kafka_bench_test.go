package localnode

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// kafkaBenchPolicy lets pod b produce to topic bench on pod a's 9092 through the Kafka proxy, and
// reach pod a's 9093 with no L7 rule.
const kafkaBenchPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-bench, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: bench}
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "9093", protocol: TCP}]
`

// Ports of BenchmarkKafkaProduce's brokers: through the Kafka proxy, and direct.
const (
	kafkaProxiedPort uint16 = 9092
	kafkaDirectPort  uint16 = 9093
)

// kafkaBenchRound is how long the producer hands the client records in one round; the round
// ends when the last of them is acknowledged.
const kafkaBenchRound = time.Second

// BenchmarkKafkaProduce is the produce throughput of a franz-go producer in pod b to a kfake
// broker in pod a through the Kafka proxy (port 9092, a kafka rule `role: produce, topic: bench`
// on pod a's ingress) against the same kind of broker directly (port 9093, an L3/L4 rule), in
// the same run, broker and producer processes of their own in the pods (l7_bench_roles_test.go).
// One client per port and mode, kept across rounds (warmed up by a round that is not counted),
// producing to one partition with acks all as franz-go defaults, without compression. Run with
// -benchtime 1x: interleaved rounds of 1 s of records plus the wait for their acknowledgements,
// the first of each round alternating; records/s and MB/s (of record values) min / median / max,
// the medians' ratio and the CPU busy share printed. A round with a failed record, or none
// acknowledged, fails the benchmark, and so does a proxied round whose produce requests the proxy
// did not judge (its flow events), or in which it denied or refused a request.
func BenchmarkKafkaProduce(b *testing.B) {
	n, c := testNode(b)
	a, src := n.Pod("app/a").IPv4, n.Pod("app/b").IPv4
	_, brokerOut := startRole(b, n, "app/a", "kafka-broker", a.String(),
		fmt.Sprintf("%d,%d", kafkaProxiedPort, kafkaDirectPort))
	if l, err := brokerOut.ReadString('\n'); err != nil || l != "ready\n" {
		b.Fatalf("benchmark broker: %q, %v", l, err)
	}
	producerIn, producerOut := startRole(b, n, "app/b", "kafka-producer", "-")
	bundle, err := policy.LoadBytes("kafka-bench.yaml", []byte(kafkaBenchPolicy), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Enforce(c, bundle.Policies); err != nil {
		b.Fatal(err)
	}
	type result struct {
		records, mbytes, busy []float64
		// acked are the records acknowledged, requests the produce requests the client wrote,
		// judged those the proxy's flow events show it forwarded.
		acked, requests, judged int64
	}
	// measure runs one round of the producer against port; a warm-up round is checked and not
	// counted.
	measure := func(size int, idempotent bool, port uint16, r *result, warmUp bool) {
		dst := netip.AddrPortFrom(a, port)
		n.ResetFlows()
		cpu := testenv.ReadCPU(b)
		fmt.Fprintf(producerIn, "%s %d %d %v\n", dst, size, kafkaBenchRound.Milliseconds(), idempotent)
		line, err := producerOut.ReadString('\n')
		busy := cpu.BusySince(b)
		if err != nil {
			b.Fatalf("benchmark producer: %v", err)
		}
		elapsed, acked, requests, err := parseKafkaRound(line)
		if err != nil {
			n.SyncFlows() // the proxy's own account: a refusal would explain a failed record
			if _, refused, why := n.kafkaEvents(src, dst); refused > 0 {
				b.Fatalf("benchmark producer to %s: %v; the Kafka proxy denied or refused %d requests: %s", dst, err, refused, why)
			}
			b.Fatalf("benchmark producer to %s: %v", dst, err)
		}
		if acked == 0 {
			b.Fatalf("no record produced to %s was acknowledged", dst)
		}
		if !n.SyncFlows() {
			b.Fatal("the node's flow events were not read within 5 s")
		}
		judged, refused, why := n.kafkaEvents(src, dst)
		switch {
		case refused > 0:
			b.Fatalf("the Kafka proxy denied or refused %d requests to %s: %s", refused, dst, why)
		case port == kafkaProxiedPort && judged == 0:
			b.Fatalf("the Kafka proxy judged none of the %d produce requests to %s: the round measured a bypass", requests, dst)
		case port == kafkaDirectPort && judged > 0:
			b.Fatalf("the Kafka proxy judged %d produce requests to %s, which no kafka rule governs", judged, dst)
		}
		if warmUp {
			return
		}
		r.records = append(r.records, float64(acked)/elapsed.Seconds())
		r.mbytes = append(r.mbytes, float64(acked)*float64(size)/elapsed.Seconds()/1e6)
		r.busy = append(r.busy, busy)
		r.acked += acked
		r.requests += requests
		r.judged += int64(judged)
	}
	rounds := max(8, b.N)
	for _, mode := range []struct {
		name       string
		size       int
		idempotent bool
	}{
		// Through the proxy franz-go's idempotent producer finds InitProducerID not advertised
		// (the produce role does not allow it) and produces without a producer id, one request
		// in flight; directly it is idempotent, up to 4 in flight. Idempotence off gives both
		// one request in flight: the proxy's own cost.
		{"1 KiB records", 1 << 10, true},
		{"1 KiB records, idempotence off", 1 << 10, false},
		{"16 KiB records", 16 << 10, true},
	} {
		var direct, proxied result
		measure(mode.size, mode.idempotent, kafkaDirectPort, &direct, true)
		measure(mode.size, mode.idempotent, kafkaProxiedPort, &proxied, true)
		for r := 0; r < rounds; r++ {
			if r%2 == 0 {
				measure(mode.size, mode.idempotent, kafkaDirectPort, &direct, false)
				measure(mode.size, mode.idempotent, kafkaProxiedPort, &proxied, false)
			} else {
				measure(mode.size, mode.idempotent, kafkaProxiedPort, &proxied, false)
				measure(mode.size, mode.idempotent, kafkaDirectPort, &direct, false)
			}
		}
		ratio := testenv.Median(proxied.records) / testenv.Median(direct.records)
		fmt.Printf("BenchmarkKafkaProduce %s: %d rounds; min / median / max; CPU busy, median\n", mode.name, rounds)
		for _, r := range []struct {
			name string
			res  result
		}{{"direct", direct}, {"proxied", proxied}} {
			fmt.Printf("  %-8s records/s %s   MB/s %s   busy %.2f   records/request %.0f\n", r.name, testenv.Spread(r.res.records),
				testenv.Spread(r.res.mbytes), testenv.Median(r.res.busy), float64(r.res.acked)/float64(max(r.res.requests, 1)))
		}
		fmt.Printf("  proxied / direct: %.3f; the proxy's flow events show %d of the %d produce requests judged and forwarded\n",
			ratio, proxied.judged, proxied.requests)
		key := strings.NewReplacer(" ", "-", ",", "").Replace(mode.name)
		b.ReportMetric(ratio, "ratio-"+key)
		b.ReportMetric(testenv.Median(proxied.mbytes), "MB/s-proxied-"+key)
	}
}

// parseKafkaRound reads the producer's answer to a round (kafka_bench_roles_test.go).
func parseKafkaRound(line string) (elapsed time.Duration, acked, requests int64, err error) {
	f := strings.Fields(line)
	if len(f) > 0 && f[0] == "error" {
		return 0, 0, 0, errors.New(strings.TrimSpace(strings.TrimPrefix(line, "error")))
	}
	var v [3]int64
	if len(f) != len(v) {
		return 0, 0, 0, fmt.Errorf("bad line %q", line)
	}
	for i := range v {
		if v[i], err = strconv.ParseInt(f[i], 10, 64); err != nil || v[i] < 0 {
			return 0, 0, 0, fmt.Errorf("bad line %q", line)
		}
	}
	if v[0] <= 0 {
		return 0, 0, 0, fmt.Errorf("bad line %q: a round of no time", line)
	}
	return time.Duration(v[0]), v[1], v[2], nil
}

// kafkaEvents counts the Kafka proxy's events of requests from src to dst since the last
// ResetFlows: produce requests it forwarded, and requests it denied or refused, with the
// first one's reason.
func (n *Node) kafkaEvents(src netip.Addr, dst netip.AddrPort) (produced, refused int, why string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, f := range n.flows {
		if f.L7 == nil || f.L7.Kafka == nil || f.Src != src || f.Dst != dst.Addr() || f.DstPort != dst.Port() {
			continue
		}
		switch {
		case f.L7.Denied:
			if refused++; why == "" {
				why = f.L7String() + ": " + f.L7.Why
			}
		case f.L7.Kafka.APIKey == "produce":
			produced++
		}
	}
	return produced, refused, why
}
