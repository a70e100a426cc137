package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// Service is one frontend of a Service the socket programs translate: a ClusterIP, port and
// protocol, and the ready backends (pod address and target port) a new connection picks from.
// No backends: connections to the frontend are refused at once.
type Service struct {
	// Name is "namespace/name" of the Kubernetes Service, for flow events.
	Name     string
	Frontend netip.AddrPort
	Proto    policy.Proto
	Backends []netip.AddrPort
}

// label names the frontend in flow output: "namespace/name 10.96.0.10:53/UDP".
func (s Service) label() string {
	return fmt.Sprintf("%s %s/%s", s.Name, s.Frontend, s.Proto)
}

// key is the frontend's services-map key.
func (s Service) key() bpf.TcSvcKey {
	return bpf.TcSvcKey{Addr: addr16(s.Frontend.Addr()), Port: htons(s.Frontend.Port()), Proto: uint8(s.Proto), Family: uint8(family(s.Frontend.Addr()))}
}

// maxBackends bounds the backends of one frontend (the backends map holds 262,144 in all).
const maxBackends = 4096

// checkService refuses what the programs cannot translate faithfully.
func checkService(s Service) error {
	switch {
	case !s.Frontend.Addr().IsValid() || s.Frontend.Addr().Is4In6():
		return fmt.Errorf("service %s: frontend %s is not an IPv4 or IPv6 address", s.Name, s.Frontend)
	case s.Frontend.Port() == 0:
		return fmt.Errorf("service %s: frontend %s has no port", s.Name, s.Frontend)
	case s.Proto != policy.ProtoTCP && s.Proto != policy.ProtoUDP:
		return fmt.Errorf("service %s: protocol %s is not translated (TCP and UDP are)", s.Name, s.Proto)
	case len(s.Backends) > maxBackends:
		return fmt.Errorf("service %s: %d backends, at most %d", s.Name, len(s.Backends), maxBackends)
	}
	for _, b := range s.Backends {
		if !b.Addr().IsValid() || b.Addr().Is4() != s.Frontend.Addr().Is4() || b.Addr().Is4In6() || b.Port() == 0 {
			return fmt.Errorf("service %s: backend %s does not fit frontend %s (same family, a port)", s.Name, b, s.Frontend)
		}
	}
	return nil
}

// backendValue is a backend in the backends map's layout.
func backendValue(b netip.AddrPort) bpf.SockBackendValue {
	return bpf.SockBackendValue{Addr: addr16(b.Addr()), Port: htons(b.Port()), Family: uint8(family(b.Addr()))}
}

// SetServices makes the socket programs translate exactly these frontends. A frontend keeps its
// id while it exists; a changed backend list is written slots first and count last (growing) or
// count first (shrinking), so a connect never sees a count beyond the slots written. A frontend
// that is not valid refuses the whole call before anything is written.
func (d *Datapath) SetServices(want []Service) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	wantBy := map[bpf.TcSvcKey]Service{}
	for _, s := range want {
		if err := checkService(s); err != nil {
			return fmt.Errorf("set services: %w", err)
		}
		k := s.key()
		if _, dup := wantBy[k]; dup {
			return fmt.Errorf("set services: frontend %s/%s twice (%s)", s.Frontend, s.Proto, s.Name)
		}
		wantBy[k] = s
	}
	var errs []error
	added := false
	for k, s := range wantBy {
		have, ok := d.services[k]
		if ok && slices.Equal(have.Backends, s.Backends) {
			d.services[k] = appliedService{id: have.id, Service: s}
			d.serviceNames[have.id] = s.label()
			continue
		}
		id := have.id
		if !ok {
			id = d.nextServiceID()
			added = true
		}
		if err := d.writeService(k, id, have.Backends, s.Backends); err != nil {
			errs = append(errs, err)
			continue
		}
		d.services[k] = appliedService{id: id, Service: s}
		d.serviceNames[id] = s.label()
	}
	for k, have := range d.services {
		if _, ok := wantBy[k]; ok {
			continue
		}
		if err := d.objs.Services.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete service %s: %w", have.Frontend, err))
			continue
		}
		for slot := 1; slot <= len(have.Backends); slot++ {
			_ = d.objs.sock.Backends.Delete(bpf.SockBackendKey{Id: have.id, Slot: uint32(slot)})
		}
		delete(d.services, k)
		delete(d.serviceNames, have.id)
	}
	if added {
		// A flow opened to an address before it became a frontend is checked again (and
		// dropped when it did not go through the socket programs).
		errs = append(errs, d.bumpRevision())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("set services: %w", err)
	}
	return nil
}

