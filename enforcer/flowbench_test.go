package enforcer

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/datapath/datapathtest"
	"github.com/netpact/netpact/enforcer/metrics"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// benchPolicies make app/a default deny on ingress (and b on egress), with sources to name: a
// SYN from b to a's port 9999 is a default-deny drop whose flows name both pods and the two
// policies that select a.
const benchPolicies = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-from-b, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: c}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-metrics, namespace: app}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress]
  ingress:
  - ports: [{port: 9090, protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-to-a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: b}}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

// benchCluster is a small cluster: pods a, b, c of namespace app and 40 more over two other
// namespaces, all on node-1 (a is the one programmed).
func benchCluster() *policy.Cluster {
	c := &policy.Cluster{
		Nodes:      []policy.Node{{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("192.168.100.1")}}},
		Namespaces: []policy.Namespace{{Name: "app"}, {Name: "web"}, {Name: "db"}},
	}
	for i, n := range []string{"a", "b", "c"} {
		c.Endpoints = append(c.Endpoints, policy.Endpoint{Namespace: "app", Name: n, Labels: map[string]string{"app": n},
			Node: "node-1", IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})}})
	}
	for i := 0; i < 40; i++ {
		ns := []string{"web", "db"}[i%2]
		c.Endpoints = append(c.Endpoints, policy.Endpoint{Namespace: ns, Name: fmt.Sprintf("%s-%d", ns, i),
			Labels: map[string]string{"app": ns, "tier": fmt.Sprint(i % 3)}, Node: "node-1",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)})}})
	}
	return c
}

// benchSource is the metrics' scrape-time view of the benchmark's datapath, as kubenode's
// metricsSource is of the node's (kubenode imports this package, so the test cannot use it).
type benchSource struct {
	d *datapath.Datapath
	e *Enforcer
}

func (s benchSource) Counters() (map[datapath.Reason]datapath.Counter, error) { return s.d.Counters() }

func (s benchSource) EventsLimited() (map[string]uint64, error) {
	limited, err := s.d.EventsLimited()
	if err != nil {
		return nil, err
	}
	byPod := map[string]uint64{}
	for id, n := range limited {
		name := "(none)"
		if k, ok := s.e.EndpointOf(id); ok && id != 0 {
			name = k.String()
		}
		byPod[name] += n
	}
	return byPod, nil
}

func (s benchSource) EventsLost() (map[int]uint64, error)        { return s.d.EventsLost() }
func (s benchSource) Fill() (map[string]datapath.MapFill, error) { return s.d.Fill() }
func (s benchSource) DriftRepairs() uint64                       { return s.e.DriftRepairs() }
func (s benchSource) Sync() metrics.SyncInfo                     { return metrics.SyncInfo{} }

// benchMetrics counts each event in the node's metrics as kubenode's Observer.observe does,
// with the same per-state cache of the deciding policy's name.
type benchMetrics struct {
	e     *Enforcer
	m     *metrics.Metrics
	st    *policy.State
	names map[policy.RuleID][]string
}

func (o *benchMetrics) observe(f datapath.Flow) {
	s := metrics.SampleOf(f)
	if s.PolicyVerdict && f.Rule != policy.RuleNone {
		if st := o.e.State(); st != nil {
			if st != o.st {
				o.st, o.names = st, map[policy.RuleID][]string{}
			}
			p, ok := o.names[f.Rule]
			if !ok {
				if ri := st.Rule(f.Rule); ri != nil && ri.Policy.Name != "" {
					p = []string{ri.Policy.String()}
				}
				o.names[f.Rule] = p
			}
			s.Policies = p
		}
	}
	o.m.ObserveFlow(s)
}

// hubReader is the node's FlowHub as datapathtest measures a reader: its last consumer counts
// the events every consumer before it has had.
type hubReader struct {
	h      *FlowHub
	handed atomic.Uint64
	last   atomic.Int64 // unix ns
}

func (r *hubReader) count(datapath.Flow) {
	r.handed.Add(1)
	r.last.Store(time.Now().UnixNano())
}

func (r *hubReader) Handed() (uint64, time.Time) {
	return r.handed.Load(), time.Unix(0, r.last.Load())
}
func (r *hubReader) Lost() uint64                    { return r.h.lost() }
func (r *hubReader) Sync(timeout time.Duration) bool { return r.h.Sync(timeout) }

