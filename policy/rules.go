package policy

import (
	"fmt"
	"net/netip"
	"strconv"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netpact/netpact/api/ciliumv2"
)

// Direction is the direction of traffic as seen from the endpoint a policy applies to.
type Direction uint8

const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// RuleID numbers a rule for the datapath; 0 means "no rule" (a default-deny verdict).
type RuleID uint32

// Reserved rule ids for verdicts no policy rule wrote.
const (
	RuleNone RuleID = 0
	// RuleAllowLocalhost is the implicit allow of the local host to local endpoints.
	RuleAllowLocalhost RuleID = 1
	firstPolicyRule    RuleID = 16
)

// RuleInfo says where a rule came from.
type RuleInfo struct {
	ID      RuleID `json:"id"`
	Policy  Key    `json:"-"`
	Section string `json:"section"`
	// Index is the rule's position in its section, or -1 for a policy's default-deny switch.
	Index  int    `json:"index"`
	Path   string `json:"path"`
	Source Source `json:"source"`
	// Audit: the rule's policy is in audit mode (Policy.Audit).
	Audit bool `json:"audit,omitempty"`
	// Git is where the rule came from in Git, when the reconciler applied its policy.
	Git *RuleOrigin `json:"git,omitempty"`
}

func (r *RuleInfo) String() string {
	if r == nil {
		return "no rule"
	}
	if r.ID == RuleAllowLocalhost {
		return "implicit allow of the local host (allow-localhost)"
	}
	return fmt.Sprintf("%s %s (%s)", r.Policy, r.Path, r.Source)
}

var localhostRule = &RuleInfo{ID: RuleAllowLocalhost, Section: "ingress", Index: -1, Path: "allow-localhost"}

// L7Policy is the application-level rule set of a proxy verdict.
type L7Policy struct {
	HTTP  []ciliumv2.PortRuleHTTP  `json:"http,omitempty"`
	Kafka []ciliumv2.PortRuleKafka `json:"kafka,omitempty"`
	DNS   []ciliumv2.PortRuleDNS   `json:"dns,omitempty"`
	// rx are HTTP's expressions compiled, one per rule, when the policy was loaded: a request is
	// matched without a lock or a cache that one policy's expressions could thrash.
	rx []httpRegexps
	// dnsSel are the DNS rules compiled, one per rule, likewise.
	dnsSel []FQDNSelector
}

// newL7Policy is an L7Policy with its HTTP expressions and DNS names compiled (validation
// refused invalid ones).
func newL7Policy(http []ciliumv2.PortRuleHTTP, kafka []ciliumv2.PortRuleKafka, dns []ciliumv2.PortRuleDNS) *L7Policy {
	l := &L7Policy{HTTP: http, Kafka: kafka, DNS: dns, rx: make([]httpRegexps, len(http)), dnsSel: make([]FQDNSelector, len(dns))}
	for i, h := range http {
		l.rx[i] = httpRegexps{method: anchored(h.Method), path: anchored(h.Path), host: anchored(h.Host)}
	}
	for i, d := range dns {
		l.dnsSel[i], _ = NewFQDNSelector(d.MatchName, d.MatchPattern) // a failed one matches nothing
	}
	return l
}

func (l *L7Policy) merge(o *L7Policy) *L7Policy {
	if l == nil {
		return o
	}
	if o == nil {
		return l
	}
	return &L7Policy{
		HTTP:   append(append([]ciliumv2.PortRuleHTTP(nil), l.HTTP...), o.HTTP...),
		Kafka:  append(append([]ciliumv2.PortRuleKafka(nil), l.Kafka...), o.Kafka...),
		DNS:    append(append([]ciliumv2.PortRuleDNS(nil), l.DNS...), o.DNS...),
		rx:     append(append([]httpRegexps(nil), l.regexps()...), o.regexps()...),
		dnsSel: append(append([]FQDNSelector(nil), l.dnsSelectors()...), o.dnsSelectors()...),
	}
}

