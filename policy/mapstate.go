package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/netpact/netpact/api/ciliumv2"
)

// Verdict is what a map-state entry or a decision does with traffic.
type Verdict uint8

const (
	// VerdictAllow lets the traffic through.
	VerdictAllow Verdict = iota + 1
	// VerdictDeny drops it because a deny rule matched; deny beats every allow.
	VerdictDeny
	// VerdictProxy hands it to the L7 proxy, which applies the entry's L7 rules.
	VerdictProxy
	// VerdictAudit is a deny rule of a policy in audit mode: it is reported (AUDIT) where it
	// matches, and decides nothing. Its entries are kept apart (DirectionState.Audit).
	VerdictAudit
)

func (v Verdict) String() string {
	switch v {
	case VerdictAllow:
		return "allow"
	case VerdictDeny:
		return "deny"
	case VerdictProxy:
		return "proxy"
	case VerdictAudit:
		return "audit"
	}
	return "none"
}

// MapKey is a map-state key: a peer, a protocol and an inclusive port range. Identity 0 with no
// prefix is every peer; a key with a prefix (PrefixKey) matches the peer's address whatever its
// identity (Kubernetes ipBlock); ProtoAny is every protocol with every port (ICMP types count as
// ports). The layout is flat and free of pointers and padding so that hashing it is cheap.
type MapKey struct {
	Identity ID
	PortLo   uint16
	PortHi   uint16
	Proto    Proto
	// pfxLen is the prefix length plus one; 0 means the key has no prefix.
	pfxLen uint8
	is4    uint16
	addr   [16]byte
}

// PrefixKey returns a key that matches peers by address.
func PrefixKey(p netip.Prefix, proto Proto, lo, hi uint16) MapKey {
	k := MapKey{Proto: proto, PortLo: lo, PortHi: hi, pfxLen: uint8(p.Bits() + 1), addr: p.Addr().As16()}
	if p.Addr().Is4() {
		k.is4 = 1
	}
	return k
}

// Prefix returns the key's address prefix, if it has one.
func (k MapKey) Prefix() (netip.Prefix, bool) {
	if k.pfxLen == 0 {
		return netip.Prefix{}, false
	}
	a := netip.AddrFrom16(k.addr)
	if k.is4 == 1 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(k.pfxLen)-1), true
}

func (k MapKey) String() string {
	peer := fmt.Sprintf("identity %d", k.Identity)
	p, hasPrefix := k.Prefix()
	switch {
	case hasPrefix:
		peer = "prefix " + p.String()
	case k.Identity == 0:
		peer = "any peer"
	}
	ports := fmt.Sprintf("%d-%d", k.PortLo, k.PortHi)
	if k.PortLo == k.PortHi {
		ports = fmt.Sprint(k.PortLo)
	} else if k.PortLo == 0 && k.PortHi == 65535 {
		ports = "any port"
	}
	return fmt.Sprintf("%s %s %s", peer, k.Proto, ports)
}

// Entry is a map-state value. Rules lists every rule that produced it, deciding rule first.
type Entry struct {
	Verdict Verdict
	L7      *L7Policy
	Rules   []RuleID
}

// DirectionState is the compiled policy of one endpoint in one direction.
type DirectionState struct {
	// Enforced means default deny: traffic no entry allows is dropped.
	Enforced bool
	// EnforcedBy lists the rules (policy sections) that switched default deny on.
	EnforcedBy []RuleID
	// Audited means only policies in audit mode switched default deny on: traffic no entry
	// allows passes and is reported (AUDIT).
	Audited bool
	Entries map[MapKey]*Entry
	// Audit are the deny rules of policies in audit mode (VerdictAudit entries): where one
	// matches traffic that passes, the traffic is reported (AUDIT) with its rule.
	Audit map[MapKey]*Entry

	once  sync.Once
	index *lookupIndex
	// pool, set while compiling, hands out entries reused from group to group.
	pool *entryPool
}

