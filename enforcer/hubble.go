package enforcer

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/policy"
)

// HubbleFlows turns one datapath flow event into the flows Hubble reports for it, each naming
// the policy, rule and source (file, line, Git revision) that decided: a new flow a policy
// decided is a policy verdict; a dropped packet is a policy verdict (when policy dropped it) and
// a drop, as Cilium emits both; an L7 event is a request, and the response when the request
// went on. A default-deny drop names the policies that select the pod in that direction, which
// made it default deny.
func (e *Enforcer) HubbleFlows(f datapath.Flow, node string) []*observe.Flow {
	v := e.snapshot()
	st := v.state
	c := e.hubbleCacheOf(st)
	base := e.hubbleBase(f, node, st, c)
	if f.L7 != nil {
		return e.hubbleL7(f, base, st, c)
	}
	var pols []*observe.Policy
	matchType := uint32(observe.PolicyMatchNone)
	switch {
	case f.Reason == datapath.ReasonDropDefaultDeny || f.Reason == datapath.ReasonAuditDefaultDeny:
		pols = defaultDenyPolicies(st, f, c)
	case f.Rule != policy.RuleNone && st != nil:
		if ri := st.Rule(f.Rule); ri != nil {
			pols = []*observe.Policy{c.policy(ri, f.Direction)}
			matchType = policyMatchType(st, f)
		}
	}
	denied := f.Dropped() || f.Reason.Audited()
	setPolicies(base, f.Direction, pols, denied)

	if f.Dropped() {
		// A dropped packet's direction of flow is not known (Hubble prints <>).
		base.IsReply = nil
	}
	var out []*observe.Flow
	if f.Rule != policy.RuleNone || f.Reason == datapath.ReasonDropDefaultDeny || f.Reason.Audited() ||
		f.Reason == datapath.ReasonDropDeny || f.Reason == datapath.ReasonForwardUnenforced {
		pv := *base
		pv.EventType = &observe.CiliumEventType{Type: observe.MessageTypePolicyVerdict}
		pv.PolicyMatchType = matchType
		switch {
		case f.Dropped():
			pv.Verdict = observe.Dropped
			pv.DropReason, pv.DropReasonDesc = dropReason(f.Reason)
		case f.Reason.Audited():
			pv.Verdict = observe.Audit
		default:
			pv.Verdict = observe.Forwarded
		}
		out = append(out, &pv)
	}
	if f.Dropped() {
		d := *base
		d.EventType = &observe.CiliumEventType{Type: observe.MessageTypeDrop, SubType: int32(dropCode(f.Reason))}
		d.Verdict = observe.Dropped
		d.DropReason, d.DropReasonDesc = dropReason(f.Reason)
		out = append(out, &d)
	}
	return out
}

// hubbleCache holds what HubbleFlows derives from one compiled state and would otherwise build
// again for every event: the identities' sorted labels and the rules' policies as Hubble names
// them. Building them was over half of the conversion's CPU (BenchmarkNodeFlowEvents' profile,
// docs/benchmarks.md). The flows of many events share these values: nothing downstream of
// HubbleFlows modifies a flow. Keys are pointers into the state, whose identities and rules do
// not change once made; a new state starts a new cache.
type hubbleCache struct {
	st       *policy.State
	mu       sync.Mutex
	labels   map[*policy.Identity][]string
	policies map[hubblePolicyKey]*observe.Policy
}

type hubblePolicyKey struct {
	ri *policy.RuleInfo
	d  policy.Direction
}

// hubbleCacheOf is the cache of st, a new one when the state changed since the last event.
func (e *Enforcer) hubbleCacheOf(st *policy.State) *hubbleCache {
	if c := e.hubble.Load(); c != nil && c.st == st {
		return c
	}
	c := &hubbleCache{st: st, labels: map[*policy.Identity][]string{}, policies: map[hubblePolicyKey]*observe.Policy{}}
	e.hubble.Store(c)
	return c
}

// identityLabels is ident.Labels(), sorted once per state.
func (c *hubbleCache) identityLabels(ident *policy.Identity) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.labels[ident]
	if !ok {
		l = ident.Labels()
		c.labels[ident] = l
	}
	return l
}

// policy is hubblePolicy(ri, d), built once per state.
func (c *hubbleCache) policy(ri *policy.RuleInfo, d policy.Direction) *observe.Policy {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := hubblePolicyKey{ri, d}
	p, ok := c.policies[k]
	if !ok {
		p = hubblePolicy(ri, d)
		c.policies[k] = p
	}
	return p
}

