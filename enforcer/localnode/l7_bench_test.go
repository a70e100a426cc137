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
    - ports: [{port: "8082", protocol: TCP}]
`

// BenchmarkL7Proxy is the request rate of pod b to an HTTP server in pod a through the L7 proxy
// (port 8081, an HTTP rule) against the same server directly (port 8082, an L3/L4 rule), in the
// same run, the server and the clients processes of their own in the pods: with keep-alive (each
// client sending requests one after another on its own connection) and with a new connection per
// request; 8 clients, which keep the machine's CPUs busy (the share busy is printed), for the
// rates, and one client for the latency the proxy adds (with the CPUs saturated the p99 is the
// queue's, not the proxy's). Run with -benchtime 1x: interleaved rounds of 400 ms, the first of
// each round alternating; requests/s min / median / max printed, the medians' ratio (goal >= 0.8
// with keep-alive) and the p99 added. A round with a failed request, or none, fails the benchmark.
func BenchmarkL7Proxy(b *testing.B) {
	n, c := testNode(b)
	_, srvOut := startRole(b, n, "app/a", "server", "8081,8082")
	if l, err := srvOut.ReadString('\n'); err != nil || l != "ready\n" {
		b.Fatalf("benchmark server: %q, %v", l, err)
	}
	clientIn, clientOut := startRole(b, n, "app/b", "client", "-")
	bundle, err := policy.LoadBytes("bench.yaml", []byte(benchPolicy), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Enforce(c, bundle.Policies); err != nil {
		b.Fatal(err)
	}
	to := n.Pod("app/a").IPv4.String()
	type result struct {
		rates, busy []float64
		lat         []time.Duration
	}
	// measure runs one round of the client process against port.
	measure := func(keepAlive bool, clients int, port string, r *result) {
		url := "http://" + net.JoinHostPort(to, port) + "/x"
		cpu := testenv.ReadCPU(b)
		fmt.Fprintf(clientIn, "%s %v 400 %d\n", url, keepAlive, clients)
		line, err := clientOut.ReadString('\n')
		r.busy = append(r.busy, cpu.BusySince(b))
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
		for _, x := range f[1:] {
			v, err := strconv.ParseInt(x, 10, 64)
			if err != nil {
				b.Fatalf("benchmark client: bad line %q", line)
			}
			r.lat = append(r.lat, time.Duration(v))
		}
		r.rates = append(r.rates, float64(len(f)-1)/time.Duration(elapsed).Seconds())
	}
	rounds := max(8, b.N)
	for _, mode := range []struct {
		name      string
		keepAlive bool
		clients   int
		goal      float64
	}{
		{"keep-alive", true, 8, 0.8},
		{"new connection per request", false, 8, 0},
		{"keep-alive, one client", true, 1, 0},
		{"new connection per request, one client", false, 1, 0},
	} {
		var direct, proxied result
		for r := 0; r < rounds; r++ {
			if r%2 == 0 {
				measure(mode.keepAlive, mode.clients, "8082", &direct)
				measure(mode.keepAlive, mode.clients, "8081", &proxied)
			} else {
				measure(mode.keepAlive, mode.clients, "8081", &proxied)
				measure(mode.keepAlive, mode.clients, "8082", &direct)
			}
		}
		ratio := testenv.Median(proxied.rates) / testenv.Median(direct.rates)
		added := testenv.P99(proxied.lat) - testenv.P99(direct.lat)
		fmt.Printf("BenchmarkL7Proxy %s: %d rounds; requests/s, min / median / max; CPU busy, median\n", mode.name, rounds)
		fmt.Printf("  %-8s %s   p99 %v   busy %.2f\n", "direct", testenv.Spread(direct.rates), testenv.P99(direct.lat), testenv.Median(direct.busy))
		fmt.Printf("  %-8s %s   p99 %v   busy %.2f\n", "proxied", testenv.Spread(proxied.rates), testenv.P99(proxied.lat), testenv.Median(proxied.busy))
		goal := ""
		if mode.goal > 0 {
			goal = fmt.Sprintf(" (goal >= %.1f)", mode.goal)
		}
		fmt.Printf("  proxied / direct: %.3f%s; p99 added %v\n", ratio, goal, added)
		key := strings.NewReplacer(" ", "-", ",", "").Replace(mode.name)
		b.ReportMetric(ratio, "ratio-"+key)
		b.ReportMetric(float64(added.Microseconds()), "us-p99-added-"+key)
	}
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