// EndpointState is the compiled policy of one endpoint.
type EndpointState struct {
	Ingress DirectionState
	Egress  DirectionState
}

// Dir returns the state of one direction.
func (s *EndpointState) Dir(d Direction) *DirectionState {
	if d == Egress {
		return &s.Egress
	}
	return &s.Ingress
}

func newEndpointState() *EndpointState {
	return &EndpointState{
		Ingress: DirectionState{Entries: map[MapKey]*Entry{}},
		Egress:  DirectionState{Entries: map[MapKey]*Entry{}},
	}
}

// add merges a verdict into the state: deny beats allow and proxy; a redirect to the DNS proxy
// and a plain allow make a redirect whose rules allow every name (Cilium's redirect wins, and the
// answers are learned); otherwise allow beats proxy (a plain allow lets every request through,
// so the proxy's rules could only allow it too), and two proxy entries merge their L7 rules.
func (ds *DirectionState) add(k MapKey, v Verdict, l7 *L7Policy, rule RuleID) {
	if v == VerdictAudit {
		if ds.Audit == nil {
			ds.Audit = map[MapKey]*Entry{}
		}
		if e, ok := ds.Audit[k]; !ok {
			ds.Audit[k] = &Entry{Verdict: v, Rules: []RuleID{rule}}
		} else if !slices.Contains(e.Rules, rule) {
			e.Rules = append(e.Rules, rule)
		}
		return
	}
	e, ok := ds.Entries[k]
	if !ok {
		ds.Entries[k] = ds.newEntry(k, v, l7, rule)
		return
	}
	dnsProxy := v == VerdictProxy && l7.Parser() == ParserDNS
	switch {
	case e.Verdict == v:
		if !slices.Contains(e.Rules, rule) {
			e.Rules = append(e.Rules, rule)
		}
		if v == VerdictProxy && l7 != e.L7 {
			e.L7 = e.L7.merge(l7)
		}
	case v == VerdictDeny:
		e.Verdict, e.L7, e.Rules = v, nil, []RuleID{rule}
	case e.isDNSProxy() && v == VerdictAllow:
		e.L7 = e.L7.merge(allDNSNames)
		if !slices.Contains(e.Rules, rule) {
			e.Rules = append(e.Rules, rule)
		}
	case e.Verdict == VerdictAllow && dnsProxy:
		e.Verdict, e.L7, e.Rules = v, l7.merge(allDNSNames), append([]RuleID{rule}, e.Rules...)
	case e.Verdict == VerdictProxy && v == VerdictAllow:
		e.Verdict, e.L7, e.Rules = v, nil, []RuleID{rule}
	}
}

func (ds *DirectionState) newEntry(k MapKey, v Verdict, l7 *L7Policy, rule RuleID) *Entry {
	if ds.pool == nil {
		return &Entry{Verdict: v, L7: l7, Rules: []RuleID{rule}}
	}
	return ds.pool.get(k, v, l7, rule)
}

// entryPool holds the entries of the direction being compiled, in the order they were made.
// They and their rule slices are reused from group to group: only the finished state (copyTo)
// is allocated, once and at its size.
type entryPool struct {
	items []*pooled
	n     int
	// shared finds the copy of an entry already made (copyTo).
	shared map[entrySig]*Entry
}

type pooled struct {
	key   MapKey
	entry Entry
}

func (p *entryPool) get(k MapKey, v Verdict, l7 *L7Policy, rule RuleID) *Entry {
	if p.n == len(p.items) {
		p.items = append(p.items, &pooled{})
	}
	it := p.items[p.n]
	p.n++
	it.key = k
	it.entry.Verdict, it.entry.L7, it.entry.Rules = v, l7, append(it.entry.Rules[:0], rule)
	return &it.entry
}

