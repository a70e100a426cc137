package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
)

// Outcome is the verdict of a decision as the CLI and the scenario runner report it.
type Outcome string

const (
	OutcomeAllowed       Outcome = "allowed"
	OutcomeDefaultDenied Outcome = "default-denied"
	// OutcomeDenied is a drop by a deny rule.
	OutcomeDenied Outcome = "denied"
	// OutcomeL7 hands the flow to the HTTP proxy, which judges each request by the HTTP rules. In
	// a DirectionDecision it is any proxy verdict of the map state, whichever parser's.
	OutcomeL7 Outcome = "l7"
	// OutcomeKafka hands the flow to the Kafka proxy, which judges each request by the kafka rules
	// (Cilium 1.19's semantics) and answers what they refuse with TOPIC_AUTHORIZATION_FAILED.
	OutcomeKafka Outcome = "kafka-proxy"
	// OutcomeDNS hands the flow to the DNS proxy: it answers the names the dns rules allow and
	// REFUSES the others (and learns the answers for toFQDNs).
	OutcomeDNS Outcome = "dns-proxy"
	// OutcomeOnceResolved is allowed by a toFQDNs rule once the source resolves a name of the
	// destination through the DNS proxy with a dns rule that allows it (State.DecideResolved).
	OutcomeOnceResolved Outcome = "allowed-once-resolved"
	// OutcomeAudited passes: a deny rule of a policy in audit mode, or a default deny only such
	// policies switched on, would have dropped it, and the datapath reports it as AUDIT.
	OutcomeAudited Outcome = "audited"
)

// marks are the outcomes' one-character forms in a connectivity matrix and what each means, as
// predict's legend prints them: "X" is a drop by default deny, by a deny rule or for want of a
// proxy alike (the table shows traffic; -v and JSON say why). A new kind of cell, such as the
// toFQDNs cell (an address allowed once a DNS answer names it), is one more outcome and line here.
var marks = []struct {
	mark, meaning string
	of            []Outcome
}{
	{".", "allowed", []Outcome{OutcomeAllowed}},
	{"X", "dropped", []Outcome{OutcomeDefaultDenied, OutcomeDenied}},
	{"L", "HTTP proxy: each request is judged by the HTTP rules", []Outcome{OutcomeL7}},
	{"K", "Kafka proxy: each request is judged by the kafka rules, denied ones get TOPIC_AUTHORIZATION_FAILED", []Outcome{OutcomeKafka}},
	{"D", "DNS proxy: names the dns rules allow are answered, others REFUSED", []Outcome{OutcomeDNS}},
	{"N", "allowed once its name is resolved through an allowed DNS rule (toFQDNs)", []Outcome{OutcomeOnceResolved}},
	{"A", "allowed and reported AUDIT: a policy in audit mode would drop it", []Outcome{OutcomeAudited}},
}

// Mark is the outcome's one-character form in a connectivity matrix.
func (o Outcome) Mark() string {
	for _, m := range marks {
		if slices.Contains(m.of, o) {
			return m.mark
		}
	}
	return "X"
}

// Legend is what each mark of the engine's outcomes means, one `"mark" meaning` per mark.
func Legend() []string {
	out := make([]string, len(marks))
	for i, m := range marks {
		out[i] = fmt.Sprintf("%q %s", m.mark, m.meaning)
	}
	return out
}

// DirectionDecision is the verdict of one side of a flow: the source's egress or the
// destination's ingress.
type DirectionDecision struct {
	Outcome  Outcome
	Enforced bool
	Peer     ID
	Match    Match
	// Audit is the deny rule of a policy in audit mode that matches traffic this side lets
	// through (Verdict 0: none); AuditDefault says the side lets it through only because its
	// default deny is audited.
	Audit        Match
	AuditDefault bool
}

// audited says whether this side reports the traffic it lets through as AUDIT.
func (dd *DirectionDecision) audited() bool {
	return dd != nil && (dd.Audit.Entry != nil || dd.AuditDefault)
}

// Proxy is the proxy this side's map state hands the flow to; empty when it hands it to none.
func (dd *DirectionDecision) Proxy() L7Parser {
	if dd == nil || dd.Outcome != OutcomeL7 || dd.Match.Entry == nil {
		return ""
	}
	return dd.Match.Entry.L7.Parser()
}

