package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/policy"
)

// fakeSource is a node's scrape-time state; err makes Counters fail.
type fakeSource struct {
	mu  sync.Mutex
	err error
}

func (f *fakeSource) Counters() (map[datapath.Reason]datapath.Counter, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return map[datapath.Reason]datapath.Counter{
		datapath.ReasonForwardPolicy:   {Packets: 10, Bytes: 1000},
		datapath.ReasonForwardReply:    {Packets: 5, Bytes: 500},
		datapath.ReasonDropDefaultDeny: {Packets: 3, Bytes: 300},
		datapath.ReasonDropDeny:        {Packets: 2, Bytes: 200},
		datapath.ReasonDropProxyDown:   {Packets: 1, Bytes: 100},
	}, nil
}

func (f *fakeSource) EventsLimited() (map[string]uint64, error) {
	return map[string]uint64{"ns/flooder": 7, "(none)": 1}, nil
}

func (f *fakeSource) EventsLost() (map[int]uint64, error) { return map[int]uint64{0: 2, 3: 4}, nil }

func (f *fakeSource) Fill() (map[string]datapath.MapFill, error) {
	return map[string]datapath.MapFill{"conntrack": {Entries: 64, Max: 256}, "policy": {Entries: 3, Max: 16384}}, nil
}

func (f *fakeSource) DriftRepairs() uint64 { return 2 }

func (f *fakeSource) Sync() SyncInfo {
	return SyncInfo{LastDuration: 1500 * time.Millisecond, Syncs: 9, Policies: 4, PoliciesRefused: 1, Endpoints: 6,
		EndpointsFailed: 1}
}

func newMetrics(t testing.TB, src Source, opts Options) *Metrics {
	t.Helper()
	m, err := New(src, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// scrape GETs the handler and parses its text exposition.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}
	return mfs
}

// documented is a metric of docs/metrics.md's table.
type documented struct {
	name, typ string
	labels    []string
}

var backticked = regexp.MustCompile("`([^`]+)`")

// docMetrics reads the table of docs/metrics.md: a row's first column is the metric, the second
// its type, the third its labels.
func docMetrics(t *testing.T) []documented {
	t.Helper()
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []documented
	for line := range strings.SplitSeq(string(b), "\n") {
		cols := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| `") || len(cols) < 5 {
			continue
		}
		d := documented{name: strings.Trim(strings.TrimSpace(cols[1]), "`"), typ: strings.TrimSpace(cols[2])}
		for _, m := range backticked.FindAllStringSubmatch(cols[3], -1) {
			d.labels = append(d.labels, m[1])
		}
		out = append(out, d)
	}
	if len(out) < 20 {
		t.Fatalf("docs/metrics.md lists %d metrics: is its table still there?", len(out))
	}
	return out
}

// observeAll feeds a sample of every kind, so that every flow metric has series.
func observeAll(m *Metrics) {
	pol := []string{"CiliumNetworkPolicy ns/allow-web"}
	m.ObserveFlow(FlowSample{Type: TypePolicyVerdict, Verdict: VerdictForwarded, Reason: datapath.ReasonForwardPolicy.String(),
		Protocol: "TCP", Direction: DirectionIngress, Match: "l3-l4", PolicyVerdict: true, Policies: pol, SourceRepo: "flux/policies"})
	m.ObserveFlow(FlowSample{Type: TypeDrop, Verdict: VerdictDropped, DropReason: "POLICY_DENIED",
		Reason: datapath.ReasonDropDefaultDeny.String(), Protocol: "UDP", Direction: DirectionEgress, Match: "none", PolicyVerdict: true})
	m.ObserveFlow(FlowSample{Type: TypeL7, Subtype: "HTTP", Verdict: VerdictDropped, DropReason: "POLICY_DENIED", Reason: ReasonL7Dropped,
		Protocol: "HTTP", Direction: DirectionEgress, Match: "l7/http", PolicyVerdict: true, Policies: pol,
		HTTP: &HTTPSample{Method: "GET", Protocol: "HTTP/1.1", Status: 403, Latency: time.Millisecond}})
	m.ObserveFlow(FlowSample{Type: TypeL7, Subtype: "DNS", Verdict: VerdictForwarded, Reason: ReasonL7Forwarded, Protocol: "DNS",
		Direction: DirectionEgress, Match: "l7/dns", PolicyVerdict: true, Policies: pol, DNS: &DNSSample{RCode: "NOERROR", QType: "A", IPs: 2}})
	m.ObserveProxyRequest("http", "denied")
	m.ObserveLost("observer_events_queue", 3)
}

// TestDocumentedMetrics: every metric docs/metrics.md lists is in a scrape, of its type and with
// exactly its labels, and the scrape has no metric the document does not list.
func TestDocumentedMetrics(t *testing.T) {
	m := newMetrics(t, &fakeSource{}, Options{})
	observeAll(m)
	mfs := scrape(t, m)
	listed := map[string]bool{}
	for _, d := range docMetrics(t) {
		listed[d.name] = true
		mf, ok := mfs[d.name]
		if !ok {
			t.Errorf("%s: documented, not in the scrape", d.name)
			continue
		}
		if got := strings.ToLower(mf.GetType().String()); got != d.typ {
			t.Errorf("%s: type %s, documented %s", d.name, got, d.typ)
		}
		want := slices.Sorted(slices.Values(d.labels))
		for _, s := range mf.GetMetric() {
			var got []string
			for _, l := range s.GetLabel() {
				got = append(got, l.GetName())
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: labels %v, documented %v", d.name, got, want)
				break
			}
		}
	}
	for name := range mfs {
		// The Go and process collectors' metrics are documented by the two the old exposition had.
		if !listed[name] && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("%s: in the scrape, not in docs/metrics.md", name)
		}
	}
}

