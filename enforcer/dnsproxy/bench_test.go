package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/netpact/netpact/internal/testenv"
)

// benchWorkers are the resolvers asking at once, each from a UDP socket of its own, as pods do.
const benchWorkers = 4

// BenchmarkDNSProxyUDP measures what the proxy costs a lookup: b.N A lookups through the proxy
// (the timed part: ns/op), and as many straight to the same server in the same run, by
// benchWorkers resolvers at once. It reports the lookups a second of each, their ratio, and the
// 99th percentile latency the proxy adds. The proxy runs in plain mode over loopback (no root):
// everything a query goes through is measured (parse, the policy decision and DNS rule match,
// the shared upstream socket, reading the CNAME chain, Learn, repacking), except the datapath's
// redirect and the transparent sockets (the reply from the server's address, a sendmsg on a raw
// socket instead of the listener's). Each resolver asks from one port, one query after the
// other: the proxy's worst case, as its upstream socket goes with the last query in flight and
// every query dials again, while a resolver's own socket is reused. Any failed lookup fails the
// benchmark.
func BenchmarkDNSProxyUDP(b *testing.B) {
	srv := startServer(b, here, netip.MustParseAddrPort("127.0.0.1:0"))
	learn := func(netip.AddrPort, string, []netip.Addr, time.Duration) error { return nil }
	p := startPlain(b, Options{Decide: decideAsClient(testState(b)), Learn: learn}, srv.addr)
	direct, proxied := srv.addr.String(), proxyAddr(p)
	lookups(b, direct, benchWorkers) // warm up both paths
	lookups(b, proxied, benchWorkers)

	// Rounds alternate the two paths, so that what else the machine does weighs on both alike;
	// the ratio and the added p99 are given per round, as median and spread.
	const rounds = 5
	per := max(benchWorkers, b.N/rounds)
	var ratios, addedUS, directRates, proxyRates []float64
	b.StopTimer()
	for range rounds {
		viaServer := lookups(b, direct, per)
		b.StartTimer()
		viaProxy := lookups(b, proxied, per)
		b.StopTimer()
		ratios = append(ratios, viaProxy.rate()/viaServer.rate())
		addedUS = append(addedUS, float64((viaProxy.p99() - viaServer.p99()).Microseconds()))
		directRates, proxyRates = append(directRates, viaServer.rate()), append(proxyRates, viaProxy.rate())
	}
	b.ReportMetric(testenv.Median(directRates), "direct-lookups/s")
	b.ReportMetric(testenv.Median(proxyRates), "proxy-lookups/s")
	b.ReportMetric(testenv.Median(ratios), "proxy/direct")
	b.ReportMetric(testenv.Median(addedUS), "p99-added-µs")
	b.Logf("%d rounds of %d lookups, %d resolvers (min / median / max): direct %s lookups/s, through the proxy %s/s, ratio %s, p99 added %s µs",
		rounds, per, benchWorkers, testenv.Spread(directRates), testenv.Spread(proxyRates), testenv.Spread(ratios), testenv.Spread(addedUS))
}

// measured are the latencies of a run of lookups and how long it took.
type measured struct {
	latencies []time.Duration
	elapsed   time.Duration
}

func (m measured) rate() float64 { return float64(len(m.latencies)) / m.elapsed.Seconds() }

func (m measured) p99() time.Duration {
	l := slices.Clone(m.latencies)
	slices.Sort(l)
	return l[(len(l)*99)/100]
}

// lookups makes n A lookups of nameA at addr with benchWorkers resolvers (at least one lookup
// each), failing the benchmark on any error or wrong answer.
func lookups(b *testing.B, addr string, n int) measured {
	b.Helper()
	per := max(1, (n+benchWorkers-1)/benchWorkers)
	lat := make([][]time.Duration, benchWorkers)
	errs := make(chan error, benchWorkers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := resolve(addr, per)
			lat[w] = l
			errs <- err
		}()
	}
	wg.Wait()
	m := measured{elapsed: time.Since(start)}
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatalf("lookups at %s: %v", addr, err)
		}
	}
	for _, l := range lat {
		m.latencies = append(m.latencies, l...)
	}
	return m
}

// resolve makes n lookups one after the other from one UDP socket.
func resolve(addr string, n int) ([]time.Duration, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	co := &dns.Conn{Conn: c}
	m := new(dns.Msg).SetQuestion(nameA, dns.TypeA)
	lat := make([]time.Duration, 0, n)
	for range n {
		m.Id = dns.Id()
		start := time.Now()
		c.SetDeadline(start.Add(2 * time.Second))
		if err := co.WriteMsg(m); err != nil {
			return lat, err
		}
		r, err := co.ReadMsg()
		if err != nil {
			return lat, err
		}
		lat = append(lat, time.Since(start))
		if r.Id != m.Id || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			return lat, fmt.Errorf("answer %v", r)
		}
	}
	return lat, nil
}
