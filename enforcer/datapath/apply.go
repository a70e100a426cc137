package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// UpsertEndpoint writes an endpoint's policy and attaches the programs to its veth. The policy
// is written as a diff against what the maps hold: new and changed entries first, then the
// endpoint's enforcement flags, then deletions, so entries that stay allowed never drop. When
// any step fails the endpoint is failed closed (every packet dropped, see CloseEndpoint) and the
// error says so: old and new entries are never left enforcing together.
func (d *Datapath) UpsertEndpoint(ep Endpoint, st *policy.EndpointState) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.upsert(ep, st); err != nil {
		if cerr := d.closeEndpoint(ep); cerr != nil {
			return fmt.Errorf("endpoint %s: %w; and failing it closed failed too: %w", ep.Ifname, err, cerr)
		}
		return fmt.Errorf("endpoint %s (failed closed, dropping all its traffic): %w", ep.Ifname, err)
	}
	return nil
}

func (d *Datapath) upsert(ep Endpoint, st *policy.EndpointState) error {
	want, err := ToBPF(ep.ID, st)
	if err != nil {
		return fmt.Errorf("convert policy: %w", err)
	}
	have := d.entriesOf(ep.ID)
	added, err := d.writeAdds(have, want)
	if err != nil {
		return err
	}
	infoChanged, err := d.writeInfo(ep, want.Flags, want.PrefixPortBits)
	if err != nil {
		return err
	}
	deleted, err := d.writeDeletes(have, want)
	if err != nil {
		return err
	}
	d.applied[ep.ID] = want
	// Tracked flows are checked again only when something they depend on changed.
	if added > 0 || deleted > 0 || infoChanged {
		if err := d.bumpRevision(); err != nil {
			return err
		}
	}
	return d.attach.attach(ep.Ifindex, ep.Ifname)
}

// writeInfo writes the endpoint's entry (id, identity, addresses, flags) when it changed.
func (d *Datapath) writeInfo(ep Endpoint, flags, prefixPortBits uint32) (bool, error) {
	info := bpf.TcEndpointInfo{EpId: ep.ID, Identity: uint32(ep.Identity), Flags: flags, PrefixPortBits: prefixPortBits}
	if ep.IPv4.IsValid() {
		info.Ipv4 = ep.IPv4.As4()
	}
	if ep.IPv6.IsValid() {
		info.Ipv6 = ep.IPv6.As16()
	}
	if ep.NetnsCookie != 0 && d.netns[ep.Ifindex] != ep.NetnsCookie {
		if old := d.netns[ep.Ifindex]; old != 0 {
			// Another namespace behind the same interface index: what was its goes.
			d.shares.forget(&d.objs, ep.Ifindex, old)
			delete(d.nsid, ep.Ifindex)
		}
		if err := d.objs.EndpointNetns.Put(uint32(ep.Ifindex), ep.NetnsCookie); err != nil {
			return false, fmt.Errorf("write endpoint network namespace: %w", err)
		}
		d.netns[ep.Ifindex] = ep.NetnsCookie
	}
	if err := d.writeNsid(ep.Ifindex); err != nil {
		return false, err
	}
	if err := d.shares.add(&d.objs, ep.Ifindex, d.netns[ep.Ifindex]); err != nil {
		return false, err
	}
	if err := d.writeAddrs(ep.Ifindex, info); err != nil {
		return false, err
	}
	if d.endpointInfo[ep.Ifindex] == info {
		return false, nil
	}
	if err := d.objs.Endpoints.Put(uint32(ep.Ifindex), info); err != nil {
		delete(d.endpointInfo, ep.Ifindex)
		return false, fmt.Errorf("write endpoint entry: %w", err)
	}
	d.endpointInfo[ep.Ifindex] = info
	return true, nil
}

// CloseEndpoint attaches the programs to an endpoint's veth with the endpoint failed closed:
// every packet from or to it is dropped (`endpoint closed`) until UpsertEndpoint programs it. A
// new pod is closed this way before its workload starts, and an endpoint whose policy cannot be
// written is left so.
func (d *Datapath) CloseEndpoint(ep Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.closeEndpoint(ep); err != nil {
		return fmt.Errorf("close endpoint %s: %w", ep.Ifname, err)
	}
	return nil
}

