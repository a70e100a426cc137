package metrics

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/policy"
)

// FlowSample is what the node tells the metrics of one flow event. Its values are Hubble's, as
// Hubble's metrics label them (see the constants), so that a caller fills it from a Hubble-style
// flow by copying fields; SampleOf fills it from a datapath flow event. Every string should come
// from a bounded set: each distinct value is a series.
type FlowSample struct {
	// Type is hubble_flows_processed_total's type: the Hubble event type (TypePolicyVerdict,
	// TypeDrop, TypeTrace, TypeL7); Subtype its subtype: the L7 protocol for TypeL7 ("HTTP",
	// "DNS", "Kafka"), the observation point for TypeTrace ("to-endpoint", "from-endpoint"), ""
	// otherwise.
	Type    string
	Subtype string
	// Verdict is Hubble's verdict name: FORWARDED, DROPPED, AUDIT, REDIRECTED.
	Verdict string
	// DropReason is Hubble's drop_reason_desc name (POLICY_DENIED, ...) of a DROPPED sample.
	DropReason string
	// Reason is netpact's reason (datapath.Reason.String(), "L7 forwarded", "L7 dropped"): the
	// reason label of netpact_flow_events_total, which predates the Hubble names.
	Reason string
	// Protocol is Hubble's protocol of the flow: the L7 protocol of an L7 event ("HTTP", "DNS"),
	// else the L4 one ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP").
	Protocol string
	// Direction is Hubble's traffic direction: INGRESS or EGRESS.
	Direction string
	// Match is Hubble's policy match type, lower case as hubble_policy_verdicts_total writes it:
	// "l3-l4", "l3-only", "l4-only", "all", "none", "l7/http", "l7/dns"; "" when unknown (then
	// "unknown" in the label).
	Match string
	// PolicyVerdict says the event is a policy verdict: it counts in hubble_policy_verdicts_total
	// and netpact_policy_verdicts_total.
	PolicyVerdict bool
	// Policies are the deciding policies ("Kind ns/name", policy.Key.String()); none for a
	// default deny. The caller may share the slice between samples: it is only read.
	Policies []string
	// SourceRepo is where the deciding policies come from (the PolicySource, "ns/name"; "" when
	// applied by hand).
	SourceRepo string
	// HTTP is set on an HTTP request the L7 proxy judged, DNS on a DNS query the DNS proxy judged.
	HTTP *HTTPSample
	DNS  *DNSSample
}

// HTTPSample is an HTTP request as Hubble's HTTP metrics label it.
type HTTPSample struct {
	Method   string // GET, POST, ...
	Protocol string // HTTP/1.1, HTTP/2
	Status   int    // the response's code (403 when denied; 0 when none came)
	Latency  time.Duration
}

// DNSSample is a DNS query and the answer the pod got.
type DNSSample struct {
	RCode string // NOERROR, NXDOMAIN, REFUSED, SERVFAIL, ...; "" when no answer was sent
	QType string // A, AAAA, ...
	IPs   int    // addresses in the answer
}

// Hubble's event types (hubble_flows_processed_total's type), verdicts and directions.
const (
	TypePolicyVerdict = "PolicyVerdict"
	TypeDrop          = "Drop"
	TypeTrace         = "Trace"
	TypeL7            = "L7"

	VerdictForwarded  = "FORWARDED"
	VerdictDropped    = "DROPPED"
	VerdictAudit      = "AUDIT"
	VerdictRedirected = "REDIRECTED"

	DirectionIngress = "INGRESS"
	DirectionEgress  = "EGRESS"
)

// Series keys of the label caches: their values() are the labels in the vector's order, called
// only when a series is first seen.
type (
	flowEventKey struct{ direction, reason string }
	flowKey      struct{ protocol, typ, subtype, verdict string }
	dropKey      struct{ reason, protocol string }
	verdictKey   struct{ direction, match, action string }
	httpKey      struct {
		method, protocol string
		status           int
		reporter         string
	}
	httpDurKey struct{ method, reporter string }
	dnsKey     struct {
		response     bool
		rcode, qtype string
		ips          int
	}
)

