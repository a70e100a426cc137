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

// benchClient reads rounds from its input, a line "<url> <keep-alive: true|false> <ms> <clients>"
// each, runs that many clients for that long, each sending GET requests one after another (on
// its own connection, or a new one per request), and answers a line: the round's duration and
// every request's latency in ns, or "error <message>" when a request failed.
func benchClient() {
	transports := map[bool]*http.Transport{}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 4 {
			fmt.Printf("error bad round %q\n", in.Text())
			continue
		}
		url, keepAlive := f[0], f[1] == "true"
		ms, _ := strconv.Atoi(f[2])
		clients, _ := strconv.Atoi(f[3])
		tr := transports[keepAlive]
		if tr == nil {
			tr = &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
			transports[keepAlive] = tr
		}
		cl := &http.Client{Timeout: 5 * time.Second, Transport: tr}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var failed error
		var lats []time.Duration
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var lat []time.Duration
				for time.Since(start) < time.Duration(ms)*time.Millisecond {
					t0 := time.Now()
					resp, err := cl.Get(url)
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
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
				lats = append(lats, lat...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		if failed != nil {
			fmt.Printf("error %s\n", strings.ReplaceAll(failed.Error(), "\n", " "))
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%d", elapsed)
		for _, l := range lats {
			fmt.Fprintf(&b, " %d", l)
		}
		fmt.Println(b.String())
	}
}
