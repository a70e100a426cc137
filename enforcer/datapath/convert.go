package datapath

import (
	"fmt"
	"math/bits"
	"net/netip"
	"sort"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// Directions as the C program numbers them; endpoint flags from its enum endpoint_flag.
const (
	dirIngress = 0
	dirEgress  = 1

	flagEnforceIngress = uint32(bpf.TcEndpointFlagEP_ENFORCE_INGRESS)
	flagEnforceEgress  = uint32(bpf.TcEndpointFlagEP_ENFORCE_EGRESS)
	flagHasPrefix      = uint32(bpf.TcEndpointFlagEP_HAS_PREFIX_POLICY)
	flagFailClosed     = uint32(bpf.TcEndpointFlagEP_FAIL_CLOSED)
	flagHasL7          = uint32(bpf.TcEndpointFlagEP_HAS_L7)
	flagHasL7Ingress   = uint32(bpf.TcEndpointFlagEP_HAS_L7INGRESS)
	flagHasAudit       = uint32(bpf.TcEndpointFlagEP_HAS_AUDIT)
	flagAuditIngress   = uint32(bpf.TcEndpointFlagEP_AUDIT_INGRESS)
	flagAuditEgress    = uint32(bpf.TcEndpointFlagEP_AUDIT_EGRESS)

	// dirAudit marks the keys of audit-mode deny rules (bpf/lib/common.h's DIR_AUDIT).
	dirAudit = 2

	familyV4 = 4
	familyV6 = 6
)

// Entries is one endpoint's policy in the datapath's layout.
type Entries struct {
	Policy map[bpf.TcPolicyKey]bpf.TcPolicyValue
	Prefix map[bpf.TcPrefixPolicyKey]bpf.TcPolicyValue
	// Flags are the endpoint's enforcement flags (default deny per direction).
	Flags uint32
	// PrefixPortBits has bit b set when a Prefix entry wildcards b low port bits.
	PrefixPortBits uint32
}

func newEntries() Entries {
	return Entries{Policy: map[bpf.TcPolicyKey]bpf.TcPolicyValue{}, Prefix: map[bpf.TcPrefixPolicyKey]bpf.TcPolicyValue{}}
}

// htons turns a host-order port into the value whose little-endian layout is network order.
func htons(p uint16) uint16 { return bits.ReverseBytes16(p) }

// rank is bpf/lib/policy.h's: the engine's policy.Rank of a value.
func rank(v bpf.TcPolicyValue) int {
	return policy.Rank(policy.Verdict(v.Verdict), v.L7 == uint16(ParserDNS))
}

// stronger reports whether a wins over b, with the engine's order (policy.Rank); ties go to the
// lowest rule id.
func stronger(a, b bpf.TcPolicyValue) bool {
	if rank(a) != rank(b) {
		return rank(a) > rank(b)
	}
	return a.RuleId < b.RuleId
}

type interval struct {
	lo, hi uint16
	val    bpf.TcPolicyValue
}

// flatten turns overlapping port ranges into disjoint intervals, each with the strongest value
// of the ranges covering it, so that one longest-prefix lookup per (peer, protocol) is exact.
func flatten(in []interval) []interval {
	var cuts []int
	for _, iv := range in {
		cuts = append(cuts, int(iv.lo), int(iv.hi)+1)
	}
	sort.Ints(cuts)
	var out []interval
	for i := 0; i+1 < len(cuts); i++ {
		lo, hi := cuts[i], cuts[i+1]-1
		if lo > hi || lo > 65535 {
			continue
		}
		var best *bpf.TcPolicyValue
		for j := range in {
			if int(in[j].lo) <= lo && hi <= int(in[j].hi) && (best == nil || stronger(in[j].val, *best)) {
				best = &in[j].val
			}
		}
		if best == nil {
			continue
		}
		if n := len(out); n > 0 && int(out[n-1].hi)+1 == lo && out[n-1].val == *best {
			out[n-1].hi = uint16(hi)
			continue
		}
		out = append(out, interval{uint16(lo), uint16(hi), *best})
	}
	return out
}

// portBlocks splits [lo, hi] into aligned power-of-two blocks: (start, prefix length in bits).
func portBlocks(lo, hi uint16) [][2]int {
	var out [][2]int
	for start := int(lo); start <= int(hi); {
		size := 1
		for start%(size*2) == 0 && start+size*2-1 <= int(hi) && size < 65536 {
			size *= 2
		}
		out = append(out, [2]int{start, 16 - bits.TrailingZeros(uint(size))})
		start += size
	}
	return out
}

const policyKeyBits = 8 * (4 + 4 + 1 + 1) // ep_id, identity, direction, proto: matched exactly

func value(e *policy.Entry) bpf.TcPolicyValue {
	v := bpf.TcPolicyValue{RuleId: uint32(e.Rules[0]), Verdict: uint8(e.Verdict)}
	if e.Verdict == policy.VerdictAudit {
		// A deny in the audit key space: looked up like any deny, reported, never enforced.
		v.Verdict = uint8(policy.VerdictDeny)
	}
	if e.Verdict == policy.VerdictProxy {
		v.L7 = uint16(ParserOf(e.L7))
	}
	return v
}

func family(a netip.Addr) uint32 {
	if a.Is4() {
		return familyV4
	}
	return familyV6
}

func addr16(a netip.Addr) [16]uint8 {
	var out [16]uint8
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out
	}
	return a.As16()
}