// BenchmarkNodeFlowEvents measures the flow events per second the node's pipeline sustains, the
// events lost on the way (by source) and the CPU the pipeline costs, against the raw reader in
// the same rounds. The pipeline is the node's: a datapath with pod app/a programmed by an
// Enforcer that compiled real policies over a small cluster, the events read once by a FlowHub,
// each turned into Hubble flows (HubbleFlows: pods, identities' labels, the policies that made
// the drop) added to an observe.Ring, and counted in the node's metrics (SampleOf, ObserveFlow).
// The baseline is datapathtest.RawReader: FlowReader read by one goroutine into a count and a
// bounded ring.
//
// Events come as in the datapath's BenchmarkFlowEvents (which see): tc_to_pod test-runs on a
// SYN from pod b to a's port 9999, a default-deny drop, one event a run, paced at 10k, 50k and
// 200k a second and flat out, the per-endpoint rate limit off. Each round measures, per rate,
// the producer alone, then the raw reader and the pipeline (in alternating order), 1 s each.
// Every event made must be read, counted lost (the datapath's events_lost: ring buffer full; the
// reader's: undecodable) or limited; an unaccounted event, or a run that reads nothing, fails
// the benchmark. CPU per 1,000 events is the process's user+sys less the producer's cost per run
// measured in the same round. Run it with -benchtime 1x: at least 5 rounds, min / median / max
// printed, medians (and the medians of the per-round ratios) reported.
func BenchmarkNodeFlowEvents(b *testing.B) {
	d, pin := datapathtest.Open(b, datapath.Options{})
	ifname := fmt.Sprintf("npnb%d", os.Getpid()%100000)
	ifindex := datapathtest.Link(b, ifname)
	loaded, err := policy.LoadBytes("bench-policies.yaml", []byte(benchPolicies), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	e := New("node-1", d, policy.Options{})
	a := policy.EndpointKey{Namespace: "app", Name: "a"}
	if err := e.Sync(benchCluster(), loaded.Policies, []LocalPod{{Key: a, Ifindex: ifindex, HostIfname: ifname}}); err != nil {
		b.Fatal(err)
	}
	frame := datapathtest.SYN(b, netip.MustParseAddrPort("10.0.0.2:41002"), netip.MustParseAddrPort("10.0.0.1:9999"))
	p := datapathtest.NewProducer(b, d, pin, ifindex, frame)
	if err := p.SetEventRate(0); err != nil {
		b.Fatal(err)
	}
	// What the pipeline makes of the event: checked once, so that the benchmark times the case
	// it claims to (both pods named, the policies that made default deny).
	ev := datapath.Flow{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"),
		Proto: policy.ProtoTCP, SrcPort: 41002, DstPort: 9999, Direction: policy.Ingress, Reason: datapath.ReasonDropDefaultDeny}
	if id, ok := e.State().Identity(policy.EndpointKey{Namespace: "app", Name: "b"}); ok {
		ev.SrcIdentity = id.ID
	}
	if fl := e.HubbleFlows(ev, "node-1"); len(fl) != 2 || fl[0].Source.PodName != "b" || fl[0].Destination.PodName != "a" ||
		len(fl[0].IngressDeniedBy) != 2 {
		b.Fatalf("the event's flows are not a policy verdict and a drop from pod b to a naming two policies: %+v", fl)
	}

	ring := observe.NewRing(0)
	m, err := metrics.New(benchSource{d, e}, metrics.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	bm := &benchMetrics{e: e, m: m}
	sink := datapathtest.NewSink(4096)
	var flows atomic.Uint64 // Hubble flows added to the ring
	// start opens a reader on the events: the raw one, or the node's hub with its consumers in
	// the node's order (the ring, then the metrics). Only one reads at a time: two readers of
	// one ring buffer would share its events.
	start := func(pipeline bool) (datapathtest.Reader, func() error, error) {
		fr, err := d.Flows()
		if err != nil {
			return nil, nil, err
		}
		if !pipeline {
			rd := datapathtest.NewRawReader(fr, sink.Consume)
			return rd, rd.Close, nil
		}
		h := newFlowHub(fr)
		h.Subscribe(func(f datapath.Flow) {
			for _, fl := range e.HubbleFlows(f, "node-1") {
				ring.Add(&observe.GetFlowsResponse{Flow: fl, NodeName: "node-1", Time: fl.Time})
				flows.Add(1)
			}
		})
		h.Subscribe(bm.observe)
		hr := &hubReader{h: h}
		h.Subscribe(hr.count)
		return hr, h.close, nil
	}

	const dur = time.Second
	type config struct {
		name string
		rate float64 // offered events per second, 0: flat out
	}
	configs := []config{{"10k", 10000}, {"50k", 50000}, {"200k", 200000}, {"flat-out", 0}}
	type series struct{ offered, readRate, ringLost, readerLost, cpuPer1k []float64 }
	type sample struct {
		raw, node           series
		prodPer1k           []float64
		rateRatio, cpuRatio []float64
	}
	samples := make([]sample, len(configs))
	rounds := max(5, b.N)
	for round := 0; round < rounds; round++ {
		for i, cfg := range configs {
			prodPerRun, err := p.ProducerCost(cfg.rate, dur)
			if err != nil {
				b.Fatalf("%s: %v", cfg.name, err)
			}
			if err := p.SetEventRate(0); err != nil {
				b.Fatal(err)
			}
			var runs [2]datapathtest.Run
			// Alternate which goes first, so that neither always follows the producer-alone run.
			for _, pipeline := range [][2]bool{{false, true}, {true, false}}[round%2] {
				rd, stop, err := start(pipeline)
				if err != nil {
					b.Fatal(err)
				}
				r, err := p.Measure(cfg.rate, dur, rd)
				if cerr := stop(); err == nil && cerr != nil {
					err = fmt.Errorf("close the reader: %w", cerr)
				}
				if err != nil {
					b.Fatalf("%s (pipeline %v): %v", cfg.name, pipeline, err)
				}
				runs[btoi(pipeline)] = r
			}
			s := &samples[i]
			s.prodPer1k = append(s.prodPer1k, prodPerRun.Seconds()*1e6)
			for j, ser := range []*series{&s.raw, &s.node} {
				r := runs[j]
				ser.offered = append(ser.offered, float64(r.Made)/dur.Seconds())
				ser.readRate = append(ser.readRate, r.ReadRate())
				ser.ringLost = append(ser.ringLost, float64(r.Lost))
				ser.readerLost = append(ser.readerLost, float64(r.ReaderLost))
				ser.cpuPer1k = append(ser.cpuPer1k, r.CPUPer1k(prodPerRun))
			}
			s.rateRatio = append(s.rateRatio, runs[1].ReadRate()/runs[0].ReadRate())
			s.cpuRatio = append(s.cpuRatio, runs[1].CPUPer1k(prodPerRun)/runs[0].CPUPer1k(prodPerRun))
		}
	}
	if sink.N == 0 || flows.Load() == 0 || ring.Len() == 0 {
		b.Fatalf("a consumer got nothing: raw %d events, %d Hubble flows, ring %d", sink.N, flows.Load(), ring.Len())
	}
	fmt.Printf("BenchmarkNodeFlowEvents: %d rounds of %s per rate and reader, %d Hubble flows; min / median / max\n",
		rounds, dur, flows.Load())
	for i, cfg := range configs {
		s := samples[i]
		for _, m := range []struct {
			name string
			xs   []float64
		}{
			{"raw offered-events/s", s.raw.offered}, {"raw read-events/s", s.raw.readRate},
			{"raw lost ring-full", s.raw.ringLost}, {"raw lost reader", s.raw.readerLost},
			{"raw event-cpu-ms/1k", s.raw.cpuPer1k},
			{"node offered-events/s", s.node.offered}, {"node read-events/s", s.node.readRate},
			{"node lost ring-full", s.node.ringLost}, {"node lost reader", s.node.readerLost},
			{"node event-cpu-ms/1k", s.node.cpuPer1k},
			{"producer-cpu-ms/1k-runs", s.prodPer1k},
			{"node/raw events/s", s.rateRatio}, {"node/raw cpu/event", s.cpuRatio},
		} {
			fmt.Printf("  %-9s %-24s %s\n", cfg.name, m.name, testenv.Spread(m.xs))
		}
		b.Run(cfg.name, func(b *testing.B) {
			b.ReportMetric(testenv.Median(s.node.offered), "offered-events/s")
			b.ReportMetric(testenv.Median(s.node.readRate), "events/s")
			b.ReportMetric(testenv.Median(s.node.ringLost), "lost-ring-full")
			b.ReportMetric(testenv.Median(s.node.readerLost), "lost-reader")
			b.ReportMetric(testenv.Median(s.node.cpuPer1k), "cpu-ms/1k-events")
			b.ReportMetric(testenv.Median(s.raw.readRate), "raw-events/s")
			b.ReportMetric(testenv.Median(s.raw.cpuPer1k), "raw-cpu-ms/1k-events")
			b.ReportMetric(testenv.Median(s.rateRatio), "x-raw-events/s")
			b.ReportMetric(testenv.Median(s.cpuRatio), "x-raw-cpu/event")
		})
	}
}

func btoi(v bool) int {
	if v {
		return 1
	}
	return 0
}