// hubbleBase is what every flow of the event has: time, addresses, ports, both ends, direction.
func (e *Enforcer) hubbleBase(f datapath.Flow, node string, st *policy.State, c *hubbleCache) *observe.Flow {
	fl := &observe.Flow{Time: observe.TimestampOf(eventTime(f.Time)), NodeName: node, Type: observe.L3L4,
		IP:               &observe.IP{Source: f.Src.String(), Destination: f.Dst.String(), IPVersion: observe.IPv4},
		TrafficDirection: observe.Ingress, IsReply: observe.Bool(false)}
	if f.Direction == policy.Egress {
		fl.TrafficDirection = observe.Egress
	}
	if f.Src.Is6() && !f.Src.Is4In6() {
		fl.IP.IPVersion = observe.IPv6
	}
	switch f.Proto {
	case policy.ProtoTCP:
		fl.L4 = &observe.Layer4{TCP: &observe.TCP{SourcePort: uint32(f.SrcPort), DestinationPort: uint32(f.DstPort), Flags: tcpFlags(f.TCPFlags)}}
	case policy.ProtoUDP:
		fl.L4 = &observe.Layer4{UDP: &observe.UDP{SourcePort: uint32(f.SrcPort), DestinationPort: uint32(f.DstPort)}}
	case policy.ProtoSCTP:
		fl.L4 = &observe.Layer4{SCTP: &observe.SCTP{SourcePort: uint32(f.SrcPort), DestinationPort: uint32(f.DstPort)}}
	case policy.ProtoICMP:
		fl.L4 = &observe.Layer4{ICMPv4: &observe.ICMPv4{Type: uint32(f.DstPort)}}
	case policy.ProtoICMPv6:
		fl.L4 = &observe.Layer4{ICMPv6: &observe.ICMPv6{Type: uint32(f.DstPort)}}
	}
	fl.Source = e.hubbleEndpoint(st, c, f.Src, f.SrcIdentity)
	fl.Destination = e.hubbleEndpoint(st, c, f.Dst, f.DstIdentity)
	if f.Service != 0 && e.dp != nil {
		// "namespace/name 10.96.0.10:53/UDP"
		if name, _, ok := strings.Cut(e.dp.ServiceName(f.Service), " "); ok {
			ns, n, _ := strings.Cut(name, "/")
			fl.DestinationService = &observe.Service{Namespace: ns, Name: n}
		}
	}
	if st != nil {
		// An address learned from DNS answers (toFQDNs): its names, as Hubble prints them.
		if ident, ok := st.IdentityOf(policy.ID(fl.Destination.Identity)); ok && len(ident.FQDNs) > 0 {
			fl.DestinationNames = e.namesOf(f.Dst.Unmap())
		}
	}
	return fl
}

// hubbleEndpoint is one end of a flow: the pod an address belongs to, with its identity's
// labels, or the identity alone (world, a CIDR, the host).
func (e *Enforcer) hubbleEndpoint(st *policy.State, c *hubbleCache, a netip.Addr, id policy.ID) *observe.Endpoint {
	ep := &observe.Endpoint{Identity: uint32(id)}
	if st == nil {
		return ep
	}
	if id == 0 {
		ep.Identity = uint32(st.Resolve("", a))
	}
	if k, ident, ok := st.PodAt(a); ok {
		ep.Namespace, ep.PodName = k.Namespace, k.Name
		ep.ID = e.snapshot().ids[k]
		if ident != nil {
			ep.Identity = uint32(ident.ID)
			ep.Labels = c.identityLabels(ident)
		}
		return ep
	}
	if ident, ok := st.IdentityOf(policy.ID(ep.Identity)); ok {
		ep.Labels = c.identityLabels(ident)
	}
	return ep
}