func (d *Datapath) closeEndpoint(ep Endpoint) error {
	if _, err := d.writeInfo(ep, flagFailClosed, 0); err != nil {
		return err
	}
	// Open flows are cut at their next packet: the check comes before conntrack.
	if err := d.bumpRevision(); err != nil {
		return err
	}
	return d.attach.attach(ep.Ifindex, ep.Ifname)
}

func (d *Datapath) writeAdds(have, want Entries) (int, error) {
	n := 0
	for k, v := range want.Policy {
		if old, ok := have.Policy[k]; ok && old == v {
			continue
		}
		if err := d.objs.Policy.Put(k, v); err != nil {
			return n, fmt.Errorf("write policy entry: %w", err)
		}
		have.Policy[k] = v
		n++
	}
	for k, v := range want.Prefix {
		if old, ok := have.Prefix[k]; ok && old == v {
			continue
		}
		if err := d.objs.PrefixPolicy.Put(k, v); err != nil {
			return n, fmt.Errorf("write prefix policy entry: %w", err)
		}
		have.Prefix[k] = v
		n++
	}
	return n, nil
}

func (d *Datapath) writeDeletes(have, want Entries) (int, error) {
	n := 0
	for k := range have.Policy {
		if _, ok := want.Policy[k]; ok {
			continue
		}
		if err := d.objs.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete policy entry: %w", err)
		}
		delete(have.Policy, k)
		n++
	}
	for k := range have.Prefix {
		if _, ok := want.Prefix[k]; ok {
			continue
		}
		if err := d.objs.PrefixPolicy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete prefix policy entry: %w", err)
		}
		delete(have.Prefix, k)
		n++
	}
	return n, nil
}

// RemoveEndpoint detaches from a veth and deletes the endpoint's entries.
func (d *Datapath) RemoveEndpoint(ep Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	errs := []error{d.attach.detach(ep.Ifindex)}
	if err := d.objs.Endpoints.Delete(uint32(ep.Ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete endpoint entry: %w", err))
	}
	errs = append(errs, d.forgetAddrs(ep.Ifindex))
	delete(d.endpointInfo, ep.Ifindex)
	d.forgetNetns(ep.Ifindex)
	if have, ok := d.applied[ep.ID]; ok {
		_, err := d.writeDeletes(have, newEntries())
		errs = append(errs, err)
		delete(d.applied, ep.ID)
	}
	errs = append(errs, d.bumpRevision())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove endpoint %s: %w", ep.Ifname, err)
	}
	return nil
}

func ipcacheKey(p netip.Prefix) bpf.TcIpcacheKey {
	return bpf.TcIpcacheKey{Prefixlen: uint32(32 + p.Bits()), Family: family(p.Addr()), Addr: addr16(p.Masked().Addr())}
}

func ipcachePrefix(k bpf.TcIpcacheKey) netip.Prefix {
	var a netip.Addr
	if k.Family == familyV4 {
		a = netip.AddrFrom4([4]byte(k.Addr[:4]))
	} else {
		a = netip.AddrFrom16(k.Addr)
	}
	return netip.PrefixFrom(a, int(k.Prefixlen)-32)
}

// IPCacheCapacity is how many prefixes the ipcache map holds.
func (d *Datapath) IPCacheCapacity() int { return int(d.objs.Ipcache.MaxEntries()) }

