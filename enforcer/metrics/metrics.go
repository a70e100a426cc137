// Package metrics is the node enforcer's Prometheus exposition, through client_golang on a
// registry of its own. Where Cilium or Hubble has a metric of the same meaning, it has the same
// name and labels (hubble_flows_processed_total, hubble_drop_total, hubble_policy_verdicts_total,
// cilium_drop_count_total, cilium_bpf_map_pressure, ...), so that dashboards written for them
// work; netpact's own metrics are netpact_*. docs/metrics.md lists every metric, and the tests
// read that list, so the document and the code cannot drift.
//
// Two kinds of metric live here. What the datapath and the sync loop hold (per-reason packet
// counters, map fill, rate-limited events, sync state) is read at scrape time through a Source,
// so nothing polls. What only exists as a stream (flow events, proxy requests, lost events) is
// counted as it happens by ObserveFlow, ObserveProxyRequest and ObserveLost, which are cheap
// enough to be called for every flow event.
package metrics

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/netpact/netpact/enforcer/datapath"
)

// Source is what the node tells the metrics at scrape time. Its methods are called from the
// scrape's goroutine, concurrently with ObserveFlow; an error leaves that source's metrics out of
// the scrape (and is logged) while the rest is served.
type Source interface {
	// Counters are the datapath's per-reason packet and byte counters, summed over CPUs.
	Counters() (map[datapath.Reason]datapath.Counter, error)
	// EventsLimited are the flow events the per-pod rate limit held back, by pod name
	// ("namespace/name"; "(none)" for packets of no endpoint).
	EventsLimited() (map[string]uint64, error)
	// EventsLost are the flow events lost because the event ring buffer was full, by CPU. A nil
	// map means the datapath does not count them: the series are then left out, not shown as 0.
	EventsLost() (map[int]uint64, error)
	// Fill is how full each datapath map is.
	Fill() (map[string]datapath.MapFill, error)
	// DriftRepairs is how many datapath entries drift repair has written back or deleted.
	DriftRepairs() uint64
	// Sync is the state of the node's sync loop.
	Sync() SyncInfo
}

// SyncInfo is the node's sync loop as the last sync left it.
type SyncInfo struct {
	// LastDuration is how long the last sync took; Syncs how many ran.
	LastDuration time.Duration
	Syncs        uint64
	// Policies are the policy objects the enforcer holds; PoliciesRefused those of them the
	// loader refused (their last good version, if any, stays enforced).
	Policies        int
	PoliciesRefused int
	// Endpoints are the node's pods programmed; EndpointsFailed those failed closed.
	Endpoints       int
	EndpointsFailed int
}

// DefaultTopPolicies is how many policies keep their own netpact_policy_verdicts_total series
// when Options.TopPolicies is zero.
const DefaultTopPolicies = 100

// Options configures the metrics.
type Options struct {
	// TopPolicies bounds netpact_policy_verdicts_total: the policies with the most verdicts, this
	// many at most, have their own series; the others count under policy="(other)". Zero means
	// DefaultTopPolicies.
	TopPolicies int
	// Log receives scrape errors (a Source method that failed); slog.Default() when nil.
	Log *slog.Logger
}

// Metrics is the node's metrics: its registry, the counters ObserveFlow feeds, and the
// scrape-time collector of the Source.
type Metrics struct {
	reg *prometheus.Registry
	log *slog.Logger

	flowEvents *prometheus.CounterVec // netpact_flow_events_total
	flows      *prometheus.CounterVec // hubble_flows_processed_total
	drops      *prometheus.CounterVec // hubble_drop_total
	verdicts   *prometheus.CounterVec // hubble_policy_verdicts_total
	httpReqs   *prometheus.CounterVec // hubble_http_requests_total
	httpDur    *prometheus.HistogramVec
	dnsQueries *prometheus.CounterVec
	dnsResps   *prometheus.CounterVec
	proxy      [4][3]prometheus.Counter // netpact_proxy_requests_total by proxy, verdict

	// mu guards the label caches below, the policy table and the lost events: ObserveFlow looks
	// its series up there rather than through WithLabelValues, whose variadic label slice
	// allocates on every call.
	mu             sync.Mutex
	flowEventCache map[flowEventKey]prometheus.Counter
	flowCache      map[flowKey]prometheus.Counter
	dropCache      map[dropKey]prometheus.Counter
	verdictCache   map[verdictKey]prometheus.Counter
	httpCache      map[httpKey]prometheus.Counter
	httpDurCache   map[httpDurKey]prometheus.Observer
	dnsCache       map[dnsKey]prometheus.Counter
	policies       *policyTable
	lost           map[string]uint64 // hubble_lost_events_total by source, from ObserveLost
}