// dnsSelectors are the compiled DNS rules (compiled now for an L7Policy not made by newL7Policy).
func (l *L7Policy) dnsSelectors() []FQDNSelector {
	if len(l.dnsSel) == len(l.DNS) {
		return l.dnsSel
	}
	return newL7Policy(nil, nil, l.DNS).dnsSel
}

// cidrMatch selects CIDR identities inside prefix and outside every exception (Cilium CIDR rules).
type cidrMatch struct {
	prefix  netip.Prefix
	excepts []netip.Prefix
}

// peerSpec is the L3 part of a rule before it is resolved against the cluster.
type peerSpec struct {
	all       bool
	selectors []*selector
	entities  []string
	cidrs     []cidrMatch
	// blocks are Kubernetes ipBlocks, matched on the peer's address whatever its identity.
	blocks []netip.Prefix
	// fqdns are toFQDNs selectors (FQDNSelector.String()): they select the addresses DNS
	// answers gave for the names.
	fqdns []string
}

// portSpec is the L4 part of a rule: a protocol, a port range or a named port, and L7 rules.
type portSpec struct {
	proto  Proto
	lo, hi uint16
	name   string
	l7     *L7Policy
}

var allTraffic = []portSpec{{proto: ProtoAny, lo: 0, hi: 65535}}

type normRule struct {
	info  *RuleInfo
	dir   Direction
	deny  bool
	peers peerSpec
	ports []portSpec
	// none marks a rule that selects nothing, such as CNP's `ingress: [{}]`.
	none bool

	resolved    peerSet
	resolvedGen uint64
}

// subject selects the endpoints a section applies to: pods, or nodes for host policies.
type subject struct {
	host bool
	sel  *selector
}

// section is one Cilium rule (spec or specs[i]) or one NetworkPolicy.
type section struct {
	subject     subject
	enforce     [2]bool
	enforceRule [2]*RuleInfo
	rules       []*normRule
}

type normPolicy struct {
	key      Key
	sections []*section
	// cidrs are the CIDRs the policy needs identities for.
	cidrs []netip.Prefix
	// fqdns are its toFQDNs selectors, which need identities too.
	fqdns []FQDNSelector
	infos []*RuleInfo
}

type normalizer struct {
	p        *Policy
	np       *normPolicy
	nextRule func() RuleID
}

func (n *normalizer) info(section string, index int, path string) *RuleInfo {
	ri := &RuleInfo{ID: n.nextRule(), Policy: n.p.Key, Section: section, Index: index, Path: path, Source: n.p.position(path),
		Audit: n.p.Audit, Git: n.p.ruleOrigin(path)}
	n.np.infos = append(n.np.infos, ri)
	return ri
}

// normalize turns a validated policy into sections of uniform rules.
func normalize(p *Policy, nextRule func() RuleID) *normPolicy {
	n := &normalizer{p: p, np: &normPolicy{key: p.Key}, nextRule: nextRule}
	if p.KNP != nil {
		n.knp(p.KNP)
	} else {
		for i := range p.Cilium {
			n.cilium(&p.Cilium[i], p.rulePath(i))
		}
	}
	return n.np
}

// peerSelector applies Cilium's namespace rules to a from/toEndpoints selector.
func peerSelector(es *ciliumv2.EndpointSelector, ns string) *selector {
	s := ciliumSelector(es)
	if s.hasSource(sourceReserved) {
		return s.finish()
	}
	if !s.hasKey(LabelPodNamespace, false) {
		if ns == "" {
			s.add(requirement{source: sourceK8s, key: LabelPodNamespace, op: opExists})
		} else if !s.hasKey(LabelNamespacePfx, true) {
			s.add(requirement{source: sourceK8s, key: LabelPodNamespace, op: opIn, values: []string{ns}})
		}
	}
	return s.finish()
}