// reset empties a pooled direction for the next group, keeping its room.
func (ds *DirectionState) reset() {
	clear(ds.Entries)
	for _, it := range ds.pool.items[:ds.pool.n] {
		it.entry.L7 = nil
	}
	ds.pool.n = 0
	ds.Enforced, ds.Audited, ds.EnforcedBy, ds.Audit = false, false, ds.EnforcedBy[:0], nil
}

// copyTo writes a pooled direction's state to out in memory of its own: a map at its size, and
// one entry for all the keys whose entries are equal (states are never modified once made).
func (ds *DirectionState) copyTo(out *DirectionState) {
	out.Enforced, out.Audited, out.Audit = ds.Enforced, ds.Audited, ds.Audit
	if len(ds.EnforcedBy) > 0 {
		out.EnforcedBy = slices.Clone(ds.EnforcedBy)
	}
	p := ds.pool
	if p.shared == nil {
		p.shared = map[entrySig]*Entry{}
	}
	clear(p.shared)
	out.Entries = make(map[MapKey]*Entry, p.n)
	var last *Entry
	var lastSig entrySig
	for _, it := range p.items[:p.n] {
		e := &it.entry
		sig, ok := sigOf(e)
		switch {
		case !ok:
			out.Entries[it.key] = &Entry{Verdict: e.Verdict, L7: e.L7, Rules: slices.Clone(e.Rules)}
			continue
		case last != nil && sig == lastSig:
		default:
			if last, ok = p.shared[sig]; !ok {
				last = &Entry{Verdict: e.Verdict, L7: e.L7, Rules: slices.Clone(e.Rules)}
				p.shared[sig] = last
			}
			lastSig = sig
		}
		out.Entries[it.key] = last
	}
}

// shareFrom makes ds a state equal to src, sharing its maps and entries.
func (ds *DirectionState) shareFrom(src *DirectionState) {
	ds.Enforced, ds.EnforcedBy, ds.Audited = src.Enforced, src.EnforcedBy, src.Audited
	ds.Entries, ds.Audit = src.Entries, src.Audit
}

// entrySig identifies an entry of up to eight rules by value.
type entrySig struct {
	verdict Verdict
	n       uint8
	rules   [8]RuleID
	l7      *L7Policy
}

func sigOf(e *Entry) (entrySig, bool) {
	if len(e.Rules) > len(entrySig{}.rules) {
		return entrySig{}, false
	}
	sig := entrySig{verdict: e.Verdict, n: uint8(len(e.Rules)), l7: e.L7}
	copy(sig.rules[:], e.Rules)
	return sig, true
}

// allDNSNames is a DNS rule that allows every name.
var allDNSNames = newL7Policy(nil, nil, []ciliumv2.PortRuleDNS{{MatchPattern: "*"}})

// widenDNSRedirects gives each redirect to the DNS proxy that a plain allow of another entry
// also covers (a wider port range, any peer) a rule allowing every name: the redirect wins in the
// lookup (Rank), and the plain allow would have let every query through.
func (ds *DirectionState) widenDNSRedirects() {
	for k, e := range ds.Entries {
		if !e.isDNSProxy() || e.L7.allowsAllNames() {
			continue
		}
		for ak, a := range ds.Entries {
			if a.Verdict != VerdictAllow || ak.pfxLen != 0 || (ak.Identity != 0 && ak.Identity != k.Identity) ||
				(ak.Proto != ProtoAny && ak.Proto != k.Proto) || ak.PortLo > k.PortLo || ak.PortHi < k.PortHi {
				continue
			}
			e.L7 = e.L7.merge(allDNSNames)
			if !slices.Contains(e.Rules, a.Rules[0]) {
				e.Rules = append(e.Rules, a.Rules[0])
			}
			break
		}
	}
}

// allowsAllNames says whether a DNS rule of l allows every name.
func (l *L7Policy) allowsAllNames() bool {
	for _, d := range l.DNS {
		if d.MatchName == "" && strings.TrimSuffix(d.MatchPattern, ".") == "*" {
			return true
		}
	}
	return false
}