// ObserveFlow counts a flow event in the flow metrics. It is called for every flow event the node
// reads: once every series it touches exists, it allocates nothing (BenchmarkObserveFlow).
func (m *Metrics) ObserveFlow(s FlowSample) {
	dir := lower(s.Direction)
	m.mu.Lock()
	defer m.mu.Unlock()
	counter(m.flowEventCache, m.flowEvents, flowEventKey{dir, s.Reason}, func(k flowEventKey) []string {
		return []string{k.direction, k.reason}
	}).Inc()
	counter(m.flowCache, m.flows, flowKey{s.Protocol, s.Type, s.Subtype, s.Verdict}, func(k flowKey) []string {
		return []string{k.protocol, k.typ, k.subtype, k.verdict}
	}).Inc()
	if s.Verdict == VerdictDropped {
		counter(m.dropCache, m.drops, dropKey{s.DropReason, s.Protocol}, func(k dropKey) []string {
			return []string{k.reason, k.protocol}
		}).Inc()
	}
	if s.PolicyVerdict {
		match := s.Match
		if match == "" {
			match = "unknown"
		}
		action := lower(s.Verdict)
		counter(m.verdictCache, m.verdicts, verdictKey{dir, match, action}, func(k verdictKey) []string {
			return []string{k.direction, k.match, k.action}
		}).Inc()
		m.policies.observe(s.Policies, policyKey{direction: dir, match: match, action: action, repo: s.SourceRepo})
	}
	if h := s.HTTP; h != nil {
		// Hubble's reporter: the client reports its egress, the server its ingress.
		reporter := "server"
		if s.Direction == DirectionEgress {
			reporter = "client"
		}
		counter(m.httpCache, m.httpReqs, httpKey{h.Method, h.Protocol, h.Status, reporter}, func(k httpKey) []string {
			return []string{k.method, k.protocol, strconv.Itoa(k.status), k.reporter}
		}).Inc()
		k := httpDurKey{h.Method, reporter}
		o, ok := m.httpDurCache[k]
		if !ok {
			o = observerOf(m.httpDur, []string{k.method, k.reporter})
			m.httpDurCache[k] = o
		}
		o.Observe(h.Latency.Seconds())
	}
	if d := s.DNS; d != nil {
		// As Hubble: a denied query counts as a query with rcode "Policy denied"; an answered one
		// as a query and a response with the answer's rcode.
		q := dnsKey{rcode: "", qtype: d.QType}
		if s.Verdict == VerdictDropped {
			q.rcode = "Policy denied"
		}
		counter(m.dnsCache, m.dnsQueries, q, dnsValues).Inc()
		if d.RCode != "" && s.Verdict != VerdictDropped {
			counter(m.dnsCache, m.dnsResps, dnsKey{response: true, rcode: rcodeName(d.RCode), qtype: d.QType, ips: d.IPs},
				dnsValues).Inc()
		}
	}
}

func dnsValues(k dnsKey) []string { return []string{k.rcode, k.qtype, strconv.Itoa(k.ips)} }

// counter is the series of key k in vec, through the cache; values makes its labels on a miss.
func counter[K comparable](cache map[K]prometheus.Counter, vec *prometheus.CounterVec, k K, values func(K) []string) prometheus.Counter {
	c, ok := cache[k]
	if !ok {
		c = counterOf(vec, values(k))
		cache[k] = c
	}
	return c
}

// counterOf and observerOf are the series of vec with the label values vals. A value that is
// not UTF-8 (which client_golang refuses) is repaired rather than let WithLabelValues panic: label
// values come from flows, and a flow must not take the node down. Only a wrong number of labels,
// a bug of this package that the tests would catch, is left: it counts nowhere.
func counterOf(vec *prometheus.CounterVec, vals []string) prometheus.Counter {
	c, err := vec.GetMetricWithLabelValues(vals...)
	if err != nil {
		c, err = vec.GetMetricWithLabelValues(validUTF8(vals)...)
	}
	if err != nil {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "netpact_discarded", Help: "Never registered."})
	}
	return c
}

func observerOf(vec *prometheus.HistogramVec, vals []string) prometheus.Observer {
	o, err := vec.GetMetricWithLabelValues(vals...)
	if err != nil {
		o, err = vec.GetMetricWithLabelValues(validUTF8(vals)...)
	}
	if err != nil {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: "netpact_discarded", Help: "Never registered."})
	}
	return o
}