func (n *normalizer) cilium(r *ciliumv2.Rule, path string) {
	ns := n.p.Namespace
	sec := &section{}
	if r.NodeSelector != nil {
		sec.subject = subject{host: true, sel: ciliumSelector(r.NodeSelector).finish()}
	} else if r.EndpointSelector != nil {
		s := ciliumSelector(r.EndpointSelector)
		if ns != "" {
			kept := s.reqs[:0]
			for _, req := range s.reqs {
				if !(req.key == LabelPodNamespace && req.source == sourceK8s) {
					kept = append(kept, req)
				}
			}
			s.reqs = kept
			s.add(requirement{source: sourceK8s, key: LabelPodNamespace, op: opIn, values: []string{ns}})
		}
		sec.subject = subject{sel: s.finish()}
	}
	hasRules := [2]bool{len(r.Ingress) > 0 || len(r.IngressDeny) > 0, len(r.Egress) > 0 || len(r.EgressDeny) > 0}
	sec.enforce = hasRules
	if d := r.EnableDefaultDeny; d != nil {
		if d.Ingress != nil {
			sec.enforce[Ingress] = *d.Ingress
		}
		if d.Egress != nil {
			sec.enforce[Egress] = *d.Egress
		}
	}
	for d, on := range sec.enforce {
		if on {
			sec.enforceRule[d] = n.info(Direction(d).String(), -1, path)
		}
	}
	for i := range r.Ingress {
		sec.rules = append(sec.rules, n.ciliumIngress(&r.Ingress[i], fmt.Sprintf("%s.ingress[%d]", path, i), "ingress", i, false))
	}
	for i := range r.IngressDeny {
		sec.rules = append(sec.rules, n.ciliumIngress(&r.IngressDeny[i], fmt.Sprintf("%s.ingressDeny[%d]", path, i), "ingressDeny", i, true))
	}
	for i := range r.Egress {
		sec.rules = append(sec.rules, n.ciliumEgress(&r.Egress[i], fmt.Sprintf("%s.egress[%d]", path, i), "egress", i, false))
	}
	for i := range r.EgressDeny {
		sec.rules = append(sec.rules, n.ciliumEgress(&r.EgressDeny[i], fmt.Sprintf("%s.egressDeny[%d]", path, i), "egressDeny", i, true))
	}
	n.np.sections = append(n.np.sections, sec)
}

func (n *normalizer) ciliumIngress(r *ciliumv2.IngressRule, path, sectionName string, index int, deny bool) *normRule {
	nr := &normRule{info: n.info(sectionName, index, path), dir: Ingress, deny: deny}
	hasL3 := r.FromEndpoints != nil || r.FromCIDR != nil || r.FromCIDRSet != nil || r.FromEntities != nil
	for i := range r.FromEndpoints {
		nr.peers.selectors = append(nr.peers.selectors, peerSelector(&r.FromEndpoints[i], n.p.Namespace))
	}
	nr.peers.entities = r.FromEntities
	n.cidrPeers(&nr.peers, r.FromCIDR, r.FromCIDRSet)
	n.finishCilium(nr, hasL3, r.ToPorts, r.ICMPs)
	return nr
}

func (n *normalizer) ciliumEgress(r *ciliumv2.EgressRule, path, sectionName string, index int, deny bool) *normRule {
	nr := &normRule{info: n.info(sectionName, index, path), dir: Egress, deny: deny}
	// toFQDNs selects the addresses DNS answers gave for the names; until the DNS proxy has seen an
	// answer it selects nothing, as in Cilium.
	hasL3 := r.ToEndpoints != nil || r.ToCIDR != nil || r.ToCIDRSet != nil || r.ToEntities != nil || r.ToFQDNs != nil
	for i := range r.ToEndpoints {
		nr.peers.selectors = append(nr.peers.selectors, peerSelector(&r.ToEndpoints[i], n.p.Namespace))
	}
	nr.peers.entities = r.ToEntities
	n.cidrPeers(&nr.peers, r.ToCIDR, r.ToCIDRSet)
	for _, f := range r.ToFQDNs {
		if sel, err := NewFQDNSelector(f.MatchName, f.MatchPattern); err == nil {
			nr.peers.fqdns = append(nr.peers.fqdns, sel.String())
			n.np.fqdns = append(n.np.fqdns, sel)
		}
	}
	n.finishCilium(nr, hasL3, r.ToPorts, r.ICMPs)
	return nr
}