// Decision is the verdict for a new flow from one address to another. Replies are not
// policy-checked: the datapath's connection tracking passes them, and this engine only decides
// the original direction.
type Decision struct {
	Outcome Outcome
	// Direction is the side that decided: the side that dropped, or ingress when both allowed.
	Direction Direction
	// Rule is the deciding rule; nil for a default-deny drop and for traffic no policy enforces.
	Rule *RuleInfo
	// EnforcedBy are the policy sections that switched default deny on, for default-deny drops
	// and for traffic passed because that default deny is audited.
	EnforcedBy []*RuleInfo
	// Audited are the rules of policies in audit mode that would have dropped the traffic: a
	// deny rule, or the sections that switched on an audited default deny (then also
	// EnforcedBy). The traffic passes; the datapath reports it as AUDIT.
	Audited []*RuleInfo
	// AuditDirection is the side that reported it.
	AuditDirection Direction
	L7             *L7Policy
	// Proxy is the proxy the flow goes to (OutcomeL7, OutcomeKafka, OutcomeDNS); empty for any
	// other decision.
	Proxy L7Parser
	// Resolved says, for a destination known by name (DecideResolved), how toFQDNs decides it.
	Resolved Resolution
	Egress   *DirectionDecision
	Ingress  *DirectionDecision

	rules map[RuleID]*RuleInfo // the state's, for MatchHTTP
}

// Reason explains the decision in a sentence.
func (d Decision) Reason() string {
	r := d.reason()
	if d.Resolved.Unlearned != nil {
		r += fmt.Sprintf("; %s would allow it once %s is resolved, but no dns rule lets the source resolve it through the DNS proxy: nothing is learned",
			d.Resolved.Unlearned, d.Resolved.Name)
	}
	return r
}

func (d Decision) reason() string {
	switch d.Outcome {
	case OutcomeDefaultDenied:
		if len(d.EnforcedBy) > 0 {
			return fmt.Sprintf("default deny on %s (no rule allows it; enforced by %s)", d.Direction, d.EnforcedBy[0].Policy)
		}
		return fmt.Sprintf("default deny on %s (no rule allows it; enforcement mode always)", d.Direction)
	case OutcomeDenied:
		return fmt.Sprintf("denied on %s by %s", d.Direction, d.Rule)
	case OutcomeL7:
		return fmt.Sprintf("handed to the HTTP proxy on %s by %s: each request is judged by the HTTP rules", d.Direction, d.Rule)
	case OutcomeKafka:
		return fmt.Sprintf("handed to the Kafka proxy on %s by %s: each request is judged by the kafka rules (Cilium 1.19's semantics), denied ones get TOPIC_AUTHORIZATION_FAILED", d.Direction, d.Rule)
	case OutcomeDNS:
		return fmt.Sprintf("handed to the DNS proxy on %s by %s: names the dns rules allow are answered, others REFUSED", d.Direction, d.Rule)
	case OutcomeOnceResolved:
		return fmt.Sprintf("allowed on egress by %s once %s is resolved through an allowed DNS rule (%s)", d.Rule, d.Resolved.Name, d.Resolved.DNSRule)
	case OutcomeAudited:
		if len(d.Audited) > 0 && d.Audited[0].Index < 0 {
			return fmt.Sprintf("allowed, reported AUDIT on %s: default deny of %s (audit mode) would drop it", d.AuditDirection, d.Audited[0].Policy)
		}
		if len(d.Audited) > 0 {
			return fmt.Sprintf("allowed, reported AUDIT on %s: %s (audit mode) would deny it", d.AuditDirection, d.Audited[0])
		}
	}
	if d.Rule == nil {
		return "allowed: no policy enforces this traffic"
	}
	return fmt.Sprintf("allowed on %s by %s", d.Direction, d.Rule)
}

// State is a compiled snapshot: every endpoint's map state plus the address cache used to decide.
type State struct {
	u         *universe
	endpoints map[EndpointKey]*EndpointState
	hosts     map[string]*EndpointState
	rules     map[RuleID]*RuleInfo
	policies  map[Key]*Policy
	// cidrsOf are the CIDRs each policy needs identities for.
	cidrsOf map[Key][]netip.Prefix
}

// Endpoint returns the state of a pod (none for a pod of another node than Options.Node).
func (s *State) Endpoint(k EndpointKey) (*EndpointState, bool) {
	st, ok := s.endpoints[k]
	return st, ok && st != nil
}

// Host returns the state of a node's host endpoint.
func (s *State) Host(node string) (*EndpointState, bool) {
	st, ok := s.hosts[node]
	return st, ok && st != nil
}

