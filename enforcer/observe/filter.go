package observe

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Filter selects flows as hubble observe's flags do: the values of one field
// are alternatives (any may match), the fields all have to match. Last and
// Follow are not conditions; they say how many stored flows a reader wants
// and whether it keeps reading, and travel with the filter to the server.
type Filter struct {
	// Verdicts are verdict names (FORWARDED, DROPPED, ...).
	Verdicts []string
	// Pods are "[namespace/]name-prefix"; "namespace/" alone is the whole
	// namespace. A pod matches on either end of the flow.
	Pods []string
	// Namespaces match the namespace of either end.
	Namespaces []string
	// FromPods and ToPods are as Pods, on the source or destination only.
	FromPods []string
	ToPods   []string
	// IPs match the address of either end, FromIPs and ToIPs the source's or the
	// destination's (Hubble's --ip, --from-ip, --to-ip).
	IPs     []string
	FromIPs []string
	ToIPs   []string
	// Ports match the L4 port of either end.
	Ports []uint16
	// Protocols are tcp, udp, sctp, icmp (v4 or v6), icmpv4, icmpv6, http,
	// dns or kafka.
	Protocols []string
	// Types are event types: trace, drop, capture, policy-verdict, l7, and
	// the L7 kinds dns, http, kafka; trace:<point> (trace:to-endpoint) and
	// <type>:<number> also select the subtype.
	Types []string
	// Since and Until bound the flow time; the zero time is no bound.
	Since time.Time
	Until time.Time
	// Nodes match the node name, with shell patterns (k8s-worker*).
	Nodes []string

	// Last asks for the last N stored flows (0: all stored when not
	// following, none when following).
	Last int
	// Follow keeps streaming new flows.
	Follow bool
}

// Query parameter names of a Filter.
const (
	qVerdict   = "verdict"
	qPod       = "pod"
	qNamespace = "namespace"
	qFromPod   = "from-pod"
	qToPod     = "to-pod"
	qPort      = "port"
	qIP        = "ip"
	qFromIP    = "from-ip"
	qToIP      = "to-ip"
	qProtocol  = "protocol"
	qType      = "type"
	qSince     = "since"
	qUntil     = "until"
	qNode      = "node"
	qLast      = "last"
	qFollow    = "follow"
)