func (n *normalizer) cidrPeers(ps *peerSpec, plain []string, sets []ciliumv2.CIDRRule) {
	for _, c := range plain {
		if p, err := parseCIDR(c); err == nil {
			ps.cidrs = append(ps.cidrs, cidrMatch{prefix: p})
			n.np.cidrs = append(n.np.cidrs, p)
		}
	}
	for _, s := range sets {
		p, err := parseCIDR(s.CIDR)
		if err != nil {
			continue
		}
		cm := cidrMatch{prefix: p}
		n.np.cidrs = append(n.np.cidrs, p)
		for _, e := range s.ExceptCIDRs {
			if ep, err := parseCIDR(e); err == nil {
				cm.excepts = append(cm.excepts, ep)
				n.np.cidrs = append(n.np.cidrs, ep)
			}
		}
		ps.cidrs = append(ps.cidrs, cm)
	}
}

// finishCilium applies Cilium's rule shape: no peer and no port selects nothing; ports without
// a peer select every peer; a peer without ports allows every protocol, ICMP included.
func (n *normalizer) finishCilium(nr *normRule, hasL3 bool, prs []ciliumv2.PortRule, icmps []ciliumv2.ICMPRule) {
	hasL4 := len(prs) > 0 || len(icmps) > 0
	if !hasL3 && !hasL4 {
		nr.none = true
		return
	}
	if !hasL3 {
		nr.peers.all = true
	}
	if !hasL4 {
		nr.ports = allTraffic
		return
	}
	for _, pr := range prs {
		var l7 *L7Policy
		if pr.Rules != nil && (pr.Rules.HTTP != nil || pr.Rules.Kafka != nil || pr.Rules.DNS != nil) {
			l7 = newL7Policy(pr.Rules.HTTP, pr.Rules.Kafka, pr.Rules.DNS)
		}
		if len(pr.Ports) == 0 {
			for _, proto := range []Proto{ProtoTCP, ProtoUDP, ProtoSCTP} {
				nr.ports = append(nr.ports, portSpec{proto: proto, lo: 0, hi: 65535, l7: l7})
			}
			continue
		}
		for _, pp := range pr.Ports {
			protos := []Proto{ciliumProtocols[pp.Protocol]}
			if protos[0] == ProtoAny {
				protos = []Proto{ProtoTCP, ProtoUDP, ProtoSCTP}
			}
			num, named, _ := parsePortString(pp.Port)
			for _, proto := range protos {
				ps := portSpec{proto: proto, l7: l7}
				switch {
				case named:
					ps.name = pp.Port
				case num == 0:
					ps.lo, ps.hi = 0, 65535
				default:
					ps.lo, ps.hi = uint16(num), uint16(num)
					if pp.EndPort > 0 {
						ps.hi = uint16(pp.EndPort)
					}
				}
				nr.ports = append(nr.ports, ps)
			}
		}
	}
	for _, ir := range icmps {
		for _, f := range ir.Fields {
			proto, typ, err := icmpType(f)
			if err == nil {
				nr.ports = append(nr.ports, portSpec{proto: proto, lo: uint16(typ), hi: uint16(typ)})
			}
		}
	}
}

