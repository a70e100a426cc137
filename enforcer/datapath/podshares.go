package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/netpact/netpact/bpf"
)

// podShares gives each endpoint maps of its own inside a map of maps (sock_revnat_pod by the
// pod's network namespace cookie, proxy_syns_pod by its veth): LRU maps a pod fills evict only
// that pod's entries, never another's.
type podShares struct {
	revnatSpec, synsSpec *ebpf.MapSpec
	// revnat are the network namespace cookies sock_revnat_pod has a map for (pinned: read at
	// start); syns the interfaces proxy_syns_pod has one for (not pinned: made by this process).
	revnat map[uint64]bool
	syns   map[int]bool
}

// loadPodShares reads the inner maps' specs, and which pods the pinned sock_revnat_pod serves.
func loadPodShares(m *bpf.NetpactMaps) (*podShares, error) {
	spec, err := bpf.LoadNetpact()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	s := &podShares{revnat: map[uint64]bool{}, syns: map[int]bool{}}
	for name, dst := range map[string]**ebpf.MapSpec{"sock_revnat_pod": &s.revnatSpec, "proxy_syns_pod": &s.synsSpec} {
		ms, ok := spec.Maps[name]
		if !ok || ms.InnerMap == nil {
			return nil, fmt.Errorf("program spec: no map of maps %s", name)
		}
		*dst = ms.InnerMap
	}
	var cookie uint64
	var id ebpf.MapID
	it := m.SockRevnatPod.Iterate()
	for it.Next(&cookie, &id) {
		s.revnat[cookie] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read sock_revnat_pod map: %w", err)
	}
	return s, nil
}

// add makes the endpoint's maps, where it has none yet.
func (s *podShares) add(m *bpf.NetpactMaps, ifindex int, cookie uint64) error {
	if !s.syns[ifindex] {
		if err := putInner(m.ProxySynsPod, uint32(ifindex), s.synsSpec); err != nil {
			return fmt.Errorf("proxy SYN share of interface %d: %w", ifindex, err)
		}
		s.syns[ifindex] = true
	}
	if cookie != 0 && !s.revnat[cookie] {
		if err := putInner(m.SockRevnatPod, cookie, s.revnatSpec); err != nil {
			return fmt.Errorf("reverse translation share of network namespace %d: %w", cookie, err)
		}
		s.revnat[cookie] = true
	}
	return nil
}

// forget deletes the endpoint's maps (the map of maps held the only reference).
func (s *podShares) forget(m *bpf.NetpactMaps, ifindex int, cookie uint64) {
	if err := m.ProxySynsPod.Delete(uint32(ifindex)); err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		delete(s.syns, ifindex)
	}
	if cookie == 0 {
		return
	}
	if err := m.SockRevnatPod.Delete(cookie); err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		delete(s.revnat, cookie)
	}
}

// putInner creates a map of spec and stores it at key of outer; outer keeps it alive.
func putInner(outer *ebpf.Map, key any, spec *ebpf.MapSpec) error {
	inner, err := ebpf.NewMap(spec.Copy())
	if err != nil {
		return err
	}
	defer inner.Close()
	return outer.Put(key, inner)
}
