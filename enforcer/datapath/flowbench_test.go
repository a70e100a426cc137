package datapath_test

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/datapath/datapathtest"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// BenchmarkFlowEvents measures the flow events per second the node reads, the events lost
// (counted by the datapath when the ring buffer is full, and by the reader), and the CPU they
// cost, at offered rates of 10k, 50k and 200k events per second and flat out. The tc program
// runs in the kernel with BPF_PROG_TEST_RUN on a frame that default deny drops, each run making
// one event, while a reader goroutine reads them through FlowReader and hands each to a count
// and a bounded ring (datapathtest.RawReader; enforcer's BenchmarkNodeFlowEvents measures the
// node's pipeline against it). The per-endpoint rate limit is off for these runs; the
// default-limit runs show what the default limit of 10,000 per second per endpoint and CPU does
// at 50k/s and flat out.
//
// CPU is getrusage(RUSAGE_SELF) user+sys over a run, per 1,000 events read; the producer's own
// share is measured in the same rounds by the same producer at the same rate with events held
// back by a limit of 1 per second, and subtracted per program run: what is left is what the
// events cost (the kernel's reserve, submit and wakeup, the reader and the consumer). Run it
// with -benchtime 1x: at least 5 rounds interleaving the rates, each rate's min, median and max
// printed, the medians reported. A run that reads nothing, or in which an event is neither read
// nor counted, fails the benchmark.
func BenchmarkFlowEvents(b *testing.B) {
	d, pin := datapathtest.Open(b, datapath.Options{})
	ifindex := datapathtest.Link(b, fmt.Sprintf("npfb%d", os.Getpid()%100000))
	st := datapath.CompileYAML(b, datapath.UnitCluster(), datapath.UnitPolicies)
	key := policy.EndpointKey{Namespace: "app", Name: "a"}
	es, _ := st.Endpoint(key)
	ident, _ := st.Identity(key)
	if err := d.SetIPCache(st.IPCache("node-1")); err != nil {
		b.Fatal(err)
	}
	if err := d.UpsertEndpoint(datapath.Endpoint{Ifindex: ifindex, Ifname: "a", ID: 1, Identity: ident.ID,
		IPv4: netip.MustParseAddr("10.0.0.1"), IPv6: netip.MustParseAddr("fd00::1")}, es); err != nil {
		b.Fatal(err)
	}
	frame := datapathtest.SYN(b, netip.MustParseAddrPort("8.8.8.8:41002"), netip.MustParseAddrPort("10.0.0.1:80"))
	p := datapathtest.NewProducer(b, d, pin, ifindex, frame)
	sink := datapathtest.NewSink(4096)
	fr, err := d.Flows()
	if err != nil {
		b.Fatal(err)
	}
	rd := datapathtest.NewRawReader(fr, sink.Consume)
	b.Cleanup(func() { rd.Close() })

	const dur = time.Second
	type config struct {
		name  string
		rate  float64 // offered events per second, 0: flat out
		limit uint64  // events_per_sec in the settings map, 0: no limit (10,000: Open's default)
	}
	configs := []config{
		{name: "10k", rate: 10000},
		{name: "50k", rate: 50000},
		{name: "200k", rate: 200000},
		{name: "flat-out"},
		{name: "default-limit-50k", rate: 50000, limit: 10000},
		{name: "default-limit-flat-out", limit: 10000},
	}
	type sample struct{ offered, readRate, lost, limited, cpuPer1k, prodPer1kRuns, eventPer1k []float64 }
	samples := make([]sample, len(configs))
	rounds := max(5, b.N)
	for round := 0; round < rounds; round++ {
		for i, cfg := range configs {
			prodPerRun, err := p.ProducerCost(cfg.rate, dur)
			if err != nil {
				b.Fatalf("%s: %v", cfg.name, err)
			}
			if err := p.SetEventRate(cfg.limit); err != nil {
				b.Fatal(err)
			}
			r, err := p.Measure(cfg.rate, dur, rd)
			if err != nil {
				b.Fatalf("%s: %v (reader: %v)", cfg.name, err, rd.Err())
			}
			s := &samples[i]
			s.offered = append(s.offered, float64(r.Made)/dur.Seconds())
			s.readRate = append(s.readRate, r.ReadRate())
			s.lost = append(s.lost, float64(r.Lost+r.ReaderLost))
			s.limited = append(s.limited, float64(r.Limited))
			s.cpuPer1k = append(s.cpuPer1k, r.CPUPer1k(0))
			s.prodPer1kRuns = append(s.prodPer1kRuns, prodPerRun.Seconds()*1e6)
			s.eventPer1k = append(s.eventPer1k, r.CPUPer1k(prodPerRun))
		}
	}
	if sink.N == 0 {
		b.Fatal("the consumer got no event")
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("BenchmarkFlowEvents: %d rounds of %s per rate, %d CPUs; min / median / max\n", rounds, dur, ncpu)
	for i, cfg := range configs {
		s := samples[i]
		for _, m := range []struct {
			name string
			xs   []float64
		}{{"offered-events/s", s.offered}, {"read-events/s", s.readRate}, {"lost", s.lost}, {"limited", s.limited},
			{"cpu-ms/1k-events", s.cpuPer1k}, {"producer-cpu-ms/1k-runs", s.prodPer1kRuns}, {"event-cpu-ms/1k-events", s.eventPer1k}} {
			fmt.Printf("  %-24s %-24s %s\n", cfg.name, m.name, testenv.Spread(m.xs))
		}
		b.Run(cfg.name, func(b *testing.B) {
			b.ReportMetric(testenv.Median(s.offered), "offered-events/s")
			b.ReportMetric(testenv.Median(s.readRate), "events/s")
			b.ReportMetric(testenv.Median(s.lost), "lost")
			b.ReportMetric(testenv.Median(s.limited), "limited")
			b.ReportMetric(testenv.Median(s.cpuPer1k), "cpu-ms/1k-events")
			b.ReportMetric(testenv.Median(s.eventPer1k), "event-cpu-ms/1k-events")
		})
	}
}
