package kubenode

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/datapath"
)

// FlowRecord is a flow event as the enforcer serves it: pods by name, the deciding rule by
// name and, when known, its source file:line; never a numeric identity (they are node-local).
type FlowRecord struct {
	Time      time.Time `json:"time"`
	Direction string    `json:"direction"`
	Proto     string    `json:"proto"`
	Src       string    `json:"src"`
	SrcPod    string    `json:"srcPod,omitempty"`
	SrcPort   uint16    `json:"srcPort"`
	Dst       string    `json:"dst"`
	DstPod    string    `json:"dstPod,omitempty"`
	DstPort   uint16    `json:"dstPort"`
	// Service is the Service frontend the source pod's socket asked for, when the datapath
	// translated it to this backend (Dst): "namespace/name 10.96.0.10:53/UDP".
	Service string `json:"service,omitempty"`
	Verdict string `json:"verdict"`
	Reason  string `json:"reason"`
	Rule    string `json:"rule,omitempty"`
	Source  string `json:"source,omitempty"`
	// L7 is set on a request the L7 proxy judged (Hubble's l7.http).
	L7 *L7Record `json:"l7,omitempty"`
}

// L7Record is an L7 event's request: Hubble's flow type L7, l7.type REQUEST, l7.http.
type L7Record struct {
	Type      string `json:"type"` // http-request, dns
	Protocol  string `json:"protocol"`
	Method    string `json:"method"`
	URL       string `json:"url"`
	Code      int    `json:"code"`
	HTTPRule  int    `json:"httpRule"` // index of the HTTP rule that allowed it (-1: none)
	Why       string `json:"why,omitempty"`
	LatencyNS int64  `json:"latencyNs"`
	// HeaderActions are the headerMatches mismatch actions applied ("LOG X-Token").
	HeaderActions []string `json:"headerActions,omitempty"`
	// A DNS query (type dns): its name and type, the rcode the pod got ("" when none), the
	// answer's addresses and TTL in seconds; httpRule is then the index of the DNS rule.
	Query  string   `json:"query,omitempty"`
	QType  string   `json:"qtype,omitempty"`
	RCode  string   `json:"rcode,omitempty"`
	IPs    []string `json:"ips,omitempty"`
	TTLSec uint32   `json:"ttl,omitempty"`
}

// flowLogSize is how many flow events the enforcer keeps for /flows.
const flowLogSize = 20000

// Observer reads the datapath's flow events and serves them (/flows) with the node's metrics
// (/metrics, Prometheus text format).
type Observer struct {
	dp  *datapath.Datapath
	enf *enforcer.Enforcer
	e   *Enforcement

	mu     sync.Mutex
	ring   []FlowRecord
	next   int
	events map[[2]string]uint64 // direction, reason -> flow events
}

// NewObserver returns an observer; Run reads the flow events.
func NewObserver(dp *datapath.Datapath, enf *enforcer.Enforcer, e *Enforcement) *Observer {
	return &Observer{dp: dp, enf: enf, e: e, events: map[[2]string]uint64{}}
}

// Add keeps a flow event (the node's FlowHub hands each on).
func (o *Observer) Add(f datapath.Flow) {
	rec := o.record(f)
	o.mu.Lock()
	if len(o.ring) < flowLogSize {
		o.ring = append(o.ring, rec)
	} else {
		o.ring[o.next] = rec
	}
	o.next = (o.next + 1) % flowLogSize
	o.events[[2]string{rec.Direction, rec.Reason}]++
	o.mu.Unlock()
}