// writeService moves frontend k from backends have to want.
func (d *Datapath) writeService(k bpf.TcSvcKey, id uint32, have, want []netip.AddrPort) error {
	putCount := func() error {
		if err := d.objs.Services.Put(k, bpf.TcSvcValue{Id: id, Count: uint32(len(want))}); err != nil {
			return fmt.Errorf("write service %d: %w", id, err)
		}
		return nil
	}
	if len(want) < len(have) {
		if err := putCount(); err != nil {
			return err
		}
	}
	for i, b := range want {
		if i < len(have) && have[i] == b {
			continue
		}
		if err := d.objs.sock.Backends.Put(bpf.SockBackendKey{Id: id, Slot: uint32(i + 1)}, backendValue(b)); err != nil {
			return fmt.Errorf("write backend %s of service %d: %w", b, id, err)
		}
	}
	if len(want) >= len(have) {
		if err := putCount(); err != nil {
			return err
		}
	}
	for slot := len(want) + 1; slot <= len(have); slot++ {
		if err := d.objs.sock.Backends.Delete(bpf.SockBackendKey{Id: id, Slot: uint32(slot)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete backend slot %d of service %d: %w", slot, id, err)
		}
	}
	return nil
}

func (d *Datapath) nextServiceID() uint32 {
	used := map[uint32]bool{}
	for _, s := range d.services {
		used[s.id] = true
	}
	for used[d.lastServiceID+1] || d.lastServiceID+1 == 0 {
		d.lastServiceID++
	}
	d.lastServiceID++
	return d.lastServiceID
}

// appliedService is a frontend as the maps hold it.
type appliedService struct {
	id uint32
	Service
}

// loadServices reads the frontends and backends an earlier process wrote.
func (d *Datapath) loadServices() error {
	d.services = map[bpf.TcSvcKey]appliedService{}
	d.serviceNames = map[uint32]string{}
	var k bpf.TcSvcKey
	var v bpf.TcSvcValue
	it := d.objs.Services.Iterate()
	for it.Next(&k, &v) {
		s := appliedService{id: v.Id}
		addr := addrFrom16(k.Addr, uint32(k.Family))
		s.Frontend, s.Proto = netip.AddrPortFrom(addr, htons(k.Port)), policy.Proto(k.Proto)
		for slot := uint32(1); slot <= v.Count; slot++ {
			var b bpf.SockBackendValue
			if err := d.objs.sock.Backends.Lookup(bpf.SockBackendKey{Id: v.Id, Slot: slot}, &b); err != nil {
				// A slot missing: rewrite the whole list at the next SetServices.
				s.Backends = nil
				break
			}
			s.Backends = append(s.Backends, netip.AddrPortFrom(addrFrom16(b.Addr, uint32(b.Family)), htons(b.Port)))
		}
		d.services[k] = s
		d.lastServiceID = max(d.lastServiceID, v.Id)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read services map: %w", err)
	}
	return nil
}

// ServiceName names the Service frontend of an id, as "namespace/name 10.96.0.10:53/UDP" (""
// when unknown).
func (d *Datapath) ServiceName(id uint32) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.serviceNames[id]
}