// Query encodes the filter as URL query parameters, which ParseFilterQuery
// reads back.
func (f Filter) Query() url.Values {
	q := url.Values{}
	add := func(k string, vs []string) {
		for _, v := range vs {
			q.Add(k, v)
		}
	}
	add(qVerdict, f.Verdicts)
	add(qPod, f.Pods)
	add(qNamespace, f.Namespaces)
	add(qFromPod, f.FromPods)
	add(qToPod, f.ToPods)
	add(qIP, f.IPs)
	add(qFromIP, f.FromIPs)
	add(qToIP, f.ToIPs)
	for _, p := range f.Ports {
		q.Add(qPort, strconv.Itoa(int(p)))
	}
	add(qProtocol, f.Protocols)
	add(qType, f.Types)
	if !f.Since.IsZero() {
		q.Set(qSince, f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		q.Set(qUntil, f.Until.UTC().Format(time.RFC3339Nano))
	}
	add(qNode, f.Nodes)
	if f.Last != 0 {
		q.Set(qLast, strconv.Itoa(f.Last))
	}
	if f.Follow {
		q.Set(qFollow, "1")
	}
	return q
}

// MaxFilterValues bounds the values one filter parameter may have.
const MaxFilterValues = 64

// ParseFilterQuery reads a filter from URL query parameters, checking every
// value; the error names the parameter at fault.
func ParseFilterQuery(q url.Values) (Filter, error) {
	var f Filter
	for k, vs := range q {
		var err error
		if len(vs) > MaxFilterValues {
			// Each value is compared with every stored flow: a request with thousands of them
			// would cost the node's CPU for one caller's query.
			return Filter{}, fmt.Errorf("filter parameter %q: %d values, at most %d", k, len(vs), MaxFilterValues)
		}
		switch k {
		case qVerdict:
			f.Verdicts, err = parseVerdicts(vs)
		case qPod:
			f.Pods, err = checkPods(vs)
		case qNamespace:
			f.Namespaces, err = nonEmpty(vs)
		case qFromPod:
			f.FromPods, err = checkPods(vs)
		case qToPod:
			f.ToPods, err = checkPods(vs)
		case qIP:
			f.IPs, err = parseIPs(vs)
		case qFromIP:
			f.FromIPs, err = parseIPs(vs)
		case qToIP:
			f.ToIPs, err = parseIPs(vs)
		case qPort:
			f.Ports, err = parsePorts(vs)
		case qProtocol:
			f.Protocols, err = parseProtocols(vs)
		case qType:
			f.Types, err = parseTypes(vs)
		case qSince:
			f.Since, err = parseOneTime(vs)
		case qUntil:
			f.Until, err = parseOneTime(vs)
		case qNode:
			f.Nodes, err = parseNodes(vs)
		case qLast:
			f.Last, err = parseLast(vs)
		case qFollow:
			f.Follow, err = parseFollow(vs)
		default:
			err = errors.New("unknown parameter")
		}
		if err != nil {
			return Filter{}, fmt.Errorf("filter parameter %q: %w", k, err)
		}
	}
	return f, nil
}

// Validate checks the values of a filter built in code, as ParseFilterQuery
// checks those of a query.
func (f Filter) Validate() error {
	_, err := ParseFilterQuery(f.Query())
	return err
}

// ParseTime reads a --since/--until value: a duration before now ("5m",
// "1h30m") or an RFC 3339 time.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("parse time %q: negative duration", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse time %q: want a duration (5m) or an RFC 3339 time", s)
	}
	return t, nil
}

func parseVerdicts(vs []string) ([]string, error) {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		u := Verdict(strings.ToUpper(v))
		if !slices.Contains(verdictNames, u) {
			return nil, fmt.Errorf("unknown verdict %q", v)
		}
		out = append(out, string(u))
	}
	return out, nil
}

func nonEmpty(vs []string) ([]string, error) {
	for _, v := range vs {
		if v == "" {
			return nil, errors.New("empty value")
		}
	}
	return vs, nil
}

func checkPods(vs []string) ([]string, error) {
	for _, v := range vs {
		if v == "" || v == "/" || strings.Count(v, "/") > 1 {
			return nil, fmt.Errorf("bad pod %q: want [namespace/]name", v)
		}
	}
	return vs, nil
}