// MaxEntriesPerEndpoint bounds the entries one endpoint may have in each policy map, as
// Cilium's per-endpoint policy map does (bpf-policy-map-max, 16384 by default): the maps are
// shared by the node's endpoints, and one pod's policy must not fill them for all.
const MaxEntriesPerEndpoint = 16384

// CapacityError says that an endpoint's state needs more entries than it may have, and which
// rules the entries come from.
type CapacityError struct {
	Map           string // "policy" or "prefix_policy"
	Need, Limit   int
	EntriesByRule map[policy.RuleID]int
}

func (e *CapacityError) Error() string {
	return fmt.Sprintf("the state needs %d %s entries, more than the %d an endpoint may have", e.Need, e.Map, e.Limit)
}

// ToBPF is the one conversion from the engine's map state to the datapath's keys and values.
// A state that needs more than MaxEntriesPerEndpoint entries in a map is refused with a
// *CapacityError before anything is written.
func ToBPF(epID uint32, st *policy.EndpointState) (Entries, error) {
	out, err := toBPF(epID, st)
	if err != nil {
		return Entries{}, err
	}
	for name, n := range map[string]int{"policy": len(out.Policy), "prefix_policy": len(out.Prefix)} {
		if n <= MaxEntriesPerEndpoint {
			continue
		}
		ce := &CapacityError{Map: name, Need: n, Limit: MaxEntriesPerEndpoint, EntriesByRule: map[policy.RuleID]int{}}
		if name == "policy" {
			for _, v := range out.Policy {
				ce.EntriesByRule[policy.RuleID(v.RuleId)]++
			}
		} else {
			for _, v := range out.Prefix {
				ce.EntriesByRule[policy.RuleID(v.RuleId)]++
			}
		}
		return Entries{}, ce
	}
	return out, nil
}

func toBPF(epID uint32, st *policy.EndpointState) (Entries, error) {
	out := newEntries()
	if st.Ingress.Enforced {
		out.Flags |= flagEnforceIngress
	}
	if st.Egress.Enforced {
		out.Flags |= flagEnforceEgress
	}
	if st.Ingress.Audited {
		out.Flags |= flagAuditIngress
	}
	if st.Egress.Audited {
		out.Flags |= flagAuditEgress
	}
	// The deny rules of policies in audit mode have keys of their own (direction | dirAudit).
	for dir, entries := range map[uint8]map[policy.MapKey]*policy.Entry{
		dirIngress: st.Ingress.Entries, dirEgress: st.Egress.Entries,
		dirIngress | dirAudit: st.Ingress.Audit, dirEgress | dirAudit: st.Egress.Audit,
	} {
		if dir&dirAudit != 0 && len(entries) > 0 {
			out.Flags |= flagHasAudit
		}
		type group struct {
			identity policy.ID
			proto    policy.Proto
		}
		groups := map[group][]interval{}
		for k, e := range entries {
			if e.Verdict == policy.VerdictProxy {
				out.Flags |= flagHasL7
				if dir == dirIngress {
					out.Flags |= flagHasL7Ingress
				}
			}
			if p, ok := k.Prefix(); ok {
				out.PrefixPortBits |= addPrefix(out.Prefix, epID, dir, p, k, value(e))
				continue
			}
			g := group{k.Identity, k.Proto}
			groups[g] = append(groups[g], interval{k.PortLo, k.PortHi, value(e)})
		}
		for g, ivs := range groups {
			for _, iv := range flatten(ivs) {
				for _, b := range portBlocks(iv.lo, iv.hi) {
					key := bpf.TcPolicyKey{Prefixlen: uint32(policyKeyBits + b[1]), EpId: epID, Identity: uint32(g.identity),
						Direction: dir, Proto: uint8(g.proto), Port: htons(uint16(b[0]))}
					out.Policy[key] = iv.val
				}
			}
		}
	}
	if len(out.Prefix) > 0 {
		out.Flags |= flagHasPrefix
	}
	return out, nil
}

const prefixKeyBits = 8 * (4 + 1 + 1 + 1 + 1 + 2 + 2 + 4) // ep_id, direction, proto, port_bits, pad, port, pad2, family