func (o *Observer) record(f datapath.Flow) FlowRecord {
	rec := FlowRecord{Time: time.Now(), Direction: f.Direction.String(), Proto: f.Proto.String(), Src: f.Src.String(),
		SrcPort: f.SrcPort, Dst: f.Dst.String(), DstPort: f.DstPort, Reason: f.Reason.String(), Verdict: "forwarded"}
	if f.Dropped() {
		rec.Verdict = "dropped"
	}
	if f.L7 != nil {
		rec.Reason = "L7 " + rec.Verdict
		rec.L7 = &L7Record{Type: "http-request", Protocol: f.L7.Protocol, Method: f.L7.Method, URL: "http://" + f.L7.Host + f.L7.Path,
			Code: f.L7.Status, HTTPRule: f.L7.HTTPRule, Why: f.L7.Why, LatencyNS: f.L7.Latency.Nanoseconds(),
			HeaderActions: f.L7.HeaderActions}
		if d := f.L7.DNS; d != nil {
			rec.L7 = &L7Record{Type: "dns", Protocol: "DNS", HTTPRule: f.L7.HTTPRule, Why: f.L7.Why, LatencyNS: f.L7.Latency.Nanoseconds(),
				Query: d.Query, QType: d.Type, RCode: d.RCode, TTLSec: uint32(d.TTL.Seconds())}
			for _, ip := range d.IPs {
				rec.L7.IPs = append(rec.L7.IPs, ip.String())
			}
		}
	}
	if f.Service != 0 {
		rec.Service = o.dp.ServiceName(f.Service)
	}
	if n := o.enf.Resolve(f.Src); n != f.Src.String() {
		rec.SrcPod = n
	}
	if n := o.enf.Resolve(f.Dst); n != f.Dst.String() {
		rec.DstPod = n
	}
	if st := o.enf.State(); st != nil && f.Rule != 0 {
		if ri := st.Rule(f.Rule); ri != nil {
			rec.Rule = ri.String()
			// A policy read from the API server has no file of its own (the reconciler's
			// annotation will carry the Git file:line).
			if ri.Source.File != "" && ri.Source.File != ri.Policy.String() {
				rec.Source = ri.Source.String()
			}
		}
	}
	return rec
}

// Flows are the kept flow events, oldest first, between src and dst when they are valid
// addresses (either way round), since the given time, at most limit.
func (o *Observer) Flows(src, dst netip.Addr, since time.Time, limit int) []FlowRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []FlowRecord
	n := len(o.ring)
	for i := 0; i < n; i++ {
		r := o.ring[(o.next+i)%n]
		if len(o.ring) < flowLogSize {
			r = o.ring[i]
		}
		if r.Time.Before(since) {
			continue
		}
		if src.IsValid() && dst.IsValid() && !(r.Src == src.String() && r.Dst == dst.String()) &&
			!(r.Src == dst.String() && r.Dst == src.String()) {
			continue
		}
		out = append(out, r)
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}

// Handler serves /flows (?src=&dst=&since=RFC3339&limit=) and /metrics.
func (o *Observer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/flows", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		src, _ := netip.ParseAddr(q.Get("src"))
		dst, _ := netip.ParseAddr(q.Get("dst"))
		var since time.Time
		if s := q.Get("since"); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				http.Error(w, "since: want RFC 3339", http.StatusBadRequest)
				return
			}
			since = t
		}
		limit, _ := strconv.Atoi(q.Get("limit"))
		if limit <= 0 || limit > flowLogSize {
			limit = 1000
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(o.Flows(src, dst, since, limit))
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		o.writeMetrics(w)
	})
	return mux
}

func (o *Observer) writeMetrics(w io.Writer) {
	o.writeDatapathMetrics(w)
	o.writeFlowEventMetrics(w)
	o.writeMapMetrics(w)
	header(w, "netpact_datapath_drift_repaired_entries_total", "counter", "Datapath map entries found changed behind the enforcer's back and repaired.")
	fmt.Fprintf(w, "netpact_datapath_drift_repaired_entries_total %d\n", o.enf.DriftRepairs())
	writeMemoryMetrics(w)
	o.writeSyncMetrics(w)
}