// Endpoints lists the pods in name order.
func (s *State) Endpoints() []EndpointKey {
	out := make([]EndpointKey, 0, len(s.endpoints))
	for k := range s.endpoints {
		out = append(out, k)
	}
	sortKeys(out)
	return out
}

// Rule returns a rule's origin.
func (s *State) Rule(id RuleID) *RuleInfo { return s.rules[id] }

// Identity returns the identity a pod has.
func (s *State) Identity(k EndpointKey) (*Identity, bool) {
	ep, ok := s.u.endpoints[k]
	if !ok || len(ep.IPs) == 0 {
		return nil, false
	}
	_, ent := s.u.resolve(ep.Node, ep.IPs[0])
	return ent.identity, ent.identity != nil
}

// IdentityOf returns an identity by number.
func (s *State) IdentityOf(id ID) (*Identity, bool) {
	ident, ok := s.u.ids[id]
	return ident, ok
}

// Identities lists every identity in number order.
func (s *State) Identities() []*Identity {
	out := make([]*Identity, 0, len(s.u.ids))
	for _, ident := range s.u.ids {
		out = append(out, ident)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Resolve returns the identity of an address as seen from a node.
func (s *State) Resolve(node string, ip netip.Addr) ID {
	id, _ := s.u.resolve(node, ip)
	return id
}

// IsPod reports whether an address is a pod's (of any node).
func (s *State) IsPod(ip netip.Addr) bool {
	_, ent := s.u.resolve("", ip.Unmap())
	return ent.endpoint != nil
}

// Addr returns a pod's first address of the requested family.
func (s *State) Addr(k EndpointKey, v6 bool) (netip.Addr, bool) {
	ep, ok := s.u.endpoints[k]
	if !ok {
		return netip.Addr{}, false
	}
	for _, ip := range ep.IPs {
		if ip.Is6() == v6 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Decide returns the verdict for a new flow from src to dst with a protocol and destination
// port (the ICMP type for ICMP). The source's egress is checked first, then the destination's
// ingress; both must allow.
func (s *State) Decide(src, dst netip.Addr, proto Proto, port uint16) Decision {
	src, dst = src.Unmap(), dst.Unmap()
	_, srcEnt := s.u.resolve("", src)
	_, dstEnt := s.u.resolve("", dst)
	d := Decision{rules: s.rules}

	if st, node := s.sideState(srcEnt); st != nil {
		peer, _ := s.u.resolve(node, dst)
		d.Egress = s.check(&st.Egress, peer, dst, proto, port)
	}
	if st, node := s.sideState(dstEnt); st != nil {
		peer, _ := s.u.resolve(node, src)
		d.Ingress = s.check(&st.Ingress, peer, src, proto, port)
	}
	for _, side := range []struct {
		dir Direction
		dd  *DirectionDecision
		st  *DirectionState
	}{{Egress, d.Egress, s.stateOf(srcEnt, Egress)}, {Ingress, d.Ingress, s.stateOf(dstEnt, Ingress)}} {
		if side.dd == nil {
			continue
		}
		switch side.dd.Outcome {
		case OutcomeDenied:
			d.Outcome, d.Direction, d.Rule = OutcomeDenied, side.dir, s.rules[side.dd.Match.Entry.Rules[0]]
			return d
		case OutcomeDefaultDenied:
			d.Outcome, d.Direction = OutcomeDefaultDenied, side.dir
			for _, id := range side.st.EnforcedBy {
				d.EnforcedBy = append(d.EnforcedBy, s.rules[id])
			}
			return d
		}
	}
	d.Outcome, d.Direction = OutcomeAllowed, Ingress
	for _, side := range []struct {
		dir Direction
		dd  *DirectionDecision
		st  *DirectionState
	}{{Egress, d.Egress, s.stateOf(srcEnt, Egress)}, {Ingress, d.Ingress, s.stateOf(dstEnt, Ingress)}} {
		if !side.dd.audited() || len(d.Audited) > 0 {
			continue
		}
		d.AuditDirection = side.dir
		if side.dd.Audit.Entry != nil {
			d.Audited = append(d.Audited, s.rules[side.dd.Audit.Entry.Rules[0]])
			continue
		}
		for _, id := range side.st.EnforcedBy {
			d.EnforcedBy = append(d.EnforcedBy, s.rules[id])
			d.Audited = append(d.Audited, s.rules[id])
		}
	}
	for _, side := range []struct {
		dir Direction
		dd  *DirectionDecision
	}{{Ingress, d.Ingress}, {Egress, d.Egress}} {
		if side.dd == nil || side.dd.Match.Entry == nil {
			continue
		}
		if p := side.dd.Proxy(); p != "" {
			d.Outcome, d.Direction, d.Rule, d.L7, d.Proxy = p.outcome(), side.dir, s.rules[side.dd.Match.Entry.Rules[0]], side.dd.Match.Entry.L7, p
			// A flow handed to a proxy is the proxy's to judge and report: the datapath does not
			// report an audit-mode deny that also matches it.
			d.Audited, d.AuditDirection = nil, 0
			return d
		}
		if d.Rule == nil {
			d.Direction, d.Rule = side.dir, s.rules[side.dd.Match.Entry.Rules[0]]
		}
	}
	if len(d.Audited) > 0 {
		d.Outcome = OutcomeAudited
	}
	return d
}

// sideState returns the policy state governing an address and the node whose view applies.
func (s *State) sideState(ent ipEntry) (*EndpointState, string) {
	switch {
	case ent.endpoint != nil:
		return s.endpoints[ent.endpoint.Key()], ent.endpoint.Node
	case ent.node != nil:
		return s.hosts[ent.node.Name], ent.node.Name
	}
	return nil, ""
}

func (s *State) stateOf(ent ipEntry, d Direction) *DirectionState {
	st, _ := s.sideState(ent)
	if st == nil {
		return nil
	}
	return st.Dir(d)
}

func (s *State) check(ds *DirectionState, peer ID, addr netip.Addr, proto Proto, port uint16) *DirectionDecision {
	m := ds.Lookup(peer, addr, proto, port)
	dd := &DirectionDecision{Enforced: ds.Enforced, Peer: peer, Match: m}
	switch m.Verdict {
	case VerdictDeny:
		dd.Outcome = OutcomeDenied
		return dd
	case VerdictProxy:
		dd.Outcome = OutcomeL7
	case VerdictAllow:
		dd.Outcome = OutcomeAllowed
	default:
		switch {
		case ds.Enforced && !ds.Audited:
			dd.Outcome = OutcomeDefaultDenied
			return dd
		case ds.Enforced:
			dd.Outcome, dd.AuditDefault = OutcomeAllowed, true
		default:
			dd.Outcome = OutcomeAllowed
		}
	}
	// The traffic passes this side: a deny rule of a policy in audit mode that matches it is
	// reported (the datapath's order: the audit rule before an audited default deny).
	if a := ds.LookupAudit(peer, addr, proto, port); a.Entry != nil {
		dd.Audit, dd.AuditDefault = a, false
	}
	return dd
}

// NodeCIDRs are the CIDRs a node's datapath needs identities for, each with the policies that
// name it: those of the policies with a section selecting a pod of the node or its host.
func (s *State) NodeCIDRs(node string) map[netip.Prefix][]Key {
	out := map[netip.Prefix][]Key{}
	seen := map[Key]bool{}
	add := func(g *group) {
		for k := range g.policies {
			if seen[k] {
				continue
			}
			seen[k] = true
			for _, p := range s.cidrsOf[k] {
				out[p] = append(out[p], k)
			}
		}
	}
	if hg := s.u.hostGroup[node]; hg != nil {
		add(hg)
	}
	for _, g := range s.u.groups {
		for _, k := range g.endpoints {
			if ep := s.u.endpoints[k]; ep != nil && ep.Node == node {
				add(g)
				break
			}
		}
	}
	for _, ks := range out {
		sort.Slice(ks, func(i, j int) bool { return keyLess(ks[i], ks[j]) })
	}
	return out
}

// IPCacheWithin is IPCache for a datapath that holds at most max entries. When the node's CIDRs
// do not fit, the policies naming the most of them are refused, one at a time, until what the
// others need fits; refused maps each to the entries it needed. A refused policy is not enforced
// on the node: the pods it selects must be failed closed (PoliciesOf), and no other pod loses an
// identity a policy of its own needs.
func (s *State) IPCacheWithin(node string, max int) (ipc map[netip.Prefix]ID, refused map[Key]int) {
	ipc = s.IPCache(node)
	if len(ipc) <= max {
		return ipc, nil
	}
	need := s.NodeCIDRs(node)
	count := map[Key]int{}
	for _, ks := range need {
		for _, k := range ks {
			count[k]++
		}
	}
	order := make([]Key, 0, len(count))
	for k := range count {
		order = append(order, k)
	}
	sort.Slice(order, func(i, j int) bool {
		if count[order[i]] != count[order[j]] {
			return count[order[i]] > count[order[j]]
		}
		return keyLess(order[j], order[i]) // of equals, the last by name goes first
	})
	refused = map[Key]int{}
	for _, k := range order {
		if len(ipc) <= max {
			break
		}
		refused[k] = count[k]
		for _, p := range s.cidrsOf[k] {
			if _, ok := ipc[p]; !ok || s.keptBy(need[p], refused) {
				continue
			}
			// A pod or node address is never a policy CIDR's to remove.
			if p.IsSingleIP() {
				if _, pod := s.u.ipcache[p.Addr()]; pod {
					continue
				}
			}
			delete(ipc, p)
		}
	}
	return ipc, refused
}

// keptBy says whether a policy not refused names the CIDR.
func (s *State) keptBy(by []Key, refused map[Key]int) bool {
	for _, k := range by {
		if _, ok := refused[k]; !ok {
			return true
		}
	}
	return false
}

// PoliciesOf are the policies with a section selecting the pod.
func (s *State) PoliciesOf(k EndpointKey) []Key {
	g := s.u.epGroup[k]
	if g == nil {
		return nil
	}
	out := make([]Key, 0, len(g.policies))
	for pk := range g.policies {
		out = append(out, pk)
	}
	sort.Slice(out, func(i, j int) bool { return keyLess(out[i], out[j]) })
	return out
}

// IPCache returns what the datapath of a node resolves addresses to: each pod address, each node
// address (host on the node itself, remote-node elsewhere) and the CIDRs of the policies that
// select an endpoint of the node (its pods, its host), with their identities. Addresses in none
// of them are world-ipv4 or world-ipv6. The CIDRs of other policies are left out: no rule on the
// node names them, and a rule's CIDR that contains one selects that one's identity too, so an
// address in it is judged the same either way; a tenant's long CIDR list fills only the
// ipcache of the nodes where it is enforced.
func (s *State) IPCache(node string) map[netip.Prefix]ID {
	need := s.NodeCIDRs(node)
	out := make(map[netip.Prefix]ID, len(s.u.ipcache)+len(need))
	for _, ci := range s.u.cidrs {
		if _, ok := need[ci.Prefix]; ok {
			out[ci.Prefix] = ci.ID
		}
	}
	for ip := range s.u.ipcache {
		id, _ := s.u.resolve(node, ip)
		out[netip.PrefixFrom(ip, ip.BitLen())] = id
	}
	if m := s.u.learned.Load(); m != nil {
		for ip, ci := range *m {
			out[netip.PrefixFrom(ip, ip.BitLen())] = ci.ID
		}
	}
	return out
}

// PodAt is the pod an address belongs to (of any node), with its identity.
func (s *State) PodAt(ip netip.Addr) (EndpointKey, *Identity, bool) {
	_, ent := s.u.resolve("", ip)
	if ent.endpoint == nil {
		return EndpointKey{}, nil, false
	}
	return ent.endpoint.Key(), ent.identity, true
}

// sideOf is the state of the end of a flow from src to dst that a direction judges: the
// source's egress, or the destination's ingress, and the node whose view applies.
func (s *State) sideOf(src, dst netip.Addr, d Direction) (*DirectionState, netip.Addr, string) {
	own, peer := dst, src
	if d == Egress {
		own, peer = src, dst
	}
	_, ent := s.u.resolve("", own.Unmap())
	st, node := s.sideState(ent)
	if st == nil {
		return nil, peer, ""
	}
	return st.Dir(d), peer, node
}

// EnforcedBy are the policy sections that switch default deny on for the end of a flow that a
// direction judges (the source's egress, the destination's ingress): the policies that make
// a flow no rule allows a default-deny drop there.
func (s *State) EnforcedBy(src, dst netip.Addr, d Direction) []*RuleInfo {
	ds, _, _ := s.sideOf(src, dst, d)
	if ds == nil {
		return nil
	}
	out := make([]*RuleInfo, 0, len(ds.EnforcedBy))
	for _, id := range ds.EnforcedBy {
		out = append(out, s.rules[id])
	}
	return out
}

// MatchOf is the entry the end of a flow that a direction judges decides it with; false when
// none matches.
func (s *State) MatchOf(src, dst netip.Addr, proto Proto, port uint16, d Direction) (Match, bool) {
	ds, peer, node := s.sideOf(src, dst, d)
	if ds == nil {
		return Match{}, false
	}
	id, _ := s.u.resolve(node, peer.Unmap())
	m := ds.Lookup(id, peer.Unmap(), proto, port)
	return m, m.Entry != nil
}