// lookupIndex finds the entries a packet can match without scanning the whole state.
type lookupIndex struct {
	byIdentity map[ID][]keyed
	wildcard   []keyed
	prefixes   []keyed
	// audit indexes the Audit entries alike.
	audit *lookupIndex
}

type keyed struct {
	key   MapKey
	entry *Entry
}

func (ds *DirectionState) lookupIndex() *lookupIndex {
	ds.once.Do(func() {
		ds.index = indexEntries(ds.Entries)
		if len(ds.Audit) > 0 {
			ds.index.audit = indexEntries(ds.Audit)
		}
	})
	return ds.index
}

func indexEntries(entries map[MapKey]*Entry) *lookupIndex {
	ix := &lookupIndex{byIdentity: map[ID][]keyed{}}
	for k, e := range entries {
		switch {
		case k.pfxLen != 0:
			ix.prefixes = append(ix.prefixes, keyed{k, e})
		case k.Identity == 0:
			ix.wildcard = append(ix.wildcard, keyed{k, e})
		default:
			ix.byIdentity[k.Identity] = append(ix.byIdentity[k.Identity], keyed{k, e})
		}
	}
	return ix
}

// Match is the result of looking a packet up in one direction's state.
type Match struct {
	Verdict Verdict
	Key     MapKey
	Entry   *Entry
}

// Lookup finds the verdict for a peer (identity and address), protocol and port: the matching
// entry of highest Rank (deny, DNS redirect, allow, other redirect), or no entry (Verdict 0).
// Among entries of the same rank, the one with the lowest deciding rule id is reported.
func (ds *DirectionState) Lookup(peer ID, addr netip.Addr, proto Proto, port uint16) Match {
	return ds.lookupIndex().lookup(peer, addr, proto, port)
}

// LookupAudit finds the deny rule of a policy in audit mode that matches a packet (its entry of
// lowest deciding rule id), or none (Verdict 0).
func (ds *DirectionState) LookupAudit(peer ID, addr netip.Addr, proto Proto, port uint16) Match {
	ix := ds.lookupIndex().audit
	if ix == nil {
		return Match{}
	}
	return ix.lookup(peer, addr, proto, port)
}

func (ix *lookupIndex) lookup(peer ID, addr netip.Addr, proto Proto, port uint16) Match {
	var best Match
	consider := func(list []keyed) {
		for _, c := range list {
			k := c.key
			if p, ok := k.Prefix(); ok && !p.Contains(addr) {
				continue
			}
			if k.Proto != ProtoAny && k.Proto != proto {
				continue
			}
			if port < k.PortLo || port > k.PortHi {
				continue
			}
			if best.Entry == nil || c.entry.rank() > best.Entry.rank() ||
				(c.entry.rank() == best.Entry.rank() && c.entry.Rules[0] < best.Entry.Rules[0]) {
				best = Match{Verdict: c.entry.Verdict, Key: k, Entry: c.entry}
			}
		}
	}
	consider(ix.byIdentity[peer])
	consider(ix.wildcard)
	if addr.IsValid() {
		consider(ix.prefixes)
	}
	return best
}

// Rank orders entries, the datapath's order too: deny; then a redirect to the DNS proxy (it
// learns the answers toFQDNs needs, and where a plain allow also applies its rules allow every
// name: Cilium redirects there as well); then allow (a plain allow lets every request through, so
// another proxy's rules could only allow it too); then a redirect to another proxy.
func Rank(v Verdict, dnsProxy bool) int {
	switch v {
	case VerdictDeny:
		return 4
	case VerdictProxy:
		if dnsProxy {
			return 3
		}
		return 1
	case VerdictAllow:
		return 2
	}
	return 0
}

func (e *Entry) rank() int { return Rank(e.Verdict, e.isDNSProxy()) }

func (e *Entry) isDNSProxy() bool { return e.Verdict == VerdictProxy && e.L7.Parser() == ParserDNS }