// header is a metric's HELP and TYPE lines.
func header(w io.Writer, name, kind, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

func (o *Observer) writeDatapathMetrics(w io.Writer) {
	counters, err := o.dp.Counters()
	if err != nil {
		return
	}
	reasons := make([]datapath.Reason, 0, len(counters))
	for r := range counters {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool { return reasons[i] < reasons[j] })
	header(w, "netpact_datapath_packets_total", "counter", "Packets the datapath forwarded or dropped, by reason.")
	for _, r := range reasons {
		fmt.Fprintf(w, "netpact_datapath_packets_total{reason=%q,verdict=%q} %d\n", r.String(), verdict(r), counters[r].Packets)
	}
	header(w, "netpact_datapath_bytes_total", "counter", "Bytes the datapath forwarded or dropped, by reason.")
	for _, r := range reasons {
		fmt.Fprintf(w, "netpact_datapath_bytes_total{reason=%q,verdict=%q} %d\n", r.String(), verdict(r), counters[r].Bytes)
	}
}

// writeFlowEventMetrics counts the flow events read, and those the rate limit held back.
func (o *Observer) writeFlowEventMetrics(w io.Writer) {
	o.mu.Lock()
	keys := make([][2]string, 0, len(o.events))
	for k := range o.events {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	header(w, "netpact_flow_events_total", "counter", "Flow events read from the datapath, by direction and reason (rate-limited per pod and CPU).")
	for _, k := range keys {
		fmt.Fprintf(w, "netpact_flow_events_total{direction=%q,reason=%q} %d\n", k[0], k[1], o.events[k])
	}
	o.mu.Unlock()
	limited, err := o.dp.EventsLimited()
	if err != nil {
		return
	}
	byPod := map[string]uint64{}
	for id, n := range limited {
		name := "(none)" // packets of no endpoint, or of a pod gone since
		if k, ok := o.enf.EndpointOf(id); ok && id != 0 {
			name = k.String()
		}
		byPod[name] += n
	}
	header(w, "netpact_flow_events_limited_total", "counter", "Flow events the rate limit held back, by pod (each has its own bucket per CPU).")
	for _, n := range slices.Sorted(maps.Keys(byPod)) {
		fmt.Fprintf(w, "netpact_flow_events_limited_total{pod=%q} %d\n", n, byPod[n])
	}
}

func (o *Observer) writeMapMetrics(w io.Writer) {
	fill, err := o.dp.Fill()
	if err != nil {
		return
	}
	names := slices.Sorted(maps.Keys(fill))
	header(w, "netpact_map_entries", "gauge", "Entries in a datapath map.")
	for _, n := range names {
		fmt.Fprintf(w, "netpact_map_entries{map=%q} %d\n", n, fill[n].Entries)
	}
	header(w, "netpact_map_capacity", "gauge", "Entries a datapath map holds at most.")
	for _, n := range names {
		fmt.Fprintf(w, "netpact_map_capacity{map=%q} %d\n", n, fill[n].Max)
	}
}

func writeMemoryMetrics(w io.Writer) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	header(w, "go_memstats_heap_inuse_bytes", "gauge", "Bytes of the Go heap in use.")
	fmt.Fprintf(w, "go_memstats_heap_inuse_bytes %d\n", ms.HeapInuse)
	if rss, ok := residentBytes(); ok {
		header(w, "process_resident_memory_bytes", "gauge", "Resident memory of the enforcer.")
		fmt.Fprintf(w, "process_resident_memory_bytes %d\n", rss)
	}
}

func (o *Observer) writeSyncMetrics(w io.Writer) {
	st := o.e.Status()
	dur, _ := time.ParseDuration(st.SyncDuration)
	header(w, "netpact_sync_duration_seconds", "gauge", "How long the last sync took.")
	fmt.Fprintf(w, "netpact_sync_duration_seconds %g\n", dur.Seconds())
	header(w, "netpact_syncs_total", "counter", "Syncs of the node's datapath with the cluster.")
	fmt.Fprintf(w, "netpact_syncs_total %d\n", o.e.Syncs())
	header(w, "netpact_policies", "gauge", "Policy objects the enforcer holds, by whether it refused them.")
	refused := 0
	for _, p := range st.Policies {
		if p.Error != "" {
			refused++
		}
	}
	fmt.Fprintf(w, "netpact_policies{refused=\"false\"} %d\nnetpact_policies{refused=\"true\"} %d\n", st.PolicyCount-refused, refused)
	header(w, "netpact_endpoints", "gauge", "The node's pods, programmed or failed closed.")
	fmt.Fprintf(w, "netpact_endpoints{state=\"programmed\"} %d\nnetpact_endpoints{state=\"failed\"} %d\n", st.Endpoints, st.FailedEndpoints)
}

func verdict(r datapath.Reason) string {
	if r.Dropped() {
		return "drop"
	}
	return "forward"
}

// residentBytes is VmRSS of this process.
func residentBytes() (uint64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err == nil
		}
	}
	return 0, false
}