func parsePorts(vs []string) ([]uint16, error) {
	out := make([]uint16, 0, len(vs))
	for _, v := range vs {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("bad port %q", v)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

var protocols = []string{"tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "http", "dns", "kafka"}

func parseProtocols(vs []string) ([]string, error) {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		l := strings.ToLower(v)
		if !slices.Contains(protocols, l) {
			return nil, fmt.Errorf("unknown protocol %q", v)
		}
		out = append(out, l)
	}
	return out, nil
}

var eventTypes = map[string]int32{
	"drop":           MessageTypeDrop,
	"capture":        MessageTypeCapture,
	"trace":          MessageTypeTrace,
	"policy-verdict": MessageTypePolicyVerdict,
	"l7":             MessageTypeAccessLog,
	"dns":            MessageTypeAccessLog,
	"http":           MessageTypeAccessLog,
	"kafka":          MessageTypeAccessLog,
}

// typeFilter is one parsed Types value.
type typeFilter struct {
	name     string
	typ      int32
	sub      int32
	matchSub bool
}

func parseType(v string) (typeFilter, error) {
	name, sub, hasSub := strings.Cut(strings.ToLower(v), ":")
	typ, ok := eventTypes[name]
	if !ok {
		return typeFilter{}, fmt.Errorf("unknown type %q", v)
	}
	t := typeFilter{name: name, typ: typ}
	if !hasSub {
		return t, nil
	}
	if typ == MessageTypeAccessLog {
		return typeFilter{}, fmt.Errorf("type %q takes no subtype", name)
	}
	t.matchSub = true
	if n, err := strconv.ParseUint(sub, 10, 8); err == nil {
		t.sub = int32(n)
		return t, nil
	}
	if typ == MessageTypeTrace {
		for k, point := range traceObservationPoints {
			if point == sub {
				t.sub = k
				return t, nil
			}
		}
	}
	return typeFilter{}, fmt.Errorf("unknown subtype %q of type %q", sub, name)
}

func parseTypes(vs []string) ([]string, error) {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		if _, err := parseType(v); err != nil {
			return nil, err
		}
		out = append(out, strings.ToLower(v))
	}
	return out, nil
}

func parseOneTime(vs []string) (time.Time, error) {
	if len(vs) != 1 {
		return time.Time{}, errors.New("give it once")
	}
	t, err := time.Parse(time.RFC3339Nano, vs[0])
	if err != nil {
		return time.Time{}, fmt.Errorf("bad time %q: want RFC 3339", vs[0])
	}
	return t, nil
}

func parseNodes(vs []string) ([]string, error) {
	for _, v := range vs {
		if _, err := path.Match(v, ""); err != nil || v == "" {
			return nil, fmt.Errorf("bad node pattern %q", v)
		}
	}
	return vs, nil
}

func parseLast(vs []string) (int, error) {
	if len(vs) != 1 {
		return 0, errors.New("give it once")
	}
	n, err := strconv.Atoi(vs[0])
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad count %q", vs[0])
	}
	return n, nil
}

func parseFollow(vs []string) (bool, error) {
	if len(vs) != 1 {
		return false, errors.New("give it once")
	}
	switch vs[0] {
	case "", "1", "true":
		return true, nil
	case "0", "false":
		return false, nil
	}
	return false, fmt.Errorf("bad value %q: want 1 or 0", vs[0])
}

// Match reports whether a flow passes the filter. Values are assumed checked
// (ParseFilterQuery or Validate); an unknown value matches nothing.
func (f Filter) Match(fl *Flow) bool {
	if fl == nil {
		return false
	}
	if len(f.Verdicts) > 0 && !slices.ContainsFunc(f.Verdicts, func(v string) bool {
		return strings.EqualFold(v, string(fl.Verdict))
	}) {
		return false
	}
	if len(f.Pods) > 0 && !slices.ContainsFunc(f.Pods, func(p string) bool {
		return podMatch(p, fl.Source) || podMatch(p, fl.Destination)
	}) {
		return false
	}
	if len(f.FromPods) > 0 && !slices.ContainsFunc(f.FromPods, func(p string) bool { return podMatch(p, fl.Source) }) {
		return false
	}
	if len(f.ToPods) > 0 && !slices.ContainsFunc(f.ToPods, func(p string) bool { return podMatch(p, fl.Destination) }) {
		return false
	}
	src, dst := "", ""
	if fl.IP != nil {
		src, dst = fl.IP.Source, fl.IP.Destination
	}
	if len(f.IPs) > 0 && !slices.ContainsFunc(f.IPs, func(a string) bool { return a == src || a == dst }) {
		return false
	}
	if len(f.FromIPs) > 0 && !slices.Contains(f.FromIPs, src) {
		return false
	}
	if len(f.ToIPs) > 0 && !slices.Contains(f.ToIPs, dst) {
		return false
	}
	if len(f.Namespaces) > 0 && !slices.ContainsFunc(f.Namespaces, func(ns string) bool {
		return (fl.Source != nil && fl.Source.Namespace == ns) ||
			(fl.Destination != nil && fl.Destination.Namespace == ns)
	}) {
		return false
	}
	if len(f.Ports) > 0 {
		sp, dp := ports(fl)
		if !slices.ContainsFunc(f.Ports, func(p uint16) bool { return uint32(p) == sp || uint32(p) == dp }) {
			return false
		}
	}
	if len(f.Protocols) > 0 && !slices.ContainsFunc(f.Protocols, func(p string) bool { return protocolMatch(p, fl) }) {
		return false
	}
	if len(f.Types) > 0 && !slices.ContainsFunc(f.Types, func(t string) bool { return typeMatch(t, fl) }) {
		return false
	}
	if !f.timeMatch(fl.Time) {
		return false
	}
	if len(f.Nodes) > 0 && !f.nodeMatch(fl.NodeName) {
		return false
	}
	return true
}

