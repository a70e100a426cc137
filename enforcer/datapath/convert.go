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

	flagEnforceIngress = uint32(bpf.NetpactEndpointFlagEP_ENFORCE_INGRESS)
	flagEnforceEgress  = uint32(bpf.NetpactEndpointFlagEP_ENFORCE_EGRESS)
	flagHasPrefix      = uint32(bpf.NetpactEndpointFlagEP_HAS_PREFIX_POLICY)
	flagFailClosed     = uint32(bpf.NetpactEndpointFlagEP_FAIL_CLOSED)

	familyV4 = 4
	familyV6 = 6
)

// maxPrefixPortRange bounds how many exact ports a port range of an address-matched (ipBlock)
// entry may expand to.
const maxPrefixPortRange = 4096

// Entries is one endpoint's policy in the datapath's layout.
type Entries struct {
	Policy map[bpf.NetpactPolicyKey]bpf.NetpactPolicyValue
	Prefix map[bpf.NetpactPrefixPolicyKey]bpf.NetpactPolicyValue
	// Flags are the endpoint's enforcement flags (default deny per direction).
	Flags uint32
}

func newEntries() Entries {
	return Entries{Policy: map[bpf.NetpactPolicyKey]bpf.NetpactPolicyValue{}, Prefix: map[bpf.NetpactPrefixPolicyKey]bpf.NetpactPolicyValue{}}
}

// htons turns a host-order port into the value whose little-endian layout is network order.
func htons(p uint16) uint16 { return bits.ReverseBytes16(p) }

func rank(v uint8) int {
	switch policy.Verdict(v) {
	case policy.VerdictDeny:
		return 3
	case policy.VerdictAllow:
		return 2
	case policy.VerdictProxy:
		return 1
	}
	return 0
}

// stronger reports whether a wins over b, with the engine's order: deny, allow, proxy; ties go
// to the lowest rule id.
func stronger(a, b bpf.NetpactPolicyValue) bool {
	if rank(a.Verdict) != rank(b.Verdict) {
		return rank(a.Verdict) > rank(b.Verdict)
	}
	return a.RuleId < b.RuleId
}

type interval struct {
	lo, hi uint16
	val    bpf.NetpactPolicyValue
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
		var best *bpf.NetpactPolicyValue
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

func value(e *policy.Entry) bpf.NetpactPolicyValue {
	return bpf.NetpactPolicyValue{RuleId: uint32(e.Rules[0]), Verdict: uint8(e.Verdict)}
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

// ToBPF is the one conversion from the engine's map state to the datapath's keys and values.
func ToBPF(epID uint32, st *policy.EndpointState) (Entries, error) {
	out := newEntries()
	if st.Ingress.Enforced {
		out.Flags |= flagEnforceIngress
	}
	if st.Egress.Enforced {
		out.Flags |= flagEnforceEgress
	}
	for dir, ds := range map[uint8]*policy.DirectionState{dirIngress: &st.Ingress, dirEgress: &st.Egress} {
		type group struct {
			identity policy.ID
			proto    policy.Proto
		}
		groups := map[group][]interval{}
		for k, e := range ds.Entries {
			if p, ok := k.Prefix(); ok {
				if err := addPrefix(out.Prefix, epID, dir, p, k, value(e)); err != nil {
					return Entries{}, err
				}
				continue
			}
			g := group{k.Identity, k.Proto}
			groups[g] = append(groups[g], interval{k.PortLo, k.PortHi, value(e)})
		}
		for g, ivs := range groups {
			for _, iv := range flatten(ivs) {
				for _, b := range portBlocks(iv.lo, iv.hi) {
					key := bpf.NetpactPolicyKey{Prefixlen: uint32(policyKeyBits + b[1]), EpId: epID, Identity: uint32(g.identity),
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

const prefixKeyBits = 8 * (4 + 1 + 1 + 2 + 4) // ep_id, direction, proto, port, family

func addPrefix(into map[bpf.NetpactPrefixPolicyKey]bpf.NetpactPolicyValue, epID uint32, dir uint8, p netip.Prefix, k policy.MapKey, v bpf.NetpactPolicyValue) error {
	put := func(proto uint8, port uint16) {
		key := bpf.NetpactPrefixPolicyKey{Prefixlen: uint32(prefixKeyBits + p.Bits()), EpId: epID, Direction: dir,
			Proto: proto, Port: htons(port), Family: family(p.Addr()), Addr: addr16(p.Masked().Addr())}
		if old, ok := into[key]; !ok || stronger(v, old) {
			into[key] = v
		}
	}
	switch {
	case k.Proto == policy.ProtoAny:
		put(0, 0)
	case k.PortLo == 0 && k.PortHi == 65535:
		put(uint8(k.Proto), 0)
	case int(k.PortHi)-int(k.PortLo) >= maxPrefixPortRange:
		return fmt.Errorf("port range %d-%d for %s is wider than %d ports; an address-matched rule supports narrower ranges or all ports", k.PortLo, k.PortHi, p, maxPrefixPortRange)
	default:
		for port := int(k.PortLo); port <= int(k.PortHi); port++ {
			put(uint8(k.Proto), uint16(port))
		}
	}
	return nil
}

// DumpEntry is one datapath entry read back in the engine's terms.
type DumpEntry struct {
	Direction policy.Direction
	Key       policy.MapKey
	Verdict   policy.Verdict
	Rule      policy.RuleID
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
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].lo < ivs[j].lo })
		var merged []interval
		for _, iv := range ivs {
			if n := len(merged); n > 0 && int(merged[n-1].hi)+1 == int(iv.lo) && merged[n-1].val == iv.val {
				merged[n-1].hi = iv.hi
				continue
			}
			merged = append(merged, iv)
		}
		for _, iv := range merged {
			out = append(out, DumpEntry{Direction: policy.Direction(g.dir),
				Key:     policy.MapKey{Identity: policy.ID(g.identity), Proto: policy.Proto(g.proto), PortLo: iv.lo, PortHi: iv.hi},
				Verdict: policy.Verdict(iv.val.Verdict), Rule: policy.RuleID(iv.val.RuleId)})
		}
	}
	for k, v := range e.Prefix {
		var a netip.Addr
		if k.Family == familyV4 {
			a = netip.AddrFrom4([4]byte(k.Addr[:4]))
		} else {
			a = netip.AddrFrom16(k.Addr)
		}
		p := netip.PrefixFrom(a, int(k.Prefixlen)-prefixKeyBits)
		lo, hi := htons(k.Port), htons(k.Port)
		if k.Port == 0 {
			lo, hi = 0, 65535
		}
		out = append(out, DumpEntry{Direction: policy.Direction(k.Direction), Key: policy.PrefixKey(p, policy.Proto(k.Proto), lo, hi),
			Verdict: policy.Verdict(v.Verdict), Rule: policy.RuleID(v.RuleId)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Direction != out[j].Direction {
			return out[i].Direction < out[j].Direction
		}
		return out[i].Key.String() < out[j].Key.String()
	})
	return out
}