// SetIPCache makes the ipcache map hold exactly the given prefixes (policy.State.IPCache).
func (d *Datapath) SetIPCache(want map[netip.Prefix]policy.ID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := false
	for p, id := range want {
		if old, ok := d.ipcache[p]; ok && old == id {
			continue
		}
		if err := d.objs.Ipcache.Put(ipcacheKey(p), bpf.TcIpcacheValue{Identity: uint32(id)}); err != nil {
			return fmt.Errorf("write ipcache %s: %w", p, err)
		}
		d.ipcache[p] = id
		changed = true
	}
	for p := range d.ipcache {
		if _, ok := want[p]; ok {
			continue
		}
		if err := d.objs.Ipcache.Delete(ipcacheKey(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete ipcache %s: %w", p, err)
		}
		delete(d.ipcache, p)
		changed = true
	}
	if changed {
		return d.bumpRevision()
	}
	return nil
}

// DriftEntry is a map entry that Resync found other than netpact last wrote it, and repaired.
type DriftEntry struct {
	// Map is the pinned map: "policy", "prefix_policy" or "endpoints".
	Map string
	// Endpoint is the id of the endpoint the entry belongs to.
	Endpoint uint32
	// Key is the entry's key: in the engine's terms for the policy maps ("ingress identity 5 TCP
	// 8080"), "ifindex 7" for the endpoints map.
	Key string
	// Found is what the map held ("" when the entry was missing); Wrote is what Resync wrote
	// back ("" when it deleted an entry netpact never wrote).
	Found, Wrote string
}

func (e DriftEntry) String() string {
	what := fmt.Sprintf("was %s, wrote %s", e.Found, e.Wrote)
	switch {
	case e.Found == "":
		what = "missing, wrote " + e.Wrote
	case e.Wrote == "":
		what = "not netpact's (" + e.Found + "), deleted"
	}
	return fmt.Sprintf("%s map, endpoint %d, %s: %s", e.Map, e.Endpoint, e.Key, what)
}

// Resync compares the policy maps and the endpoints map with what netpact last wrote and
// repairs any drift: entries changed or removed behind netpact's back are written again and
// entries it never wrote are deleted, all writes before any delete. It returns each entry it
// repaired.
func (d *Datapath) Resync() ([]DriftEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	policyWant := map[bpf.TcPolicyKey]bpf.TcPolicyValue{}
	prefixWant := map[bpf.TcPrefixPolicyKey]bpf.TcPolicyValue{}
	for _, e := range d.applied {
		maps.Copy(policyWant, e.Policy)
		maps.Copy(prefixWant, e.Prefix)
	}
	endpointsWant := make(map[uint32]bpf.TcEndpointInfo, len(d.endpointInfo))
	for ifindex, info := range d.endpointInfo {
		endpointsWant[uint32(ifindex)] = info
	}
	policyWrites, policyDeletes, err := diffMap(d.objs.Policy, "policy", policyWant, describePolicy)
	if err != nil {
		return nil, fmt.Errorf("resync: %w", err)
	}
	prefixWrites, prefixDeletes, err := diffMap(d.objs.PrefixPolicy, "prefix_policy", prefixWant, describePrefix)
	if err != nil {
		return nil, fmt.Errorf("resync: %w", err)
	}
	endpointWrites, endpointDeletes, err := diffMap(d.objs.Endpoints, "endpoints", endpointsWant, describeEndpoint)
	if err != nil {
		return nil, fmt.Errorf("resync: %w", err)
	}
	var fixed []DriftEntry
	var errs []error
	for _, r := range slices.Concat(policyWrites, prefixWrites, endpointWrites, policyDeletes, prefixDeletes, endpointDeletes) {
		if err := r.apply(); err != nil {
			errs = append(errs, fmt.Errorf("repair %s: %w", r.entry, err))
			continue
		}
		fixed = append(fixed, r.entry)
	}
	if len(fixed) > 0 {
		errs = append(errs, d.bumpRevision())
	}
	if err := errors.Join(errs...); err != nil {
		return fixed, fmt.Errorf("resync: %w", err)
	}
	return fixed, nil
}

// repair is one write or delete that makes a map entry what netpact last wrote.
type repair struct {
	entry DriftEntry
	apply func() error
}

// diffMap reads map m and compares it with want: a write for each entry missing or changed, a
// delete for each entry want lacks, each in the order of endpoint and key. describe renders an
// entry as its endpoint id, key and value.
func diffMap[K, V comparable](m *ebpf.Map, name string, want map[K]V, describe func(K, V) (uint32, string, string)) (writes, deletes []repair, err error) {
	have := map[K]V{}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		have[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("read %s map: %w", name, err)
	}
	for k, v := range want {
		got, ok := have[k]
		if ok && got == v {
			continue
		}
		e := DriftEntry{Map: name}
		e.Endpoint, e.Key, e.Wrote = describe(k, v)
		if ok {
			_, _, e.Found = describe(k, got)
		}
		writes = append(writes, repair{e, func() error { return m.Put(k, v) }})
	}
	for k, v := range have {
		if _, ok := want[k]; ok {
			continue
		}
		e := DriftEntry{Map: name}
		e.Endpoint, e.Key, e.Found = describe(k, v)
		deletes = append(deletes, repair{e, func() error {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return err
			}
			return nil
		}})
	}
	byEndpointAndKey := func(a, b repair) int {
		return cmp.Or(cmp.Compare(a.entry.Endpoint, b.entry.Endpoint), strings.Compare(a.entry.Key, b.entry.Key))
	}
	slices.SortFunc(writes, byEndpointAndKey)
	slices.SortFunc(deletes, byEndpointAndKey)
	return writes, deletes, nil
}

