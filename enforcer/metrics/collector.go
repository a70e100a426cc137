package metrics

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netpact/netpact/enforcer/datapath"
)

// nodeCollector reads the Source at scrape time: the datapath's counters and maps are already
// counters and gauges, so copying them at each scrape costs nothing between scrapes and is never
// stale.
type nodeCollector struct {
	src Source
	m   *Metrics

	packets, bytes                *prometheus.Desc
	ciliumDrops, ciliumDropBytes  *prometheus.Desc
	ciliumFwd, ciliumFwdBytes     *prometheus.Desc
	limited, lostCPU, lostHubble  *prometheus.Desc
	entries, capacity, pressure   *prometheus.Desc
	drift                         *prometheus.Desc
	syncDuration, syncs           *prometheus.Desc
	policies, endpoints           *prometheus.Desc
	counterErr, fillErr, eventErr *prometheus.Desc
}

func newNodeCollector(src Source, m *Metrics) *nodeCollector {
	d := prometheus.NewDesc
	return &nodeCollector{src: src, m: m,
		packets: d("netpact_datapath_packets_total", "Packets the datapath forwarded or dropped, by reason.",
			[]string{"reason", "verdict"}, nil),
		bytes: d("netpact_datapath_bytes_total", "Bytes the datapath forwarded or dropped, by reason.",
			[]string{"reason", "verdict"}, nil),
		ciliumDrops: d("cilium_drop_count_total", "Total dropped packets (netpact's counters have no direction: UNKNOWN).",
			[]string{"reason", "direction"}, nil),
		ciliumDropBytes: d("cilium_drop_bytes_total", "Total dropped bytes (netpact's counters have no direction: UNKNOWN).",
			[]string{"reason", "direction"}, nil),
		ciliumFwd: d("cilium_forward_count_total", "Total forwarded packets (netpact's counters have no direction: UNKNOWN).",
			[]string{"direction"}, nil),
		ciliumFwdBytes: d("cilium_forward_bytes_total", "Total forwarded bytes (netpact's counters have no direction: UNKNOWN).",
			[]string{"direction"}, nil),
		limited: d("netpact_flow_events_limited_total",
			"Flow events the rate limit held back, by pod (each has its own bucket per CPU).", []string{"pod"}, nil),
		lostCPU: d("netpact_flow_events_lost_total",
			"Flow events lost because the event ring buffer was full, by CPU.", []string{"cpu"}, nil),
		lostHubble: d("hubble_lost_events_total", "Number of lost events", []string{"source"}, nil),
		entries:    d("netpact_map_entries", "Entries in a datapath map.", []string{"map"}, nil),
		capacity:   d("netpact_map_capacity", "Entries a datapath map holds at most.", []string{"map"}, nil),
		pressure: d("cilium_bpf_map_pressure",
			"Fill of a datapath map: entries over the most it holds (1: full).", []string{"map_name"}, nil),
		drift: d("netpact_datapath_drift_repaired_entries_total",
			"Datapath map entries found changed behind the enforcer's back and repaired.", nil, nil),
		syncDuration: d("netpact_sync_duration_seconds", "How long the last sync took.", nil, nil),
		syncs:        d("netpact_syncs_total", "Syncs of the node's datapath with the cluster.", nil, nil),
		policies: d("netpact_policies", "Policy objects the enforcer holds, by whether it refused them.",
			[]string{"refused"}, nil),
		endpoints: d("netpact_endpoints", "The node's pods, programmed or failed closed.", []string{"state"}, nil),
		// Descs of the invalid metrics a failed Source method reports; never emitted as series.
		counterErr: d("netpact_datapath_counters", "Reading the datapath's counters.", nil, nil),
		fillErr:    d("netpact_datapath_fill", "Reading the datapath's map fill.", nil, nil),
		eventErr:   d("netpact_flow_events_counters", "Reading the flow event counters.", nil, nil),
	}
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.packets, c.bytes, c.ciliumDrops, c.ciliumDropBytes, c.ciliumFwd,
		c.ciliumFwdBytes, c.limited, c.lostCPU, c.lostHubble, c.entries, c.capacity, c.pressure, c.drift,
		c.syncDuration, c.syncs, c.policies, c.endpoints, c.counterErr, c.fillErr, c.eventErr} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	c.collectCounters(ch)
	c.collectEvents(ch)
	c.collectMaps(ch)
	ch <- constMetric(c.drift, prometheus.CounterValue, float64(c.src.DriftRepairs()))
	s := c.src.Sync()
	ch <- constMetric(c.syncDuration, prometheus.GaugeValue, s.LastDuration.Seconds())
	ch <- constMetric(c.syncs, prometheus.CounterValue, float64(s.Syncs))
	ch <- constMetric(c.policies, prometheus.GaugeValue, float64(s.Policies-s.PoliciesRefused), "false")
	ch <- constMetric(c.policies, prometheus.GaugeValue, float64(s.PoliciesRefused), "true")
	ch <- constMetric(c.endpoints, prometheus.GaugeValue, float64(s.Endpoints), "programmed")
	ch <- constMetric(c.endpoints, prometheus.GaugeValue, float64(s.EndpointsFailed), "failed")
}