// addPrefix writes an address-matched entry as aligned port blocks (any protocol: one entry) and
// returns the block sizes it used, as bits of prefix_port_bits.
func addPrefix(into map[bpf.TcPrefixPolicyKey]bpf.TcPolicyValue, epID uint32, dir uint8, p netip.Prefix, k policy.MapKey, v bpf.TcPolicyValue) uint32 {
	put := func(proto uint8, base uint16, wild int) {
		key := bpf.TcPrefixPolicyKey{Prefixlen: uint32(prefixKeyBits + p.Bits()), EpId: epID, Direction: dir,
			Proto: proto, PortBits: uint8(wild), Port: htons(base), Family: family(p.Addr()), Addr: addr16(p.Masked().Addr())}
		if old, ok := into[key]; !ok || stronger(v, old) {
			into[key] = v
		}
	}
	if k.Proto == policy.ProtoAny {
		put(0, 0, 16)
		return 0 // looked up on its own, whatever the mask
	}
	var used uint32
	for _, b := range portBlocks(k.PortLo, k.PortHi) {
		wild := 16 - b[1]
		put(uint8(k.Proto), uint16(b[0]), wild)
		used |= 1 << wild
	}
	return used
}

// mergeBlocks sorts port blocks and merges adjacent ones with the same value into ranges.
func mergeBlocks(ivs []interval) []interval {
	sort.Slice(ivs, func(i, j int) bool { return ivs[i].lo < ivs[j].lo })
	var merged []interval
	for _, iv := range ivs {
		if n := len(merged); n > 0 && int(merged[n-1].hi)+1 == int(iv.lo) && merged[n-1].val == iv.val {
			merged[n-1].hi = iv.hi
			continue
		}
		merged = append(merged, iv)
	}
	return merged
}

// DumpEntry is one datapath entry read back in the engine's terms. An entry of an audit-mode
// deny rule has Verdict policy.VerdictAudit.
type DumpEntry struct {
	Direction policy.Direction
	Key       policy.MapKey
	Verdict   policy.Verdict
	Rule      policy.RuleID
}

// dumpVerdict is an entry's verdict in the engine's terms: a deny in the audit key space is an
// audit-mode deny rule's.
func dumpVerdict(dir uint8, v bpf.TcPolicyValue) policy.Verdict {
	if dir&dirAudit != 0 {
		return policy.VerdictAudit
	}
	return policy.Verdict(v.Verdict)
}

// FromBPF is the one conversion back: datapath entries of an endpoint as engine map-state keys,
// adjacent port blocks with the same value merged into ranges.
func FromBPF(e Entries) []DumpEntry {
	type group struct {
		dir      uint8
		identity uint32
		proto    uint8
	}
	blocks := map[group][]interval{}
	for k, v := range e.Policy {
		span := 1 << (16 - (int(k.Prefixlen) - policyKeyBits))
		lo := int(htons(k.Port))
		g := group{k.Direction, k.Identity, k.Proto}
		blocks[g] = append(blocks[g], interval{uint16(lo), uint16(lo + span - 1), v})
	}
	var out []DumpEntry
	for g, ivs := range blocks {
		for _, iv := range mergeBlocks(ivs) {
			out = append(out, DumpEntry{Direction: policy.Direction(g.dir &^ dirAudit),
				Key:     policy.MapKey{Identity: policy.ID(g.identity), Proto: policy.Proto(g.proto), PortLo: iv.lo, PortHi: iv.hi},
				Verdict: dumpVerdict(g.dir, iv.val), Rule: policy.RuleID(iv.val.RuleId)})
		}
	}
	type prefixGroup struct {
		dir    uint8
		proto  uint8
		prefix netip.Prefix
	}
	prefixBlocks := map[prefixGroup][]interval{}
	for k, v := range e.Prefix {
		var a netip.Addr
		if k.Family == familyV4 {
			a = netip.AddrFrom4([4]byte(k.Addr[:4]))
		} else {
			a = netip.AddrFrom16(k.Addr)
		}
		g := prefixGroup{k.Direction, k.Proto, netip.PrefixFrom(a, int(k.Prefixlen)-prefixKeyBits)}
		lo := int(htons(k.Port))
		prefixBlocks[g] = append(prefixBlocks[g], interval{uint16(lo), uint16(lo + 1<<k.PortBits - 1), v})
	}
	for g, ivs := range prefixBlocks {
		for _, iv := range mergeBlocks(ivs) {
			out = append(out, DumpEntry{Direction: policy.Direction(g.dir &^ dirAudit), Key: policy.PrefixKey(g.prefix, policy.Proto(g.proto), iv.lo, iv.hi),
				Verdict: dumpVerdict(g.dir, iv.val), Rule: policy.RuleID(iv.val.RuleId)})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Direction != out[j].Direction {
			return out[i].Direction < out[j].Direction
		}
		if ki, kj := out[i].Key.String(), out[j].Key.String(); ki != kj {
			return ki < kj
		}
		return out[i].Verdict < out[j].Verdict
	})
	return out
}