// New returns the metrics of a node whose scrape-time state src gives. Register errors can only
// come from this package's own definitions (a duplicate name); the tests register everything.
func New(src Source, opts Options) (*Metrics, error) {
	if opts.TopPolicies <= 0 {
		opts.TopPolicies = DefaultTopPolicies
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(), log: opts.Log,
		flowEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netpact_flow_events_total",
			Help: "Flow events read from the datapath, by direction and reason (rate-limited per pod and CPU)."},
			[]string{"direction", "reason"}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_flows_processed_total",
			Help: "Total number of flows processed"}, []string{"protocol", "type", "subtype", "verdict"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_drop_total",
			Help: "Number of drops"}, []string{"reason", "protocol"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_policy_verdicts_total",
			Help: "Total number of Cilium network policy verdicts"}, []string{"direction", "match", "action"}),
		httpReqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_http_requests_total",
			Help: "Count of HTTP requests"}, []string{"method", "protocol", "status", "reporter"}),
		httpDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hubble_http_request_duration_seconds",
			Help: "Quantiles of HTTP request duration in seconds"}, []string{"method", "reporter"}),
		dnsQueries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_dns_queries_total",
			Help: "Number of DNS queries observed"}, []string{"rcode", "qtypes", "ips_returned"}),
		dnsResps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_dns_responses_total",
			Help: "Number of DNS responses observed"}, []string{"rcode", "qtypes", "ips_returned"}),
		flowEventCache: map[flowEventKey]prometheus.Counter{}, flowCache: map[flowKey]prometheus.Counter{},
		dropCache: map[dropKey]prometheus.Counter{}, verdictCache: map[verdictKey]prometheus.Counter{},
		httpCache: map[httpKey]prometheus.Counter{}, httpDurCache: map[httpDurKey]prometheus.Observer{},
		dnsCache: map[dnsKey]prometheus.Counter{}, lost: map[string]uint64{},
	}
	m.policies = newPolicyTable(opts.TopPolicies)
	proxy := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netpact_proxy_requests_total",
		Help: "Requests the node's L7 proxies judged, by proxy (http, dns, kafka) and verdict (forwarded, denied)."},
		[]string{"proxy", "verdict"})
	// Every series exists from the start (at 0), so that a rate over them is defined before the
	// first request, and the hot path needs no lookup.
	for i, p := range proxyNames {
		for j, v := range proxyVerdicts {
			m.proxy[i][j] = counterOf(proxy, []string{p, v})
		}
	}
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.flowEvents, m.flows, m.drops, m.verdicts, m.httpReqs, m.httpDur, m.dnsQueries, m.dnsResps, proxy,
		&policyCollector{m: m},
		newNodeCollector(src, m),
	} {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// Handler serves the metrics in the Prometheus exposition formats. A Source method that fails
// leaves its metrics out of that scrape, not the whole scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError,
		ErrorLog: errorLog{m.log}})
}

// Registry is the metrics' registry, for a caller that serves it along with others.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// errorLog is promhttp's logger over slog.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Println(v ...any) { l.log.Error("metrics", "err", fmt.Sprint(v...)) }

// Proxy names and verdicts of netpact_proxy_requests_total; anything else counts as "other",
// so that a caller's typo cannot grow the series without bound.
var (
	proxyNames    = [4]string{"http", "dns", "kafka", "other"}
	proxyVerdicts = [3]string{"forwarded", "denied", "other"}
)

// ObserveProxyRequest counts a request an L7 proxy judged: proxy "http", "dns" or "kafka",
// verdict "forwarded" or "denied".
func (m *Metrics) ObserveProxyRequest(proxy, verdict string) {
	i, j := 3, 2
	switch proxy {
	case "http":
		i = 0
	case "dns":
		i = 1
	case "kafka":
		i = 2
	}
	switch verdict {
	case "forwarded":
		j = 0
	case "denied":
		j = 1
	}
	m.proxy[i][j].Inc()
}

// ObserveLost counts n flow events lost before the metrics saw them, by where they were lost
// (hubble_lost_events_total's source: "perf_event_ring_buffer" for the datapath's ring buffer,
// "observer_events_queue" for a queue of the node's own).
func (m *Metrics) ObserveLost(source string, n uint64) {
	m.mu.Lock()
	m.lost[source] += n
	m.mu.Unlock()
}