// ciliumDirection is the direction label of the cilium_*_count_total mirrors: the datapath counts
// per reason only, and Cilium writes a direction it does not know as UNKNOWN.
const ciliumDirection = "UNKNOWN"

func (c *nodeCollector) collectCounters(ch chan<- prometheus.Metric) {
	counters, err := c.src.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.counterErr, fmt.Errorf("read datapath counters: %w", err))
		return
	}
	var fwd datapath.Counter
	drops := map[string]datapath.Counter{} // several netpact reasons may share a Cilium text
	for _, r := range slices.Sorted(maps.Keys(counters)) {
		n := counters[r]
		verdict := "forward"
		if r.Dropped() {
			verdict = "drop"
			d := drops[ciliumDropReason(r)]
			d.Packets += n.Packets
			d.Bytes += n.Bytes
			drops[ciliumDropReason(r)] = d
		} else {
			fwd.Packets += n.Packets
			fwd.Bytes += n.Bytes
		}
		ch <- constMetric(c.packets, prometheus.CounterValue, float64(n.Packets), r.String(), verdict)
		ch <- constMetric(c.bytes, prometheus.CounterValue, float64(n.Bytes), r.String(), verdict)
	}
	for reason, n := range drops {
		ch <- constMetric(c.ciliumDrops, prometheus.CounterValue, float64(n.Packets), reason, ciliumDirection)
		ch <- constMetric(c.ciliumDropBytes, prometheus.CounterValue, float64(n.Bytes), reason, ciliumDirection)
	}
	ch <- constMetric(c.ciliumFwd, prometheus.CounterValue, float64(fwd.Packets), ciliumDirection)
	ch <- constMetric(c.ciliumFwdBytes, prometheus.CounterValue, float64(fwd.Bytes), ciliumDirection)
}

func (c *nodeCollector) collectEvents(ch chan<- prometheus.Metric) {
	if limited, err := c.src.EventsLimited(); err != nil {
		ch <- prometheus.NewInvalidMetric(c.eventErr, fmt.Errorf("read limited flow events: %w", err))
	} else {
		for pod, n := range limited {
			ch <- constMetric(c.limited, prometheus.CounterValue, float64(n), pod)
		}
	}
	c.m.mu.Lock()
	lost := maps.Clone(c.m.lost)
	c.m.mu.Unlock()
	perCPU, err := c.src.EventsLost()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.eventErr, fmt.Errorf("read lost flow events: %w", err))
	}
	if perCPU != nil {
		// Hubble counts the datapath's ring buffer losses as this source.
		var sum uint64
		for cpu, n := range perCPU {
			sum += n
			ch <- constMetric(c.lostCPU, prometheus.CounterValue, float64(n), strconv.Itoa(cpu))
		}
		lost["perf_event_ring_buffer"] += sum
	}
	for source, n := range lost {
		ch <- constMetric(c.lostHubble, prometheus.CounterValue, float64(n), source)
	}
}

func (c *nodeCollector) collectMaps(ch chan<- prometheus.Metric) {
	fill, err := c.src.Fill()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.fillErr, fmt.Errorf("read datapath map fill: %w", err))
		return
	}
	for name, f := range fill {
		ch <- constMetric(c.entries, prometheus.GaugeValue, float64(f.Entries), name)
		ch <- constMetric(c.capacity, prometheus.GaugeValue, float64(f.Max), name)
		if f.Max > 0 {
			ch <- constMetric(c.pressure, prometheus.GaugeValue, float64(f.Entries)/float64(f.Max), name)
		}
	}
}

// constMetric is a metric of the scrape, or an invalid metric saying why not (a label value that
// is not UTF-8): a bad value costs its series, never the scrape or the process.
func constMetric(desc *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(desc, typ, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(desc, fmt.Errorf("metric %s: %w", desc, err))
	}
	return m
}