func addrFrom16(b [16]uint8, fam uint32) netip.Addr {
	if fam == familyV4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// The socket programs and where each attaches in the cgroup.
func (d *Datapath) sockPrograms() map[string]struct {
	prog *ebpf.Program
	at   ebpf.AttachType
} {
	o := &d.objs.sock
	type pa = struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}
	return map[string]pa{
		"connect4": {o.SockConnect4, ebpf.AttachCGroupInet4Connect}, "connect6": {o.SockConnect6, ebpf.AttachCGroupInet6Connect},
		"sendmsg4": {o.SockSendmsg4, ebpf.AttachCGroupUDP4Sendmsg}, "sendmsg6": {o.SockSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		"recvmsg4": {o.SockRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg}, "recvmsg6": {o.SockRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
		"getpeername4": {o.SockGetpeername4, ebpf.AttachCgroupInet4GetPeername}, "getpeername6": {o.SockGetpeername6, ebpf.AttachCgroupInet6GetPeername},
	}
}

const cgroupLinkPrefix = "cgroup_"

// attachCgroup attaches the socket programs to the cgroup v2 directory dir (every process in it
// and below), as pinned bpf_links: a pinned link of an earlier process gets the new program
// atomically; one that is defunct (its cgroup went away) or on another cgroup is replaced.
func (d *Datapath) attachCgroup(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("attach socket programs: cgroup %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("attach socket programs: %s is not a cgroup v2 directory", dir)
	}
	var cg unix.Stat_t
	if err := unix.Stat(dir, &cg); err != nil {
		return fmt.Errorf("attach socket programs: cgroup %s: %w", dir, err)
	}
	for name, p := range d.sockPrograms() {
		pin := filepath.Join(d.opts.PinPath, "links", cgroupLinkPrefix+name)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := l.Info()
			same := ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cg.Ino
			if same {
				if err := l.Update(p.prog); err == nil {
					d.cgroupLinks = append(d.cgroupLinks, l)
					continue
				} else if !errors.Is(err, unix.ENOLINK) {
					l.Close()
					return fmt.Errorf("swap socket program %s: %w", name, err)
				}
			}
			l.Unpin()
			l.Close()
		} else if !errors.Is(err, os.ErrNotExist) {
			os.Remove(pin)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: p.at, Program: p.prog})
		if err != nil {
			return fmt.Errorf("attach socket program %s to cgroup %s: %w", name, dir, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin socket program link %s (bpf_link needed, kernel >= 5.7): %w", name, err)
		}
		d.cgroupLinks = append(d.cgroupLinks, l)
	}
	return nil
}

// detachCgroup removes the socket programs' links.
func (d *Datapath) detachCgroup() error {
	var errs []error
	for _, l := range d.cgroupLinks {
		errs = append(errs, l.Unpin(), l.Close())
	}
	d.cgroupLinks = nil
	entries, _ := os.ReadDir(filepath.Join(d.opts.PinPath, "links"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), cgroupLinkPrefix) {
			errs = append(errs, os.Remove(filepath.Join(d.opts.PinPath, "links", e.Name())))
		}
	}
	return errors.Join(errs...)
}

// OwnCgroup is the cgroup v2 directory this process is in (from /proc/self/cgroup and the
// cgroup2 mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
func OwnCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("find own cgroup: %w", err)
	}
	var rel string
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		if r, ok := strings.CutPrefix(line, "0::"); ok {
			rel, found = r, true
		}
	}
	if !found {
		return "", errors.New("find own cgroup: no cgroup v2 line in /proc/self/cgroup")
	}
	root, err := CgroupRoot("/sys/fs/cgroup")
	if err != nil {
		return "", err
	}
	return filepath.Join(root, rel), nil
}

// CgroupRoot is the cgroup v2 mount at base (a cgroup2 mount itself) or at base/unified.
func CgroupRoot(base string) (string, error) {
	for _, dir := range []string{base, filepath.Join(base, "unified")} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir, nil
		}
	}
	return "", fmt.Errorf("find cgroup v2: neither %s nor %s/unified is a cgroup2 mount", base, base)
}
