package policy

import (
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// Learned is what DNS answers taught a node: each address with the names (any case, with or
// without the trailing dot) it was an answer for. An address whose names some toFQDNs selector
// matches gets a node-local FQDN identity, one per set of matching selectors and CIDR identity the
// address has besides (Cilium's fqdn:<selector> labels with reserved:world): a toFQDNs rule
// selects the identities of its selector, a CIDR or world rule those of its CIDR. Pod and node
// addresses keep their own identities: toFQDNs does not select in-cluster addresses, as in
// Cilium.
type Learned map[netip.Addr][]string

// sourceFQDN is the label source of FQDN identities' selector labels.
const sourceFQDN = "fqdn"

// addFQDNs gives the universe its FQDN identities: one for each learned address's class (first,
// in address order, so that a restarted enforcer's addresses keep the numbers the datapath holds)
// and, allocated when the policy is (as Cilium >= 1.18 does), one per selector for addresses in no
// policy CIDR, so that the first answer for a name needs only an ipcache write.
func (u *universe) addFQDNs(alloc *allocator, sels map[string]FQDNSelector, learned Learned) {
	u.fqdnSels = sels
	u.fqdnKeys = make([]string, 0, len(sels))
	for k := range sels {
		u.fqdnKeys = append(u.fqdnKeys, k)
	}
	sort.Strings(u.fqdnKeys)
	u.classByKey = map[string]*Identity{}
	addrs := make([]netip.Addr, 0, len(learned))
	for ip := range learned {
		addrs = append(addrs, ip)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	byAddr := map[netip.Addr]*Identity{}
	for _, ip := range addrs {
		if s, base, ok := u.classOf(ip, learned[ip]); ok {
			ip = ip.Unmap()
			byAddr[ip] = u.class(alloc, s, base, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	for _, k := range u.fqdnKeys {
		for _, w := range []ID{IDWorldIPv4, IDWorldIPv6} {
			u.class(alloc, []string{k}, u.ids[w], netip.Prefix{})
		}
	}
	u.learned.Store(&byAddr)
}

// classOf is the class of a learned address: the selectors its names match and the identity it
// has besides. False when no selector matches or the address is a pod's or a node's.
func (u *universe) classOf(ip netip.Addr, names []string) ([]string, *Identity, bool) {
	ip = ip.Unmap()
	if _, inCluster := u.ipcache[ip]; inCluster || !ip.IsValid() {
		return nil, nil, false
	}
	var sels []string
	for _, k := range u.fqdnKeys {
		s := u.fqdnSels[k]
		for _, n := range names {
			if s.Matches(n) {
				sels = append(sels, k)
				break
			}
		}
	}
	if len(sels) == 0 {
		return nil, nil, false
	}
	return sels, u.cidrIdentityOf(ip), true
}

func classKey(sels []string, base *Identity) string {
	return "fqdn:" + strings.Join(sels, ",") + "|" + base.Prefix.String()
}

// class returns the FQDN identity of a class, allocating it (preferring the number the prefer
// prefix had) when the universe has none yet.
func (u *universe) class(alloc *allocator, sels []string, base *Identity, prefer netip.Prefix) *Identity {
	k := classKey(sels, base)
	if ci, ok := u.classByKey[k]; ok {
		return ci
	}
	ls := labelSet{"world": {sourceReserved, ""}}
	for l, v := range base.labels {
		ls[l] = v
	}
	for _, s := range sels {
		ls["fqdn:"+s] = labelValue{sourceFQDN, ""}
	}
	ci := &Identity{ID: alloc.local(k, prefer), Kind: IdentityFQDN, Prefix: base.Prefix, FQDNs: sels, Base: base.ID, labels: ls}
	u.ids[ci.ID] = ci
	u.classes = append(u.classes, ci)
	u.classByKey[k] = ci
	return ci
}

// withFQDNClasses adds to a rule's peer identities the FQDN identities it selects: those of its
// toFQDNs selectors, and those whose addresses have, besides, an identity it selects (a CIDR,
// world).
func (u *universe) withFQDNClasses(ids []ID, fqdns []string) []ID {
	if len(u.classes) == 0 {
		return ids
	}
	have := make(map[ID]bool, len(ids))
	for _, id := range ids {
		have[id] = true
	}
	for _, ci := range u.classes {
		if have[ci.Base] || slices.ContainsFunc(fqdns, func(s string) bool { return slices.Contains(ci.FQDNs, s) }) {
			ids = append(ids, ci.ID)
		}
	}
	return ids
}

// learnedIdentity is the FQDN identity of a learned address.
func (u *universe) learnedIdentity(ip netip.Addr) (*Identity, bool) {
	m := u.learned.Load()
	if m == nil {
		return nil, false
	}
	ci, ok := (*m)[ip]
	return ci, ok
}

// SetLearned gives the engine what DNS answers taught the node, replacing what it had. When every
// address's class already has an identity, only the addresses' identities change (the states
// stay: an ipcache write enforces it) and it returns false; otherwise the universe is rebuilt and
// every endpoint recompiled, and it returns true.
func (e *Engine) SetLearned(l Learned) bool {
	e.learned = l
	byAddr := make(map[netip.Addr]*Identity, len(l))
	for ip, names := range l {
		sels, base, ok := e.u.classOf(ip, names)
		if !ok {
			continue
		}
		ci, ok := e.u.classByKey[classKey(sels, base)]
		if !ok {
			e.rebuild()
			return true
		}
		byAddr[ip.Unmap()] = ci
	}
	e.u.learned.Store(&byAddr)
	return false
}

// FQDNSelectors are the toFQDNs selectors of the compiled policies, sorted by String.
func (s *State) FQDNSelectors() []FQDNSelector {
	out := make([]FQDNSelector, 0, len(s.u.fqdnKeys))
	for _, k := range s.u.fqdnKeys {
		out = append(out, s.u.fqdnSels[k])
	}
	return out
}

// Resolution is how toFQDNs decides a flow to a destination known by DNS names.
type Resolution struct {
	// Name is the destination's name the source resolves.
	Name string
	// DNSRule is the dns rule that lets the source resolve it through the DNS proxy
	// (OutcomeOnceResolved).
	DNSRule *RuleInfo
	// Unlearned is the toFQDNs rule that would allow the flow once the name is learned, when no
	// dns rule lets the source resolve it (the flow stays dropped).
	Unlearned *RuleInfo
}

// DecideResolved is Decide for a destination outside the cluster that answers to DNS names: a
// flow default deny drops but that a toFQDNs rule would allow once an answer naming the
// destination is learned is OutcomeOnceResolved when the source's own lookups of a name go
// through the DNS proxy with a dns rule that allows it (only then is the answer learned), and
// stays dropped, with Resolution.Unlearned saying why, when they do not.
func (s *State) DecideResolved(src, dst netip.Addr, names []string, proto Proto, port uint16) Decision {
	d := s.Decide(src, dst, proto, port)
	if len(names) == 0 || d.Outcome != OutcomeDefaultDenied || d.Direction != Egress {
		return d
	}
	src, dst = src.Unmap(), dst.Unmap()
	_, srcEnt := s.u.resolve("", src)
	st, _ := s.sideState(srcEnt)
	sels, base, ok := s.u.classOf(dst, names)
	if st == nil || !ok {
		return d
	}
	// The class the answer would give the address; when it has no identity yet (names of several
	// selectors, an address in a policy CIDR), that of each selector alone.
	var ids []ID
	if ci, ok := s.u.classByKey[classKey(sels, base)]; ok {
		ids = append(ids, ci.ID)
	} else {
		for _, sel := range sels {
			if ci, ok := s.u.classByKey[classKey([]string{sel}, s.u.cidrIdentityOf(dst))]; ok {
				ids = append(ids, ci.ID)
			} else if ci, ok := s.u.classByKey[classKey([]string{sel}, s.u.familyWorld(dst))]; ok {
				ids = append(ids, ci.ID)
			}
		}
	}
	for _, id := range ids {
		dd := s.check(&st.Egress, id, dst, proto, port)
		if dd.Outcome == OutcomeDenied || dd.Outcome == OutcomeDefaultDenied {
			continue
		}
		rule := s.rules[dd.Match.Entry.Rules[0]]
		for _, name := range names {
			if dnsRule := s.dnsRuleAllowing(&st.Egress, name); dnsRule != nil {
				return Decision{Outcome: OutcomeOnceResolved, Direction: Egress, Rule: rule, Egress: dd, rules: s.rules,
					Resolved: Resolution{Name: name, DNSRule: dnsRule}}
			}
		}
		d.Resolved = Resolution{Name: names[0], Unlearned: rule}
		return d
	}
	return d
}

func (u *universe) familyWorld(ip netip.Addr) *Identity {
	if ip.Is4() {
		return u.ids[IDWorldIPv4]
	}
	return u.ids[IDWorldIPv6]
}

// dnsRuleAllowing is the rule of a redirect to the DNS proxy in an egress state whose dns rules
// allow name, whichever DNS server it is to; nil when none does.
func (s *State) dnsRuleAllowing(ds *DirectionState, name string) *RuleInfo {
	var best *Entry
	for _, e := range ds.Entries {
		if !e.isDNSProxy() {
			continue
		}
		if ok, _ := e.L7.MatchDNS(name); ok && (best == nil || e.Rules[0] < best.Rules[0]) {
			best = e
		}
	}
	if best == nil {
		return nil
	}
	return s.rules[best.Rules[0]]
}