func (n *normalizer) knp(np *networkingv1.NetworkPolicy) {
	ns := np.Namespace
	subj := &selector{}
	k8sSelector(&np.Spec.PodSelector, "", subj)
	subj.add(requirement{source: sourceK8s, key: LabelPodNamespace, op: opIn, values: []string{ns}})
	sec := &section{subject: subject{sel: subj.finish()}}
	for _, t := range np.Spec.PolicyTypes {
		d := Ingress
		if t == networkingv1.PolicyTypeEgress {
			d = Egress
		}
		sec.enforce[d] = true
		sec.enforceRule[d] = n.info(d.String(), -1, "spec.policyTypes")
	}
	if sec.enforce[Ingress] {
		for i, r := range np.Spec.Ingress {
			path := fmt.Sprintf("spec.ingress[%d]", i)
			sec.rules = append(sec.rules, n.knpRule(Ingress, r.From, r.Ports, ns, path, i))
		}
	}
	if sec.enforce[Egress] {
		for i, r := range np.Spec.Egress {
			path := fmt.Sprintf("spec.egress[%d]", i)
			sec.rules = append(sec.rules, n.knpRule(Egress, r.To, r.Ports, ns, path, i))
		}
	}
	n.np.sections = append(n.np.sections, sec)
}

func (n *normalizer) knpRule(d Direction, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, ns, path string, index int) *normRule {
	nr := &normRule{info: n.info(d.String(), index, path), dir: d}
	if len(peers) == 0 {
		nr.peers.all = true
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			outer, err := parseCIDR(peer.IPBlock.CIDR)
			if err != nil {
				continue
			}
			var ex []netip.Prefix
			for _, e := range peer.IPBlock.Except {
				if ep, err := parseCIDR(e); err == nil {
					ex = append(ex, ep)
				}
			}
			nr.peers.blocks = append(nr.peers.blocks, subtractPrefixes(outer, ex)...)
			continue
		}
		s := &selector{}
		k8sSelector(peer.PodSelector, "", s)
		if peer.NamespaceSelector != nil {
			k8sSelector(peer.NamespaceSelector, LabelNamespacePfx, s)
			s.add(requirement{source: sourceK8s, key: LabelPodNamespace, op: opExists})
		} else {
			s.add(requirement{source: sourceK8s, key: LabelPodNamespace, op: opIn, values: []string{ns}})
		}
		nr.peers.selectors = append(nr.peers.selectors, s.finish())
	}
	if len(ports) == 0 {
		nr.ports = allTraffic
		return nr
	}
	for _, p := range ports {
		proto := ProtoTCP
		if p.Protocol != nil {
			proto, _ = ParseProto(string(*p.Protocol))
		}
		ps := portSpec{proto: proto, lo: 0, hi: 65535}
		if p.Port != nil {
			if p.Port.Type == intstr.String {
				if n, err := strconv.Atoi(p.Port.StrVal); err == nil {
					ps.lo, ps.hi = uint16(n), uint16(n)
				} else {
					ps.name = p.Port.StrVal
				}
			} else {
				ps.lo, ps.hi = uint16(p.Port.IntVal), uint16(p.Port.IntVal)
				if p.EndPort != nil {
					ps.hi = uint16(*p.EndPort)
				}
			}
		}
		nr.ports = append(nr.ports, ps)
	}
	return nr
}

// subtractPrefixes returns disjoint prefixes covering outer minus every exception.
func subtractPrefixes(outer netip.Prefix, excepts []netip.Prefix) []netip.Prefix {
	for _, e := range excepts {
		if e.Bits() <= outer.Bits() && e.Contains(outer.Addr()) {
			return nil
		}
	}
	overlaps := false
	for _, e := range excepts {
		if outer.Overlaps(e) {
			overlaps = true
			break
		}
	}
	if !overlaps {
		return []netip.Prefix{outer}
	}
	if outer.Bits() == outer.Addr().BitLen() {
		return nil
	}
	lo := netip.PrefixFrom(outer.Addr(), outer.Bits()+1)
	hiAddr := lo.Addr()
	// The upper half starts at the lower half's address with the next bit set.
	b := hiAddr.AsSlice()
	bit := outer.Bits()
	b[bit/8] |= 0x80 >> (bit % 8)
	hiAddr, _ = netip.AddrFromSlice(b)
	if outer.Addr().Is4() {
		hiAddr = hiAddr.Unmap()
	}
	hi := netip.PrefixFrom(hiAddr, outer.Bits()+1)
	return append(subtractPrefixes(lo, excepts), subtractPrefixes(hi, excepts)...)
}