func validUTF8(vals []string) []string {
	for i, v := range vals {
		vals[i] = strings.ToValidUTF8(v, "\uFFFD")
	}
	return vals
}

// lower is s in lower case: Hubble's direction and action labels are its enum names lowered. The
// known names are constants, so the hot path does not allocate.
func lower(s string) string {
	switch s {
	case DirectionIngress:
		return "ingress"
	case DirectionEgress:
		return "egress"
	case VerdictForwarded:
		return "forwarded"
	case VerdictDropped:
		return "dropped"
	case VerdictAudit:
		return "audit"
	case VerdictRedirected:
		return "redirected"
	}
	return strings.ToLower(s)
}

// rcodeName is Hubble's name of a DNS rcode (pkg/hubble/metrics/dns/rcode.go) from its
// mnemonic.
func rcodeName(rcode string) string {
	switch rcode {
	case "NOERROR":
		return "No Error"
	case "FORMERR":
		return "Format Error"
	case "SERVFAIL":
		return "Server Failure"
	case "NXDOMAIN":
		return "Non-Existent Domain"
	case "NOTIMP":
		return "Not Implemented"
	case "REFUSED":
		return "Query Refused"
	}
	return rcode
}

// dropReasons are the Hubble drop_reason_desc names of the datapath's drop reasons: Cilium's
// where one means the same, netpact's own (in the same style) where none does.
var dropReasons = map[datapath.Reason]string{
	datapath.ReasonDropDeny:         "POLICY_DENY", // Cilium's "Policy denied by denylist": a deny rule
	datapath.ReasonDropDefaultDeny:  "POLICY_DENIED",
	datapath.ReasonDropSpoof:        "INVALID_SOURCE_IP",
	datapath.ReasonDropNotEndpoint:  "NO_MATCHING_LOCAL_CONTAINER_FOUND",
	datapath.ReasonDropMalformed:    "INVALID_PACKET_DROPPED",
	datapath.ReasonDropFragNoFirst:  "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
	datapath.ReasonDropEthertype:    "UNSUPPORTED_L3_PROTOCOL",
	datapath.ReasonDropNoProxy:      "PROXY_NOT_RUNNING",
	datapath.ReasonDropFailClosed:   "ENDPOINT_NOT_PROGRAMMED",
	datapath.ReasonDropUntranslated: "SERVICE_NOT_TRANSLATED",
	datapath.ReasonDropProxyDown:    "PROXY_LISTENER_DOWN",
	datapath.ReasonDropProxyBypass:  "PROXY_BYPASSED",
	datapath.ReasonDropProxyMidflow: "PROXY_MIDFLOW",
	datapath.ReasonDropProxyGone:    "PROXY_SOCKET_GONE",
}

// DropReasonDesc is the Hubble drop_reason_desc name of a datapath drop reason ("" for a
// forward): Cilium's name where one means the same, netpact's own otherwise (docs/metrics.md).
func DropReasonDesc(r datapath.Reason) string {
	if !r.Dropped() {
		return ""
	}
	if n, ok := dropReasons[r]; ok {
		return n
	}
	return "UNKNOWN_REASON"
}

// ciliumDropReasons are the Cilium agent's drop reason texts (cilium_drop_count_total's reason)
// where one means the same as the datapath's.
var ciliumDropReasons = map[datapath.Reason]string{
	datapath.ReasonDropDeny:        "Policy denied by denylist",
	datapath.ReasonDropDefaultDeny: "Policy denied",
	datapath.ReasonDropSpoof:       "Invalid source ip",
	datapath.ReasonDropNotEndpoint: "No matching local container found",
	datapath.ReasonDropMalformed:   "Invalid packet",
	datapath.ReasonDropFragNoFirst: "First logical datagram fragment not found",
	datapath.ReasonDropEthertype:   "Unsupported L3 protocol",
}

// ciliumDropReason is cilium_drop_count_total's reason of a datapath drop reason: Cilium's text,
// or netpact's reason without its "dropped: " prefix.
func ciliumDropReason(r datapath.Reason) string {
	if n, ok := ciliumDropReasons[r]; ok {
		return n
	}
	return strings.TrimPrefix(r.String(), "dropped: ")
}

