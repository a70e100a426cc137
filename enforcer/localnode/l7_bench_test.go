package localnode

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// concurrency is how many clients send at once: enough to keep both CPUs of the machine busy.
const concurrency = 8

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
// same run: with keep-alive (8 clients, each sending requests one after another on its own
// connection) and with a new connection per request. Run with -benchtime 1x: interleaved rounds of 400 ms each, requests/s
// min / median / max printed, the medians' ratio (goal >= 0.8 with keep-alive) and the p99
// latency the proxy adds. A round with a failed request, or none, fails the benchmark.
func BenchmarkL7Proxy(b *testing.B) {
	n, c := testNode(b)
	var lns []net.Listener
	for _, port := range []string{":8081", ":8082"} {
		var ln net.Listener
		if err := n.Pod("app/a").Do(func() (err error) { ln, err = net.Listen("tcp", port); return err }); err != nil {
			b.Fatal(err)
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })}
		go srv.Serve(ln)
		b.Cleanup(func() { srv.Close() })
	}
	bundle, err := policy.LoadBytes("bench.yaml", []byte(benchPolicy), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Enforce(c, bundle.Policies); err != nil {
		b.Fatal(err)
	}
	from, to := n.Pod("app/b"), n.Pod("app/a").IPv4.String()
	client := func(keepAlive bool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: concurrency,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var conn net.Conn
				err := from.Do(func() (err error) {
					conn, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
					return err
				})
				return conn, err
			}}}
	}
	type result struct {
		rates []float64
		lat   []time.Duration
	}
	// measure runs `concurrency` clients, each sending requests one after another on its own
	// connection (or a new one per request), for 400 ms.
	measure := func(cl *http.Client, port string, r *result) {
		url := "http://" + net.JoinHostPort(to, port) + "/x"
		var mu sync.Mutex
		var wg sync.WaitGroup
		var failed error
		count := 0
		start := time.Now()
		for range concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var lat []time.Duration
				for time.Since(start) < 400*time.Millisecond {
					t0 := time.Now()
					resp, err := cl.Get(url)
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							err = fmt.Errorf("status %d", resp.StatusCode)
						}
					}
					if err != nil {
						mu.Lock()
						failed = fmt.Errorf("GET %s: %w", url, err)
						mu.Unlock()
						return
					}
					lat = append(lat, time.Since(t0))
				}
				mu.Lock()
				r.lat = append(r.lat, lat...)
				count += len(lat)
				mu.Unlock()
			}()
		}
		wg.Wait()
		if failed != nil {
			b.Fatal(failed)
		}
		if count == 0 {
			b.Fatalf("no request to %s completed", url)
		}
		r.rates = append(r.rates, float64(count)/time.Since(start).Seconds())
	}
	rounds := max(8, b.N)
	for _, mode := range []struct {
		name      string
		keepAlive bool
		goal      float64
	}{{"keep-alive", true, 0.8}, {"new connection per request", false, 0}} {
		var direct, proxied result
		dc, pc := client(mode.keepAlive), client(mode.keepAlive)
		for r := 0; r < rounds; r++ {
			if r%2 == 0 {
				measure(dc, "8082", &direct)
				measure(pc, "8081", &proxied)
			} else {
				measure(pc, "8081", &proxied)
				measure(dc, "8082", &direct)
			}
		}
		dc.CloseIdleConnections()
		pc.CloseIdleConnections()
		ratio := testenv.Median(proxied.rates) / testenv.Median(direct.rates)
		added := testenv.P99(proxied.lat) - testenv.P99(direct.lat)
		fmt.Printf("BenchmarkL7Proxy %s: %d rounds; requests/s, min / median / max\n", mode.name, rounds)
		fmt.Printf("  %-8s %s   p99 %v\n", "direct", testenv.Spread(direct.rates), testenv.P99(direct.lat))
		fmt.Printf("  %-8s %s   p99 %v\n", "proxied", testenv.Spread(proxied.rates), testenv.P99(proxied.lat))
		goal := ""
		if mode.goal > 0 {
			goal = fmt.Sprintf(" (goal >= %.1f)", mode.goal)
		}
		fmt.Printf("  proxied / direct: %.3f%s; p99 added %v\n", ratio, goal, added)
		key := strings.ReplaceAll(mode.name, " ", "-")
		b.ReportMetric(ratio, "ratio-"+key)
		b.ReportMetric(float64(added.Microseconds()), "us-p99-added-"+key)
	}
}