// describePolicy renders a policy entry through FromBPF, in the terms Dump uses.
func describePolicy(k bpf.TcPolicyKey, v bpf.TcPolicyValue) (uint32, string, string) {
	e := newEntries()
	e.Policy[k] = v
	return k.EpId, describeKey(FromBPF(e), k), describeValue(v)
}

func describePrefix(k bpf.TcPrefixPolicyKey, v bpf.TcPolicyValue) (uint32, string, string) {
	e := newEntries()
	e.Prefix[k] = v
	return k.EpId, describeKey(FromBPF(e), k), describeValue(v)
}

// describeKey is the key of the one entry of dump, or the raw key when it does not convert.
func describeKey(dump []DumpEntry, raw any) string {
	if len(dump) != 1 {
		return fmt.Sprintf("%+v", raw)
	}
	return fmt.Sprintf("%s %s", dump[0].Direction, dump[0].Key)
}

func describeValue(v bpf.TcPolicyValue) string {
	s := fmt.Sprintf("%s rule %d", policy.Verdict(v.Verdict), v.RuleId)
	if policy.Verdict(v.Verdict) == policy.VerdictProxy {
		s += " to the " + Parser(v.L7).String() + " proxy"
	}
	return s
}

// endpointFlagNames name the flags of enum endpoint_flag.
var endpointFlagNames = []struct {
	flag uint32
	name string
}{
	{flagEnforceIngress, "enforce-ingress"}, {flagEnforceEgress, "enforce-egress"}, {flagHasPrefix, "prefix-policy"},
	{flagFailClosed, "fail-closed"}, {flagHasL7, "l7"}, {flagHasL7Ingress, "l7-ingress"},
}

func describeEndpoint(ifindex uint32, info bpf.TcEndpointInfo) (uint32, string, string) {
	var flags []string
	rest := info.Flags
	for _, f := range endpointFlagNames {
		if info.Flags&f.flag != 0 {
			flags = append(flags, f.name)
			rest &^= f.flag
		}
	}
	if rest != 0 {
		flags = append(flags, fmt.Sprintf("%#x", rest))
	}
	s := fmt.Sprintf("id %d identity %d flags [%s]", info.EpId, info.Identity, strings.Join(flags, " "))
	if info.PrefixPortBits != 0 {
		s += fmt.Sprintf(" prefix port bits %#x", info.PrefixPortBits)
	}
	for _, a := range []netip.Addr{netip.AddrFrom4(info.Ipv4), netip.AddrFrom16(info.Ipv6)} {
		if !a.IsUnspecified() {
			s += " " + a.String()
		}
	}
	return info.EpId, fmt.Sprintf("ifindex %d", ifindex), s
}

// Dump reads an endpoint's entries from the maps and returns them in the engine's terms.
func (d *Datapath) Dump(epID uint32) ([]DumpEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := newEntries()
	var k bpf.TcPolicyKey
	var v bpf.TcPolicyValue
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		if k.EpId == epID {
			e.Policy[k] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump policy map: %w", err)
	}
	var pk bpf.TcPrefixPolicyKey
	pit := d.objs.PrefixPolicy.Iterate()
	for pit.Next(&pk, &v) {
		if pk.EpId == epID {
			e.Prefix[pk] = v
		}
	}
	if err := pit.Err(); err != nil {
		return nil, fmt.Errorf("dump prefix policy map: %w", err)
	}
	return FromBPF(e), nil
}

// PinnedEndpoint is what the endpoints map held for an interface when Open adopted it.
type PinnedEndpoint struct {
	ID         uint32
	IPv4, IPv6 netip.Addr
}