// value is the value of the series of name with the given labels (a counter's, a gauge's or a
// histogram's count), and whether it exists.
func value(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	for _, s := range mfs[name].GetMetric() {
		if len(s.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range s.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case s.Counter != nil:
			return s.Counter.GetValue(), true
		case s.Gauge != nil:
			return s.Gauge.GetValue(), true
		case s.Histogram != nil:
			return float64(s.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// TestValues: the series after a few flows, and those the Source gives.
func TestValues(t *testing.T) {
	m := newMetrics(t, &fakeSource{}, Options{})
	observeAll(m)
	observeAll(m)
	mfs := scrape(t, m)
	pol := "CiliumNetworkPolicy ns/allow-web"
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"hubble_flows_processed_total", map[string]string{"protocol": "TCP", "type": "PolicyVerdict", "subtype": "", "verdict": "FORWARDED"}, 2},
		{"hubble_flows_processed_total", map[string]string{"protocol": "HTTP", "type": "L7", "subtype": "HTTP", "verdict": "DROPPED"}, 2},
		{"hubble_drop_total", map[string]string{"reason": "POLICY_DENIED", "protocol": "UDP"}, 2},
		{"hubble_drop_total", map[string]string{"reason": "POLICY_DENIED", "protocol": "HTTP"}, 2},
		{"hubble_policy_verdicts_total", map[string]string{"direction": "ingress", "match": "l3-l4", "action": "forwarded"}, 2},
		{"hubble_policy_verdicts_total", map[string]string{"direction": "egress", "match": "none", "action": "dropped"}, 2},
		{"hubble_policy_verdicts_total", map[string]string{"direction": "egress", "match": "l7/http", "action": "dropped"}, 2},
		{"hubble_http_requests_total", map[string]string{"method": "GET", "protocol": "HTTP/1.1", "status": "403", "reporter": "client"}, 2},
		{"hubble_http_request_duration_seconds", map[string]string{"method": "GET", "reporter": "client"}, 2},
		{"hubble_dns_queries_total", map[string]string{"rcode": "", "qtypes": "A", "ips_returned": "0"}, 2},
		{"hubble_dns_responses_total", map[string]string{"rcode": "No Error", "qtypes": "A", "ips_returned": "2"}, 2},
		{"netpact_policy_verdicts_total", map[string]string{"direction": "ingress", "match": "l3-l4", "action": "forwarded",
			"policy": pol, "source_repo": "flux/policies"}, 2},
		{"netpact_policy_verdicts_total", map[string]string{"direction": "egress", "match": "none", "action": "dropped",
			"policy": PolicyNone, "source_repo": ""}, 2},
		{"netpact_flow_events_total", map[string]string{"direction": "egress", "reason": "dropped: default deny, no rule"}, 2},
		{"netpact_proxy_requests_total", map[string]string{"proxy": "http", "verdict": "denied"}, 2},
		{"netpact_proxy_requests_total", map[string]string{"proxy": "dns", "verdict": "forwarded"}, 0},
		{"hubble_lost_events_total", map[string]string{"source": "observer_events_queue"}, 6},
		{"hubble_lost_events_total", map[string]string{"source": "perf_event_ring_buffer"}, 6},
		{"netpact_flow_events_lost_total", map[string]string{"cpu": "3"}, 4},
		{"netpact_flow_events_limited_total", map[string]string{"pod": "ns/flooder"}, 7},
		{"cilium_drop_count_total", map[string]string{"reason": "Policy denied", "direction": "UNKNOWN"}, 3},
		{"cilium_drop_count_total", map[string]string{"reason": "Policy denied by denylist", "direction": "UNKNOWN"}, 2},
		{"cilium_drop_bytes_total", map[string]string{"reason": "an L7 rule applies and the L7 proxy's listener is not up",
			"direction": "UNKNOWN"}, 100},
		{"cilium_forward_count_total", map[string]string{"direction": "UNKNOWN"}, 15},
		{"cilium_forward_bytes_total", map[string]string{"direction": "UNKNOWN"}, 1500},
		{"netpact_datapath_packets_total", map[string]string{"reason": "dropped: denied by rule", "verdict": "drop"}, 2},
		{"cilium_bpf_map_pressure", map[string]string{"map_name": "conntrack"}, 0.25},
		{"netpact_map_capacity", map[string]string{"map": "policy"}, 16384},
		{"netpact_datapath_drift_repaired_entries_total", nil, 2},
		{"netpact_sync_duration_seconds", nil, 1.5},
		{"netpact_syncs_total", nil, 9},
		{"netpact_policies", map[string]string{"refused": "false"}, 3},
		{"netpact_endpoints", map[string]string{"state": "failed"}, 1},
	} {
		got, ok := value(mfs, c.name, c.labels)
		if !ok {
			t.Errorf("%s%v: no such series", c.name, c.labels)
			continue
		}
		if got != c.want {
			t.Errorf("%s%v = %g, want %g", c.name, c.labels, got, c.want)
		}
	}
}

// TestTopPolicies: with N+5 policies, N have their own series and the rest count under
// "(other)"; a policy that overtakes one of the top N takes its place at the next scrape; every
// series only grows.
func TestTopPolicies(t *testing.T) {
	for _, top := range []int{3, DefaultTopPolicies} {
		t.Run(fmt.Sprint(top), func(t *testing.T) {
			m := newMetrics(t, &fakeSource{}, Options{TopPolicies: top})
			names := make([]string, top+5)
			for i := range names {
				names[i] = fmt.Sprintf("CiliumNetworkPolicy ns/p%03d", i)
			}
			verdict := func(name string, n int) {
				pol := []string{name}
				for range n {
					m.ObserveFlow(FlowSample{Type: TypePolicyVerdict, Verdict: VerdictForwarded, Protocol: "TCP",
						Direction: DirectionIngress, Match: "l3-l4", PolicyVerdict: true, Policies: pol})
				}
			}
			for _, n := range names {
				verdict(n, 1)
			}
			series := func() map[string]float64 {
				out := map[string]float64{}
				for _, s := range scrape(t, m)["netpact_policy_verdicts_total"].GetMetric() {
					for _, l := range s.GetLabel() {
						if l.GetName() == "policy" {
							out[l.GetValue()] += s.GetCounter().GetValue()
						}
					}
				}
				return out
			}
			first := series()
			if len(first) != top+1 || first[PolicyOther] != 5 {
				t.Fatalf("%d policies: %d series, (other) %g; want %d and 5", len(names), len(first), first[PolicyOther], top+1)
			}
			for _, n := range names[:top] {
				if first[n] != 1 {
					t.Errorf("%s: %g, want its own series at 1", n, first[n])
				}
			}
			// The last five overtake all but the first top-5 (or, for a top under 5, all).
			for _, n := range names[top:] {
				verdict(n, 3)
			}
			second := series()
			if len(second) > top+1 {
				t.Errorf("%d series over a top of %d", len(second), top)
			}
			for n, v := range second {
				if v < first[n] {
					t.Errorf("%s went from %g down to %g", n, first[n], v)
				}
			}
			// The ranking of that scrape gave them places of their own: their next verdicts count
			// there, from 0, and those they took the places of count under (other).
			for _, n := range names {
				verdict(n, 1)
			}
			third := series()
			if len(third) != top+1 {
				t.Errorf("%d series, want %d", len(third), top+1)
			}
			for _, n := range names[top:][:min(5, top)] {
				if third[n] != 1 {
					t.Errorf("%s overtook the top: %g in its own series, want 1", n, third[n])
				}
			}
			if want := second[PolicyOther] + 5; third[PolicyOther] != want {
				t.Errorf("(other) = %g, want %g", third[PolicyOther], want)
			}
		})
	}
}

// errSource fails to read the counters, as a datapath whose map is gone.
var errSource = errors.New("map gone")

// TestSourceError: a Source method that fails costs its metrics, not the scrape.
func TestSourceError(t *testing.T) {
	m := newMetrics(t, &fakeSource{err: errSource}, Options{Log: slog.New(slog.DiscardHandler)})
	mfs := scrape(t, m)
	if _, ok := mfs["netpact_datapath_packets_total"]; ok {
		t.Error("the counters are served although reading them failed")
	}
	if _, ok := value(mfs, "netpact_syncs_total", nil); !ok {
		t.Error("the rest of the scrape is missing")
	}
}

// TestSampleOf: a datapath flow event's sample.
func TestSampleOf(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for _, c := range []struct {
		f    datapath.Flow
		want FlowSample
	}{
		{datapath.Flow{Direction: policy.Ingress, Reason: datapath.ReasonDropDefaultDeny, Proto: policy.ProtoTCP, Src: src, Dst: dst},
			FlowSample{Type: TypeDrop, Verdict: VerdictDropped, DropReason: "POLICY_DENIED", Reason: "dropped: default deny, no rule",
				Protocol: "TCP", Direction: DirectionIngress, Match: "none", PolicyVerdict: true}},
		{datapath.Flow{Direction: policy.Egress, Reason: datapath.ReasonForwardPolicy, Proto: policy.ProtoUDP, Rule: 7},
			FlowSample{Type: TypePolicyVerdict, Verdict: VerdictForwarded, Reason: "forwarded: allowed by policy", Protocol: "UDP",
				Direction: DirectionEgress, PolicyVerdict: true}},
		{datapath.Flow{Direction: policy.Egress, Reason: datapath.ReasonForwardProxy, Proto: policy.ProtoTCP, Rule: 7},
			FlowSample{Type: TypePolicyVerdict, Verdict: VerdictRedirected, Reason: "forwarded: to the L7 proxy", Protocol: "TCP",
				Direction: DirectionEgress, PolicyVerdict: true}},
		{datapath.Flow{Direction: policy.Ingress, Reason: datapath.ReasonForwardReply, Proto: policy.ProtoICMP},
			FlowSample{Type: TypeTrace, Subtype: "to-endpoint", Verdict: VerdictForwarded, Reason: "forwarded: reply", Protocol: "ICMPv4",
				Direction: DirectionIngress}},
		{datapath.Flow{Direction: policy.Egress, Reason: datapath.ReasonDropSpoof, Proto: policy.ProtoICMPv6},
			FlowSample{Type: TypeDrop, Verdict: VerdictDropped, DropReason: "INVALID_SOURCE_IP", Reason: "dropped: spoofed source",
				Protocol: "ICMPv6", Direction: DirectionEgress}},
		{datapath.Flow{Direction: policy.Egress, Reason: datapath.ReasonForwardProxy, L7: &datapath.L7Flow{Protocol: "HTTP/1.1",
			Method: "GET", Status: 403, Denied: true, Latency: time.Second}},
			FlowSample{Type: TypeL7, Subtype: "HTTP", Verdict: VerdictDropped, DropReason: "POLICY_DENIED", Reason: ReasonL7Dropped,
				Protocol: "HTTP", Direction: DirectionEgress, Match: "l7/http", PolicyVerdict: true,
				HTTP: &HTTPSample{Method: "GET", Protocol: "HTTP/1.1", Status: 403, Latency: time.Second}}},
		{datapath.Flow{Direction: policy.Egress, Reason: datapath.ReasonForwardProxy, L7: &datapath.L7Flow{Protocol: "DNS",
			DNS: &datapath.DNSFlow{Query: "a.example.", Type: "A", RCode: "NOERROR", IPs: []netip.Addr{src}}}},
			FlowSample{Type: TypeL7, Subtype: "DNS", Verdict: VerdictForwarded, Reason: ReasonL7Forwarded, Protocol: "DNS",
				Direction: DirectionEgress, Match: "l7/dns", PolicyVerdict: true, DNS: &DNSSample{RCode: "NOERROR", QType: "A", IPs: 1}}},
	} {
		got := SampleOf(c.f)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %+v %+v %+v\nwant %+v %+v %+v", c.f, got, got.HTTP, got.DNS, c.want, c.want.HTTP, c.want.DNS)
		}
	}
}

// TestInvalidLabel: a label value that is not UTF-8 is repaired, not a panic.
func TestInvalidLabel(t *testing.T) {
	m := newMetrics(t, &fakeSource{}, Options{})
	m.ObserveFlow(FlowSample{Type: TypeL7, Subtype: "HTTP", Verdict: VerdictForwarded, Protocol: "HTTP", Direction: DirectionIngress,
		HTTP: &HTTPSample{Method: "G\xffT", Protocol: "HTTP/1.1", Status: 200}})
	if _, ok := value(scrape(t, m), "hubble_http_requests_total",
		map[string]string{"method": "G\uFFFDT", "protocol": "HTTP/1.1", "status": "200", "reporter": "server"}); !ok {
		t.Error("the request with a repaired method is not counted")
	}
}

// benchSamples are a mix of the flows a node sees: allowed, default-denied, L7.
func benchSamples() []FlowSample {
	pol := []string{"CiliumNetworkPolicy ns/allow-web"}
	return []FlowSample{
		{Type: TypePolicyVerdict, Verdict: VerdictForwarded, Reason: "forwarded: allowed by policy", Protocol: "TCP",
			Direction: DirectionIngress, Match: "l3-l4", PolicyVerdict: true, Policies: pol, SourceRepo: "flux/policies"},
		{Type: TypeDrop, Verdict: VerdictDropped, DropReason: "POLICY_DENIED", Reason: "dropped: default deny, no rule", Protocol: "UDP",
			Direction: DirectionEgress, Match: "none", PolicyVerdict: true},
		{Type: TypeTrace, Subtype: "to-endpoint", Verdict: VerdictForwarded, Reason: "forwarded: reply", Protocol: "TCP",
			Direction: DirectionIngress},
		{Type: TypeL7, Subtype: "HTTP", Verdict: VerdictForwarded, Reason: ReasonL7Forwarded, Protocol: "HTTP", Direction: DirectionEgress,
			Match: "l7/http", PolicyVerdict: true, Policies: pol, HTTP: &HTTPSample{Method: "GET", Protocol: "HTTP/1.1", Status: 200,
				Latency: time.Millisecond}},
	}
}

// TestObserveFlowAllocs: once its series exist, ObserveFlow allocates nothing.
func TestObserveFlowAllocs(t *testing.T) {
	m := newMetrics(t, &fakeSource{}, Options{})
	samples := benchSamples()
	for _, s := range samples {
		m.ObserveFlow(s)
	}
	if n := testing.AllocsPerRun(1000, func() {
		for _, s := range samples {
			m.ObserveFlow(s)
		}
	}); n != 0 {
		t.Errorf("ObserveFlow allocates %g times per %d samples", n, len(samples))
	}
}

func BenchmarkObserveFlow(b *testing.B) {
	m := newMetrics(b, &fakeSource{}, Options{})
	samples := benchSamples()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.ObserveFlow(samples[i%len(samples)])
	}
}

// TestConcurrentScrape: flows are counted while scrapes rank the policies (run with -race).
func TestConcurrentScrape(t *testing.T) {
	m := newMetrics(t, &fakeSource{}, Options{TopPolicies: 2})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 2000 {
			m.ObserveFlow(FlowSample{Type: TypePolicyVerdict, Verdict: VerdictForwarded, Protocol: "TCP", Direction: DirectionIngress,
				PolicyVerdict: true, Policies: []string{fmt.Sprintf("CiliumNetworkPolicy ns/p%d", i%7)}})
		}
	})
	for range 5 {
		scrape(t, m)
	}
	wg.Wait()
}
