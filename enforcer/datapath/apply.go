package datapath

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

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
	info := bpf.NetpactEndpointInfo{EpId: ep.ID, Identity: uint32(ep.Identity), Flags: flags, PrefixPortBits: prefixPortBits}
	if ep.IPv4.IsValid() {
		info.Ipv4 = ep.IPv4.As4()
	}
	if ep.IPv6.IsValid() {
		info.Ipv6 = ep.IPv6.As16()
	}
	if ep.NetnsCookie != 0 && d.netns[ep.Ifindex] != ep.NetnsCookie {
		if err := d.objs.EndpointNetns.Put(uint32(ep.Ifindex), ep.NetnsCookie); err != nil {
			return false, fmt.Errorf("write endpoint network namespace: %w", err)
		}
		d.netns[ep.Ifindex] = ep.NetnsCookie
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

func ipcacheKey(p netip.Prefix) bpf.NetpactIpcacheKey {
	return bpf.NetpactIpcacheKey{Prefixlen: uint32(32 + p.Bits()), Family: family(p.Addr()), Addr: addr16(p.Masked().Addr())}
}

func ipcachePrefix(k bpf.NetpactIpcacheKey) netip.Prefix {
	var a netip.Addr
	if k.Family == familyV4 {
		a = netip.AddrFrom4([4]byte(k.Addr[:4]))
	} else {
		a = netip.AddrFrom16(k.Addr)
	}
	return netip.PrefixFrom(a, int(k.Prefixlen)-32)
}

// SetIPCache makes the ipcache map hold exactly the given prefixes (policy.State.IPCache).
func (d *Datapath) SetIPCache(want map[netip.Prefix]policy.ID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := false
	for p, id := range want {
		if old, ok := d.ipcache[p]; ok && old == id {
			continue
		}
		if err := d.objs.Ipcache.Put(ipcacheKey(p), bpf.NetpactIpcacheValue{Identity: uint32(id)}); err != nil {
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

// Resync compares the policy maps with what was last applied and repairs any drift (entries
// changed or removed behind netpact's back, or left over). It returns how many entries it fixed.
func (d *Datapath) Resync() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fixed := 0
	actual := map[bpf.NetpactPolicyKey]bpf.NetpactPolicyValue{}
	var k bpf.NetpactPolicyKey
	var v bpf.NetpactPolicyValue
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		actual[k] = v
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("resync: read policy map: %w", err)
	}
	for _, e := range d.applied {
		for k, v := range e.Policy {
			if got, ok := actual[k]; !ok || got != v {
				if err := d.objs.Policy.Put(k, v); err != nil {
					return fixed, fmt.Errorf("resync: write policy entry: %w", err)
				}
				fixed++
			}
			delete(actual, k)
		}
	}
	for k := range actual {
		if err := d.objs.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fixed, fmt.Errorf("resync: delete policy entry: %w", err)
		}
		fixed++
	}
	actualPrefix := map[bpf.NetpactPrefixPolicyKey]bpf.NetpactPolicyValue{}
	var pk bpf.NetpactPrefixPolicyKey
	pit := d.objs.PrefixPolicy.Iterate()
	for pit.Next(&pk, &v) {
		actualPrefix[pk] = v
	}
	if err := pit.Err(); err != nil {
		return fixed, fmt.Errorf("resync: read prefix policy map: %w", err)
	}
	for _, e := range d.applied {
		for k, v := range e.Prefix {
			if got, ok := actualPrefix[k]; !ok || got != v {
				if err := d.objs.PrefixPolicy.Put(k, v); err != nil {
					return fixed, fmt.Errorf("resync: write prefix policy entry: %w", err)
				}
				fixed++
			}
			delete(actualPrefix, k)
		}
	}
	for k := range actualPrefix {
		if err := d.objs.PrefixPolicy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fixed, fmt.Errorf("resync: delete prefix policy entry: %w", err)
		}
		fixed++
	}
	if fixed > 0 {
		return fixed, d.bumpRevision()
	}
	return fixed, nil
}

// Dump reads an endpoint's entries from the maps and returns them in the engine's terms.
func (d *Datapath) Dump(epID uint32) ([]DumpEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := newEntries()
	var k bpf.NetpactPolicyKey
	var v bpf.NetpactPolicyValue
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		if k.EpId == epID {
			e.Policy[k] = v
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump policy map: %w", err)
	}
	var pk bpf.NetpactPrefixPolicyKey
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

// ResyncEvery runs Resync every interval until ctx is done. report gets each result that fixed
// something or failed.
func (d *Datapath) ResyncEvery(ctx context.Context, interval time.Duration, report func(fixed int, err error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if fixed, err := d.Resync(); (fixed > 0 || err != nil) && report != nil {
				report(fixed, err)
			}
		}
	}
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
	for ifindex, info := range d.endpointInfo {
		// Interfaces of the endpoints keep names exist; only the others are looked up.
		if keep[info.EpId] && info.EpId != 0 {
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

// forgetNetns deletes an interface's network namespace cookie (flow events name no Service for it).
func (d *Datapath) forgetNetns(ifindex int) {
	_ = d.objs.EndpointNetns.Delete(uint32(ifindex))
	delete(d.netns, ifindex)
}
