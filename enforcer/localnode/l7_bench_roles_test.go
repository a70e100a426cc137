package localnode

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The benchmarks' servers and clients (BenchmarkL7Proxy's, BenchmarkKafkaProduce's) are processes
// of their own in the pods' namespaces, as a pod's programs are (in the test process they would
// share its Go scheduler with the proxy): the test binary started again with roleEnv set.
const roleEnv = "NETPACT_L7BENCH_ROLE"

func init() {
	switch os.Getenv(roleEnv) {
	case "":
		return
	case "server":
		benchServer(os.Args[len(os.Args)-1])
	case "client":
		benchClient()
	case "kafka-broker":
		kafkaBenchBroker(os.Args[len(os.Args)-2], os.Args[len(os.Args)-1])
	case "kafka-producer":
		kafkaBenchProducer()
	default:
		fmt.Fprintf(os.Stderr, "%s: unknown role %q\n", roleEnv, os.Getenv(roleEnv))
		os.Exit(2)
	}
	os.Exit(0)
}

// benchServer answers "ok" on each port of ports (comma-separated) until it is killed; it
// writes "ready" once every port listens.
func benchServer(ports string) {
	for _, port := range strings.Split(ports, ",") {
		ln, err := net.Listen("tcp", ":"+port)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench server: %v\n", err)
			os.Exit(1)
		}
		go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") }))
	}
	fmt.Println("ready")
	select {}
}

// benchClient reads rounds from its input, a line "<url> <keep-alive: true|false> <ms> <clients>
// <rate>" each. With rate 0 it runs that many clients for that long, each sending GET requests
// one after another (on its own connection, or a new one per request); with a rate it sends
// rate requests a second for that long, each at its time whether or not the ones before it have
// been answered (an open loop: the server's pace does not slow the offered load). It answers a
// line: the round's duration and every request's latency in ns, or "error <message>" when a
// request failed.
func benchClient() {
	transports := map[bool]*http.Transport{}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 5 {
			fmt.Printf("error bad round %q\n", in.Text())
			continue
		}
		url, keepAlive := f[0], f[1] == "true"
		ms, _ := strconv.Atoi(f[2])
		clients, _ := strconv.Atoi(f[3])
		rate, _ := strconv.Atoi(f[4])
		tr := transports[keepAlive]
		if tr == nil {
			tr = &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
			transports[keepAlive] = tr
		}
		r := clientRound{cl: &http.Client{Timeout: 5 * time.Second, Transport: tr}, url: url}
		start := time.Now()
		if rate > 0 {
			r.paced(start, time.Duration(ms)*time.Millisecond, rate)
		} else {
			r.closed(start, time.Duration(ms)*time.Millisecond, clients)
		}
		elapsed := time.Since(start)
		if r.failed != nil {
			fmt.Printf("error %s\n", strings.ReplaceAll(r.failed.Error(), "\n", " "))
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%d", elapsed)
		for _, l := range r.lats {
			fmt.Fprintf(&b, " %d", l)
		}
		fmt.Println(b.String())
	}
}

// clientRound is one round of benchClient: its requests' latencies, or the first failure.
type clientRound struct {
	cl  *http.Client
	url string

	mu     sync.Mutex
	failed error
	lats   []time.Duration
}

// get sends one request and records its latency, from its sending to the end of the response.
func (r *clientRound) get() (ok bool) {
	t0 := time.Now()
	resp, err := r.cl.Get(r.url)
	if err == nil {
		if resp.StatusCode != http.StatusOK {
			// The body says why: a proxy's own answers (netpact's 503s as Envoy words them).
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			err = fmt.Errorf("status %d: %q", resp.StatusCode, body)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	lat := time.Since(t0)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.failed = fmt.Errorf("GET %s: %w", r.url, err)
		return false
	}
	r.lats = append(r.lats, lat)
	return true
}

// closed runs clients that each send requests one after another until d has passed since start.
func (r *clientRound) closed(start time.Time, d time.Duration, clients int) {
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for time.Since(start) < d && r.get() {
			}
		})
	}
	wg.Wait()
}

// paced sends rate requests a second until d has passed since start, the i-th at start + i/rate
// (those a late wake-up finds due go out at once), and waits for their answers.
func (r *clientRound) paced(start time.Time, d time.Duration, rate int) {
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	for at := start; at.Sub(start) < d; at = at.Add(interval) {
		time.Sleep(time.Until(at))
		wg.Go(func() { r.get() })
	}
	wg.Wait()
}