// Netpact's reasons of L7 events (netpact_flow_events_total), as the flow log writes them.
const (
	ReasonL7Forwarded = "L7 forwarded"
	ReasonL7Dropped   = "L7 dropped"
)

// SampleOf is the sample of a datapath flow event, without its Policies and SourceRepo (which
// need the enforcer's rule table) and, for a verdict a rule decided, without its Match (netpact's
// flow events do not say whether the rule matched on L3, L4 or both). It allocates only the
// HTTPSample or DNSSample of an L7 event.
//
// The event types follow what netpact's datapath reports: a drop is a Drop event, and a policy
// verdict when policy dropped it (Cilium reports both events for it); a new flow the policy
// allowed, or handed to the L7 proxy (REDIRECTED), is a PolicyVerdict event; a forward policy did
// not decide (a reply, ARP, an unenforced direction) is a Trace event at the endpoint.
func SampleOf(f datapath.Flow) FlowSample {
	s := FlowSample{Direction: DirectionIngress, Verdict: VerdictForwarded, Reason: f.Reason.String()}
	if f.Direction == policy.Egress {
		s.Direction = DirectionEgress
	}
	if f.Dropped() {
		s.Verdict = VerdictDropped
	}
	if l7 := f.L7; l7 != nil {
		s.Type, s.PolicyVerdict, s.Reason = TypeL7, true, ReasonL7Forwarded
		if s.Verdict == VerdictDropped {
			s.Reason, s.DropReason = ReasonL7Dropped, "POLICY_DENIED"
		}
		if d := l7.DNS; d != nil {
			s.Subtype, s.Protocol, s.Match = "DNS", "DNS", "l7/dns"
			s.DNS = &DNSSample{RCode: d.RCode, QType: d.Type, IPs: len(d.IPs)}
			return s
		}
		if l7.Kafka != nil {
			s.Subtype, s.Protocol, s.Match = "Kafka", "Kafka", "l7/kafka"
			return s
		}
		s.Subtype, s.Protocol, s.Match = "HTTP", "HTTP", "l7/http"
		s.HTTP = &HTTPSample{Method: l7.Method, Protocol: l7.Protocol, Status: l7.Status, Latency: l7.Latency}
		return s
	}
	s.Protocol = protocolName(f.Proto)
	switch f.Reason {
	case datapath.ReasonDropDeny, datapath.ReasonDropDefaultDeny:
		s.Type, s.PolicyVerdict = TypeDrop, true
	case datapath.ReasonForwardPolicy, datapath.ReasonForwardRecovered:
		s.Type, s.PolicyVerdict = TypePolicyVerdict, true
	case datapath.ReasonForwardProxy:
		s.Type, s.PolicyVerdict, s.Verdict = TypePolicyVerdict, true, VerdictRedirected
	case datapath.ReasonAuditDeny, datapath.ReasonAuditDefaultDeny:
		// Passed, and reported: a policy in audit mode would have dropped it.
		s.Type, s.PolicyVerdict, s.Verdict = TypePolicyVerdict, true, VerdictAudit
	default:
		if s.Verdict == VerdictDropped {
			s.Type = TypeDrop
			break
		}
		s.Type, s.Subtype = TypeTrace, "to-endpoint"
		if s.Direction == DirectionEgress {
			s.Subtype = "from-endpoint"
		}
	}
	if s.Verdict == VerdictDropped {
		s.DropReason = DropReasonDesc(f.Reason)
	}
	if s.PolicyVerdict && f.Rule == policy.RuleNone {
		s.Match = "none"
	}
	return s
}

// protocolName is Hubble's name of an L4 protocol.
func protocolName(p policy.Proto) string {
	switch p {
	case policy.ProtoTCP:
		return "TCP"
	case policy.ProtoUDP:
		return "UDP"
	case policy.ProtoICMP:
		return "ICMPv4"
	case policy.ProtoICMPv6:
		return "ICMPv6"
	case policy.ProtoSCTP:
		return "SCTP"
	}
	return "Unknown L4"
}