// hubbleL7 is an L7 event: the request with the proxy's verdict and, when it went on, the
// response.
func (e *Enforcer) hubbleL7(f datapath.Flow, base *observe.Flow, st *policy.State, c *hubbleCache) []*observe.Flow {
	base.Type = observe.L7
	base.EventType = &observe.CiliumEventType{Type: observe.MessageTypeAccessLog}
	if st == nil {
		// Before the first compile: nothing to name.
	} else if ri := st.Rule(f.Rule); ri != nil {
		setPolicies(base, f.Direction, []*observe.Policy{c.policy(ri, f.Direction)}, f.L7.Denied)
	}
	req, resp := *base, *base
	req.Verdict, resp.Verdict = observe.Forwarded, observe.Forwarded
	if f.L7.Denied {
		req.Verdict = observe.Dropped
	}
	latency := uint64(max(f.L7.Latency, 0))
	if d := f.L7.DNS; d != nil {
		q := &observe.DNS{Query: d.Query, ObservationSource: "proxy"}
		if d.Type != "" {
			q.Qtypes = []string{d.Type}
		}
		req.L7 = &observe.Layer7{Type: observe.L7Request, DNS: q}
		if f.L7.Denied || d.RCode == "" {
			return []*observe.Flow{&req}
		}
		a := *q
		a.Rcode = rcodeNumber(d.RCode)
		a.TTL = uint32(d.TTL.Seconds())
		for _, ip := range d.IPs {
			a.IPs = append(a.IPs, ip.String())
		}
		if len(a.IPs) > 0 {
			a.Rrtypes = a.Qtypes
		}
		// The answer goes back to the pod: Hubble prints it with the ends swapped.
		resp.IP = &observe.IP{Source: base.IP.Destination, Destination: base.IP.Source, IPVersion: base.IP.IPVersion}
		resp.Source, resp.Destination = base.Destination, base.Source
		resp.L4 = swapPorts(base.L4)
		resp.IsReply = observe.Bool(true)
		resp.L7 = &observe.Layer7{Type: observe.L7Response, LatencyNs: latency, DNS: &a}
		return []*observe.Flow{&req, &resp}
	}
	if k := f.L7.Kafka; k != nil {
		kr := &observe.Kafka{APIKey: k.APIKey, APIVersion: int32(k.APIVersion), CorrelationID: k.CorrelationID, Topic: strings.Join(k.Topics, ",")}
		req.L7 = &observe.Layer7{Type: observe.L7Request, Kafka: kr}
		if k.ErrorCode == 0 {
			return []*observe.Flow{&req}
		}
		// The proxy's own answer to a denied request, as Cilium's proxy logged it.
		ka := *kr
		ka.ErrorCode = int32(k.ErrorCode)
		resp.Verdict = observe.Dropped
		resp.IP = &observe.IP{Source: base.IP.Destination, Destination: base.IP.Source, IPVersion: base.IP.IPVersion}
		resp.Source, resp.Destination = base.Destination, base.Source
		resp.L4 = swapPorts(base.L4)
		resp.IsReply = observe.Bool(true)
		resp.L7 = &observe.Layer7{Type: observe.L7Response, Kafka: &ka}
		return []*observe.Flow{&req, &resp}
	}
	h := &observe.HTTP{Method: f.L7.Method, URL: "http://" + f.L7.Host + f.L7.Path, Protocol: f.L7.Protocol}
	req.L7 = &observe.Layer7{Type: observe.L7Request, HTTP: h}
	if f.L7.Denied || f.L7.Status == 0 {
		return []*observe.Flow{&req}
	}
	rh := *h
	rh.Code = uint32(f.L7.Status)
	resp.IP = &observe.IP{Source: base.IP.Destination, Destination: base.IP.Source, IPVersion: base.IP.IPVersion}
	resp.Source, resp.Destination = base.Destination, base.Source
	resp.L4 = swapPorts(base.L4)
	resp.IsReply = observe.Bool(true)
	resp.L7 = &observe.Layer7{Type: observe.L7Response, LatencyNs: latency, HTTP: &rh}
	return []*observe.Flow{&req, &resp}
}

func swapPorts(l4 *observe.Layer4) *observe.Layer4 {
	switch {
	case l4 == nil:
		return nil
	case l4.TCP != nil:
		return &observe.Layer4{TCP: &observe.TCP{SourcePort: l4.TCP.DestinationPort, DestinationPort: l4.TCP.SourcePort}}
	case l4.UDP != nil:
		return &observe.Layer4{UDP: &observe.UDP{SourcePort: l4.UDP.DestinationPort, DestinationPort: l4.UDP.SourcePort}}
	}
	return l4
}

// setPolicies puts the deciding policies in the list of the flow's direction and verdict.
func setPolicies(fl *observe.Flow, d policy.Direction, pols []*observe.Policy, denied bool) {
	switch {
	case d == policy.Egress && denied:
		fl.EgressDeniedBy = pols
	case d == policy.Egress:
		fl.EgressAllowedBy = pols
	case denied:
		fl.IngressDeniedBy = pols
	default:
		fl.IngressAllowedBy = pols
	}
}

// hubblePolicy names a rule's policy as Hubble does, with netpact's rule and source.
func hubblePolicy(ri *policy.RuleInfo, d policy.Direction) *observe.Policy {
	p := &observe.Policy{Name: ri.Policy.Name, Namespace: ri.Policy.Namespace, Kind: string(ri.Policy.Kind), Rule: ri.Path,
		Direction: observe.Ingress}
	if ri.ID == policy.RuleAllowLocalhost {
		p.Name, p.Kind = "allow-localhost", "Implicit"
	}
	if d == policy.Egress {
		p.Direction = observe.Egress
	}
	if ri.Index < 0 {
		p.Rule = "default deny (" + ri.Path + ")"
	}
	if ri.Audit {
		p.Rule += " (audit mode)"
	}
	if p.Kind != "Implicit" {
		p.Labels = []string{"k8s:io.cilium.k8s.policy.derived-from=" + string(ri.Policy.Kind), "k8s:io.cilium.k8s.policy.name=" + ri.Policy.Name}
		if ri.Policy.Namespace != "" {
			p.Labels = append(p.Labels, "k8s:io.cilium.k8s.policy.namespace="+ri.Policy.Namespace)
		}
	}
	switch {
	case ri.Git != nil:
		p.Source = &observe.PolicySource{Repository: ri.Git.Repository, Path: ri.Git.Path, Line: ri.Git.Line, GitRevision: ri.Git.Revision}
	case ri.Source.File != "" && ri.Source.File != ri.Policy.String():
		// Read from a file (the local node): a policy read from the API server has no file
		// of its own, only the reconciler's annotations.
		p.Source = &observe.PolicySource{Path: ri.Source.File, Line: ri.Source.Line, Column: ri.Source.Column}
	}
	return p
}