// Pinned returns what the maps held when Open adopted them: the endpoints by ifindex and the
// ipcache. A restarted enforcer keeps the same endpoint ids and identity numbers, so that no
// pod is judged by another's entries while it programs the node again.
func (d *Datapath) Pinned() (map[int]PinnedEndpoint, map[netip.Prefix]policy.ID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	eps := make(map[int]PinnedEndpoint, len(d.pinnedInfo))
	for ifindex, info := range d.pinnedInfo {
		pe := PinnedEndpoint{ID: info.EpId}
		if a := netip.AddrFrom4(info.Ipv4); !a.IsUnspecified() {
			pe.IPv4 = a
		}
		if a := netip.AddrFrom16(info.Ipv6); !a.IsUnspecified() {
			pe.IPv6 = a
		}
		eps[ifindex] = pe
	}
	ipc := make(map[netip.Prefix]policy.ID, len(d.pinnedIPCache))
	for p, id := range d.pinnedIPCache {
		ipc[p] = id
	}
	return eps, ipc
}

// Prune removes what no endpoint owns any more: the endpoint entry and links of an interface
// that is gone (a pod deleted while no enforcer ran), and the policy entries of endpoint ids
// that neither keep names nor an existing interface's entry uses.
func (d *Datapath) Prune(keep map[uint32]bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	changed := false
	inUse := map[uint32]bool{}
	interfaces := map[uint32]int{}
	for _, info := range d.endpointInfo {
		interfaces[info.EpId]++
	}
	for ifindex, info := range d.endpointInfo {
		// Interfaces of the endpoints keep names exist; only the others are looked up, and an id
		// on two interfaces (a pod whose sandbox was made again: the old veth goes with the old
		// sandbox) has both looked up, so the old one's entry and maps do not stay for the pod's
		// life.
		if keep[info.EpId] && info.EpId != 0 && interfaces[info.EpId] == 1 {
			inUse[info.EpId] = true
			continue
		}
		if _, err := netlink.LinkByIndex(ifindex); err == nil {
			inUse[info.EpId] = true
			continue
		}
		errs = append(errs, d.attach.detach(ifindex))
		if err := d.objs.Endpoints.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete endpoint entry of gone interface %d: %w", ifindex, err))
			continue
		}
		errs = append(errs, d.forgetAddrs(ifindex))
		delete(d.endpointInfo, ifindex)
		d.forgetNetns(ifindex)
		changed = true
	}
	for id, have := range d.applied {
		if keep[id] || inUse[id] {
			continue
		}
		if _, err := d.writeDeletes(have, newEntries()); err != nil {
			errs = append(errs, fmt.Errorf("delete entries of endpoint id %d: %w", id, err))
			continue
		}
		delete(d.applied, id)
		changed = true
	}
	if changed {
		errs = append(errs, d.bumpRevision())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	return nil
}

// forgetNetns deletes an interface's network namespace cookie (flow events name no Service for
// it) and id (no UDP reply is recovered for it).
func (d *Datapath) forgetNetns(ifindex int) {
	d.shares.forget(&d.objs, ifindex, d.netns[ifindex])
	_ = d.objs.EndpointNetns.Delete(uint32(ifindex))
	delete(d.netns, ifindex)
	_ = d.objs.EndpointNsid.Delete(uint32(ifindex))
	delete(d.nsid, ifindex)
}

// writeNsid writes the id the node's network namespace gives the namespace at the other end of
// the endpoint's veth (IFLA_LINK_NETNSID, allocated by the kernel when the link is read): with it
// tc finds the pod's UDP sockets, to recover the answers of flows whose conntrack entries another
// pod's flows evicted. An interface without a peer namespace gets none (-1): nothing to recover.
func (d *Datapath) writeNsid(ifindex int) error {
	if _, ok := d.nsid[ifindex]; ok {
		return nil
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("read endpoint interface %d: %w", ifindex, err)
	}
	id := int32(l.Attrs().NetNsID)
	if err := d.objs.EndpointNsid.Put(uint32(ifindex), id); err != nil {
		return fmt.Errorf("write endpoint network namespace id: %w", err)
	}
	d.nsid[ifindex] = id
	return nil
}
