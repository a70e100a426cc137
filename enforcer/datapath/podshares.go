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
func loadPodShares(o *objects) (*podShares, error) {
	revnat, err := innerSpec(bpf.LoadSock, "sock_revnat_pod")
	if err != nil {
		return nil, err
	}
	syns, err := innerSpec(bpf.LoadTc, "proxy_syns_pod")
	if err != nil {
		return nil, err
	}
	s := &podShares{revnatSpec: revnat, synsSpec: syns, revnat: map[uint64]bool{}, syns: map[int]bool{}}
	var cookie uint64
	var id ebpf.MapID
	it := o.sock.SockRevnatPod.Iterate()
	for it.Next(&cookie, &id) {
		s.revnat[cookie] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read sock_revnat_pod map: %w", err)
	}
	return s, nil
}

// innerSpec is the spec of the maps that the map of maps name of an object holds.
func innerSpec(load func() (*ebpf.CollectionSpec, error), name string) (*ebpf.MapSpec, error) {
	spec, err := load()
	if err != nil {
		return nil, fmt.Errorf("load program spec: %w", err)
	}
	ms, ok := spec.Maps[name]
	if !ok || ms.InnerMap == nil {
		return nil, fmt.Errorf("program spec: no map of maps %s", name)
	}
	return ms.InnerMap, nil
}

// add makes the endpoint's maps, where it has none yet.
func (s *podShares) add(o *objects, ifindex int, cookie uint64) error {
	if !s.syns[ifindex] {
		if err := putInner(o.ProxySynsPod, uint32(ifindex), s.synsSpec); err != nil {
			return fmt.Errorf("proxy SYN share of interface %d: %w", ifindex, err)
		}
		s.syns[ifindex] = true
	}
	if cookie != 0 && !s.revnat[cookie] {
		if err := putInner(o.sock.SockRevnatPod, cookie, s.revnatSpec); err != nil {
			return fmt.Errorf("reverse translation share of network namespace %d: %w", cookie, err)
		}
		s.revnat[cookie] = true
	}
	return nil
}

// forget deletes the endpoint's maps (the map of maps held the only reference).
func (s *podShares) forget(o *objects, ifindex int, cookie uint64) {
	if err := o.ProxySynsPod.Delete(uint32(ifindex)); err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		delete(s.syns, ifindex)
	}
	if cookie == 0 {
		return
	}
	if err := o.sock.SockRevnatPod.Delete(cookie); err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
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