// defaultDenyPolicies are the policies whose sections switched default deny on for the pod in
// the event's direction: what made the drop (or the audit) happen.
func defaultDenyPolicies(st *policy.State, f datapath.Flow, c *hubbleCache) []*observe.Policy {
	if st == nil {
		return nil
	}
	var out []*observe.Policy
	for _, ri := range st.EnforcedBy(f.Src, f.Dst, f.Direction) {
		out = append(out, c.policy(ri, f.Direction))
	}
	return out
}

// policyMatchType is Cilium's match type of the entry that decided: L3-only (an identity, any
// port), L4-only (any peer, a port), L3-L4, or all.
func policyMatchType(st *policy.State, f datapath.Flow) uint32 {
	m, ok := st.MatchOf(f.Src, f.Dst, f.Proto, f.DstPort, f.Direction)
	if !ok {
		return observe.PolicyMatchNone
	}
	_, prefix := m.Key.Prefix()
	peer := m.Key.Identity != 0 || prefix
	port := m.Key.Proto != policy.ProtoAny
	switch {
	case peer && port:
		return observe.PolicyMatchL3L4
	case peer:
		return observe.PolicyMatchL3Only
	case port:
		return observe.PolicyMatchL4Only
	}
	return observe.PolicyMatchAll
}

func tcpFlags(b uint8) *observe.TCPFlags {
	if b == 0 {
		return nil
	}
	return &observe.TCPFlags{FIN: b&0x01 != 0, SYN: b&0x02 != 0, RST: b&0x04 != 0, PSH: b&0x08 != 0, ACK: b&0x10 != 0,
		URG: b&0x20 != 0, ECE: b&0x40 != 0, CWR: b&0x80 != 0}
}

// dropCodes are the datapath's drop reasons as Cilium's drop reason codes (pkg/monitor/api's
// drop.go): the nearest Cilium reason for each of netpact's.
var dropCodes = map[datapath.Reason]uint32{
	datapath.ReasonDropDefaultDeny:  133, // POLICY_DENIED
	datapath.ReasonDropDeny:         181, // POLICY_DENY
	datapath.ReasonDropSpoof:        132, // INVALID_SOURCE_IP
	datapath.ReasonDropNotEndpoint:  150, // UNKNOWN_L3_TARGET_ADDRESS
	datapath.ReasonDropMalformed:    134, // INVALID_PACKET_DROPPED
	datapath.ReasonDropFragNoFirst:  134,
	datapath.ReasonDropEthertype:    139, // UNSUPPORTED_L3_PROTOCOL
	datapath.ReasonDropFailClosed:   203, // DROP_EP_NOT_READY
	datapath.ReasonDropUntranslated: 158, // SERVICE_BACKEND_NOT_FOUND
	datapath.ReasonDropNoProxy:      180, // PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL
	datapath.ReasonDropProxyDown:    180,
	datapath.ReasonDropProxyGone:    180,
	// A flow that went past the L7 proxy an L7 rule sends it through: policy denies it.
	datapath.ReasonDropProxyBypass:  133,
	datapath.ReasonDropProxyMidflow: 133,
}

func dropCode(r datapath.Reason) uint32 {
	if c, ok := dropCodes[r]; ok {
		return c
	}
	return 134 // INVALID_PACKET_DROPPED: a reason added without a code here
}

func dropReason(r datapath.Reason) (uint32, observe.DropReason) {
	c := dropCode(r)
	return c, observe.DropReasonFromCode(c)
}

// rcodeNumber is a DNS rcode's number from its name (miekg/dns's names).
func rcodeNumber(name string) uint32 {
	for i, n := range []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"} {
		if strings.EqualFold(name, n) {
			return uint32(i)
		}
	}
	return 0
}

// bootOffset is the wall time of the monotonic clock's zero, which the datapath's event times
// count from.
var bootOffset = func() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano()) - time.Duration(ts.Nano())
}()

// eventTime is an event's wall time; now for an event without one (the proxies').
func eventTime(mono time.Duration) time.Time {
	if mono == 0 || bootOffset == 0 {
		return time.Now()
	}
	return time.Unix(0, int64(bootOffset+mono))
}