// MatchResponse reports whether a stream record passes the filter. Lost
// events are accounting, not flows: only the time and node conditions apply
// to them, so a reader learns of a loss whatever it selects.
func (f Filter) MatchResponse(r *GetFlowsResponse) bool {
	switch {
	case r == nil:
		return false
	case r.Flow != nil:
		if r.Flow.NodeName == "" && r.NodeName != "" && len(f.Nodes) > 0 {
			fl := *r.Flow
			fl.NodeName = r.NodeName
			return f.Match(&fl)
		}
		return f.Match(r.Flow)
	case r.LostEvents != nil:
		return f.timeMatch(r.Time) && (len(f.Nodes) == 0 || f.nodeMatch(r.NodeName))
	}
	return false
}

func (f Filter) timeMatch(t *Timestamp) bool {
	if f.Since.IsZero() && f.Until.IsZero() {
		return true
	}
	if t == nil {
		return false
	}
	if !f.Since.IsZero() && t.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && t.After(f.Until) {
		return false
	}
	return true
}

func (f Filter) nodeMatch(node string) bool {
	return slices.ContainsFunc(f.Nodes, func(pat string) bool {
		ok, err := path.Match(pat, node)
		return err == nil && ok
	})
}

// podMatch matches "[namespace/]prefix" against an endpoint: the pod name
// starts with prefix (Hubble matches pod name prefixes, so "xwing" selects
// "xwing-5d4f"), and the namespace is the one given, or any without one.
func podMatch(sel string, ep *Endpoint) bool {
	if ep == nil || ep.PodName == "" {
		return false
	}
	ns, prefix, hasNS := strings.Cut(sel, "/")
	if !hasNS {
		ns, prefix = "", sel
	}
	if hasNS && ns != ep.Namespace {
		return false
	}
	return strings.HasPrefix(ep.PodName, prefix)
}

func protocolMatch(p string, fl *Flow) bool {
	l4, l7 := fl.L4, fl.L7
	switch p {
	case "tcp":
		return l4 != nil && l4.TCP != nil
	case "udp":
		return l4 != nil && l4.UDP != nil
	case "sctp":
		return l4 != nil && l4.SCTP != nil
	case "icmp":
		return l4 != nil && (l4.ICMPv4 != nil || l4.ICMPv6 != nil)
	case "icmpv4":
		return l4 != nil && l4.ICMPv4 != nil
	case "icmpv6":
		return l4 != nil && l4.ICMPv6 != nil
	case "http":
		return l7 != nil && l7.HTTP != nil
	case "dns":
		return l7 != nil && l7.DNS != nil
	case "kafka":
		return l7 != nil && l7.Kafka != nil
	}
	return false
}

func typeMatch(v string, fl *Flow) bool {
	t, err := parseType(v)
	if err != nil {
		return false
	}
	switch t.name {
	case "dns":
		return fl.L7 != nil && fl.L7.DNS != nil
	case "http":
		return fl.L7 != nil && fl.L7.HTTP != nil
	case "kafka":
		return fl.L7 != nil && fl.L7.Kafka != nil
	case "l7":
		// A producer may leave the event type of proxy records unset; the
		// L7 part tells them anyway.
		if fl.L7 != nil {
			return true
		}
	}
	if fl.EventType == nil || fl.EventType.Type != t.typ {
		return false
	}
	return !t.matchSub || fl.EventType.SubType == t.sub
}

// parseIPs checks addresses, and writes them as flows do (IPv4 dotted, IPv6 compressed).
func parseIPs(vs []string) ([]string, error) {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("bad address %q", v)
		}
		out = append(out, a.Unmap().String())
	}
	return out, nil
}
