package localnode

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

const benchPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "8081", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /.*}
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "8082", protocol: TCP}, {port: "8083", protocol: TCP}, {port: "8084", protocol: TCP}]
`

// benchTargets are the ways BenchmarkL7Proxy's client reaches the server in pod a, by port:
// directly (an L3/L4 rule), through nginx and HAProxy in the server's pod (l7_anchors_test.go,
// L3/L4 rules too), and through netpact's proxy (an HTTP rule).
var benchTargets = []struct{ name, port string }{
	{"direct", "8082"}, {"nginx", "8083"}, {"HAProxy", "8084"}, {"netpact", "8081"},
}

// BenchmarkL7Proxy is the request rate, CPU time and latency of pod b's requests to an HTTP
// server in pod a directly, through two established reverse proxies (nginx and HAProxy, the
// anchors) and through netpact's L7 proxy, in the same run, interleaved; the server, the client
// and the anchors are processes of their own in the pods. Run with -benchtime 1x.
//
// Saturated (8 clients, rounds of 400 ms), with keep-alive and with a new connection per request:
// requests/s, and the machine's busy CPU time (/proc/stat) per request. At a fixed offered load of
// 1,000 requests/s (an open loop, rounds of 1 s): the p50 and p99 latency each proxy adds to the
// direct one of its round. min / median / max over the rounds; the first target of a round
// rotates. A round with a failed request, or none, fails the benchmark, as does an anchor that
// does not start.
func BenchmarkL7Proxy(b *testing.B) {
	n, c := testNode(b)
	_, srvOut := startRole(b, n, "app/a", "server", "8081,8082")
	if l, err := srvOut.ReadString('\n'); err != nil || l != "ready\n" {
		b.Fatalf("benchmark server: %q, %v", l, err)
	}
	for _, t := range benchTargets[1:3] {
		startAnchor(b, n.Pod("app/a"), t.name, t.port, "8082")
	}
	clientIn, clientOut := startRole(b, n, "app/b", "client", "-")
	bundle, err := policy.LoadBytes("bench.yaml", []byte(benchPolicy), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Enforce(c, bundle.Policies); err != nil {
		b.Fatal(err)
	}
	bc := clientProc{in: clientIn, out: clientOut, to: n.Pod("app/a").IPv4.String()}
	// The machine is shared: what else keeps it busy, before the first round.
	idle := testenv.ReadCPU(b)
	time.Sleep(time.Second)
	fmt.Printf("BenchmarkL7Proxy: CPU busy with no request for 1 s before the rounds: %.2f\n", idle.BusySince(b))
	rounds := max(8, b.N)
	for _, m := range []benchMode{
		{name: "keep-alive", keepAlive: true, clients: 8, ms: 400},
		{name: "new connection per request", clients: 8, ms: 400},
		{name: "keep-alive, 1,000 requests/s", keepAlive: true, rate: 1000, ms: 1000},
		{name: "new connection per request, 1,000 requests/s", rate: 1000, ms: 1000},
	} {
		// One round through each target, not counted: connections and pools warmed up, and a
		// target that fails fails here.
		for _, t := range benchTargets {
			bc.round(b, m, t.port)
		}
		results := make([]benchResult, len(benchTargets))
		for r := range rounds {
			for i := range benchTargets {
				t := (r + i) % len(benchTargets)
				results[t].add(bc.round(b, m, benchTargets[t].port))
			}
		}
		if m.rate == 0 {
			reportSaturated(b, m, rounds, results)
		} else {
			reportPaced(b, m, rounds, results)
		}
	}
}

// benchMode is how BenchmarkL7Proxy's client sends: clients one after another each, or rate
// requests a second, for ms per round.
type benchMode struct {
	name      string
	keepAlive bool
	clients   int
	rate      int
	ms        int
}

// clientProc is BenchmarkL7Proxy's client process, in pod b, sending to the address to.
type clientProc struct {
	in  io.Writer
	out *bufio.Reader
	to  string
}

// benchRound is what one round through one target measured.
type benchRound struct {
	rate float64 // requests/s
	// busy is the share of the machine's CPU time that was busy, cpu its busy time per request.
	busy float64
	cpu  time.Duration
	lat  []time.Duration
}

// round runs one round of m against port.
func (bc clientProc) round(b *testing.B, m benchMode, port string) benchRound {
	url := "http://" + net.JoinHostPort(bc.to, port) + "/x"
	cpu := testenv.ReadCPU(b)
	fmt.Fprintf(bc.in, "%s %v %d %d %d\n", url, m.keepAlive, m.ms, m.clients, m.rate)
	line, err := bc.out.ReadString('\n')
	busy, busySeconds := cpu.BusySince(b), testenv.ReadCPU(b).BusySeconds()-cpu.BusySeconds()
	if err != nil {
		b.Fatalf("benchmark client: %v", err)
	}
	f := strings.Fields(line)
	switch {
	case len(f) > 0 && f[0] == "error":
		b.Fatalf("benchmark client: %s", strings.TrimSpace(line))
	case len(f) < 2:
		b.Fatalf("no request to %s completed", url)
	}
	elapsed, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil || elapsed <= 0 {
		b.Fatalf("benchmark client: bad line %q", line)
	}
	r := benchRound{busy: busy, lat: make([]time.Duration, 0, len(f)-1)}
	for _, x := range f[1:] {
		v, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			b.Fatalf("benchmark client: bad line %q", line)
		}
		r.lat = append(r.lat, time.Duration(v))
	}
	r.rate = float64(len(r.lat)) / time.Duration(elapsed).Seconds()
	r.cpu = time.Duration(busySeconds / float64(len(r.lat)) * float64(time.Second))
	return r
}

// benchResult is one target's rounds of a mode, each round's figure in order.
type benchResult struct {
	rates, busy []float64
	// cpu is the busy time per request, p50 and p99 the latency percentiles, in µs.
	cpu, p50, p99 []float64
}

func (res *benchResult) add(r benchRound) {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	res.rates = append(res.rates, r.rate)
	res.busy = append(res.busy, r.busy)
	res.cpu = append(res.cpu, us(r.cpu))
	res.p50 = append(res.p50, us(testenv.Percentile(r.lat, 50)))
	res.p99 = append(res.p99, us(testenv.Percentile(r.lat, 99)))
}

// addedTo is what res adds to base in each round.
func addedTo(res, base []float64) []float64 {
	out := make([]float64, len(res))
	for r := range res {
		out[r] = res[r] - base[r]
	}
	return out
}

// metricKey makes a mode's or target's name a benchmark metric's unit.
var metricKey = strings.NewReplacer(" ", "-", ",", "", "/", "per")

// reportSaturated prints and reports the saturated rounds: requests/s and CPU per request of
// each target, against direct's (results[0]).
func reportSaturated(b *testing.B, m benchMode, rounds int, results []benchResult) {
	fmt.Printf("BenchmarkL7Proxy %s, %d clients: %d rounds of %d ms; min / median / max\n", m.name, m.clients, rounds, m.ms)
	fmt.Printf("  %-8s %-24s %-7s %-20s %-9s %s\n", "", "requests/s", "ratio", "CPU µs/request", "µs added", "CPU busy")
	direct := results[0]
	ratios, cpuAdded := make([]float64, len(results)), make([]float64, len(results))
	for i, t := range benchTargets {
		res := results[i]
		ratio := testenv.Median(res.rates) / testenv.Median(direct.rates)
		added := testenv.Median(res.cpu) - testenv.Median(direct.cpu)
		ratios[i], cpuAdded[i] = ratio, added
		fmt.Printf("  %-8s %-24s %-7.3f %-20s %-9.1f %.2f\n", t.name, testenv.Spread(res.rates), ratio,
			testenv.Spread(res.cpu), added, testenv.Median(res.busy))
		if i > 0 {
			key := metricKey.Replace(t.name + "-" + m.name)
			b.ReportMetric(ratio, "ratio-"+key)
			b.ReportMetric(added, "us-cpu-added-"+key)
		}
	}
	// The goals: netpact (the last) at least the best anchor's ratio, and adding no more CPU time
	// than the leanest anchor.
	last := len(results) - 1
	bestRatio, leanest := max(ratios[1], ratios[2]), min(cpuAdded[1], cpuAdded[2])
	fmt.Printf("  goals: netpact's ratio %.3f >= the best anchor's %.3f: %s; its CPU added %.1f µs <= the leanest anchor's %.1f µs: %s\n",
		ratios[last], bestRatio, metOrNot(ratios[last] >= bestRatio), cpuAdded[last], leanest, metOrNot(cpuAdded[last] <= leanest))
}

func metOrNot(met bool) string {
	if met {
		return "met"
	}
	return "NOT met"
}

// reportPaced prints and reports the rounds at a fixed offered load: the p50 and p99 of each
// target, and what each proxy adds to direct's in the same round, to them and to the CPU time per
// request (the machine not saturated, what others keep busy is about the same in both).
func reportPaced(b *testing.B, m benchMode, rounds int, results []benchResult) {
	fmt.Printf("BenchmarkL7Proxy %s: %d rounds of %d ms; min / median / max\n", m.name, rounds, m.ms)
	fmt.Printf("  %-8s %-22s %-22s %-22s %-22s %-22s %s\n", "", "p50 µs", "p99 µs", "p50 added µs", "p99 added µs", "CPU µs/request added", "CPU busy")
	direct := results[0]
	var p99Added float64 // netpact's, the last
	for i, t := range benchTargets {
		res := results[i]
		added99 := addedTo(res.p99, direct.p99)
		fmt.Printf("  %-8s %-22s %-22s %-22s %-22s %-22s %.2f\n", t.name, testenv.Spread(res.p50), testenv.Spread(res.p99),
			testenv.Spread(addedTo(res.p50, direct.p50)), testenv.Spread(added99), testenv.Spread(addedTo(res.cpu, direct.cpu)),
			testenv.Median(res.busy))
		if i > 0 {
			key := metricKey.Replace(t.name + "-" + m.name)
			b.ReportMetric(testenv.Median(added99), "us-p99-added-"+key)
			b.ReportMetric(testenv.Median(addedTo(res.cpu, direct.cpu)), "us-cpu-added-"+key)
			p99Added = testenv.Median(added99)
		}
	}
	fmt.Printf("  goal: netpact's p99 added %.0f µs (median) <= 100 µs: %s\n", p99Added, metOrNot(p99Added <= 100))
}

// startRole starts the test binary again in pod's network namespace with roleEnv set to role
// (l7_bench_roles_test.go), killed when the benchmark ends: its standard input, and its standard
// output to read its answers from.
func startRole(b *testing.B, n *Node, pod, role string, args ...string) (io.WriteCloser, *bufio.Reader) {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.Pod(pod).Netns, exe}, args...)...)
	cmd.Env = append(os.Environ(), roleEnv+"="+role)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start the benchmark's %s: %v", role, err)
	}
	b.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	return in, bufio.NewReader(out)
}
