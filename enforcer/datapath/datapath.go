// Package datapath owns netpact's eBPF programs, maps and links on one node: it loads the
// programs from package bpf, pins everything under a bpffs directory so enforcement survives the
// process, attaches to pod veths (tcx, or legacy tc where tcx is missing), and writes the policy
// engine's compiled state into the maps as diffs.
package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

const (
	cfgDenyICMP = 1 // CFG_DENY_ICMP in bpf/lib/config.h
	cfgSocketLB = 2 // CFG_SOCKET_LB
)

// DefaultPinPath is where maps, programs and links are pinned.
const DefaultPinPath = "/sys/fs/bpf/netpact"

// Options configure a datapath.
type Options struct {
	// PinPath is the bpffs directory for pins; DefaultPinPath when empty.
	PinPath string
	// EventsPerSecond bounds flow events per CPU so a flood cannot starve the reader; 0 means
	// 10,000.
	EventsPerSecond uint64
	// ForceLegacyTC attaches with tc clsact filters even where tcx works.
	ForceLegacyTC bool
	// DenyResponseICMP answers a packet dropped by policy with ICMP or ICMPv6 destination
	// unreachable (administratively prohibited) instead of dropping it silently, as Cilium's
	// policy-deny-response=icmp does.
	DenyResponseICMP bool
	// Cgroup, when set, is the cgroup v2 directory whose processes (and their descendants')
	// get Service translation at the socket: the node's pods. Empty: no translation.
	Cgroup string
}

// Endpoint is a pod as the datapath sees it: its host-side veth and its addresses.
type Endpoint struct {
	Ifindex  int
	Ifname   string
	ID       uint32
	Identity policy.ID
	IPv4     netip.Addr
	IPv6     netip.Addr
	// NetnsCookie is the pod's network namespace cookie (SO_NETNS_COOKIE): with it, flow events
	// name the Service a pod's connection was translated from. 0: not known.
	NetnsCookie uint64
}

// Datapath is an open datapath. Close releases this process's handles and leaves enforcement
// running; Teardown removes it.
type Datapath struct {
	mu      sync.Mutex
	opts    Options
	objs    objects
	attach  *attacher
	applied map[uint32]Entries // per endpoint id, what the maps hold
	ipcache map[netip.Prefix]policy.ID
	cfg     bpf.TcConfig
	// endpointInfo is what the endpoints map holds, by ifindex.
	endpointInfo map[int]bpf.TcEndpointInfo
	// pinnedInfo and pinnedIPCache are what the maps held when Open adopted them.
	pinnedInfo    map[int]bpf.TcEndpointInfo
	pinnedIPCache map[netip.Prefix]policy.ID
	// services are the frontends the maps hold, serviceNames their Services by id.
	services      map[bpf.TcSvcKey]appliedService
	serviceNames  map[uint32]string
	lastServiceID uint32
	cgroupLinks   []link.Link
	lookupLink    link.Link // proxy_lookup in this process's network namespace (SetProxyListeners)
	// netns are the endpoints' network namespace cookies the endpoint_netns map holds.
	netns map[int]uint64
	// shares are the endpoints' own LRU maps.
	shares *podShares
	// nsid are the ids of the endpoints' network namespaces this process wrote to the
	// endpoint_nsid map (each read anew once per process: an interface index may have been
	// reused while the node agent was down).
	nsid map[int]int32
	// l7 carries the L7 proxy's events to the flow reader; l7Lost counts those it had no room for.
	l7     chan Flow
	l7Lost atomic.Uint64
}

// Open loads the programs, adopting pinned maps and links from an earlier process, and swaps
// the programs of every pinned link to the ones just loaded. Pin directories must be root's and
// writable by no one else (bpffs is mounted world-writable): another user's could hold maps
// that decide what is allowed. When Open fails, a pin directory it created is removed again;
// one it adopted stays, with the enforcement it holds.
func Open(opts Options) (d *Datapath, err error) {
	if opts.PinPath == "" {
		opts.PinPath = DefaultPinPath
	}
	if opts.EventsPerSecond == 0 {
		opts.EventsPerSecond = 10000
	}
	if err := ensureBPFFS(bpffsRoot(opts.PinPath)); err != nil {
		return nil, err
	}
	if _, statErr := os.Lstat(opts.PinPath); errors.Is(statErr, os.ErrNotExist) {
		defer func() {
			if err != nil {
				os.RemoveAll(opts.PinPath)
			}
		}()
	}
	for _, dir := range []string{opts.PinPath, filepath.Join(opts.PinPath, "links"), filepath.Join(opts.PinPath, "progs")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create pin directory %s: %w", dir, err)
		}
		if err := checkOwnership(dir); err != nil {
			return nil, err
		}
	}
	if err := dropStaleStatsPins(opts.PinPath); err != nil {
		return nil, err
	}
	d = &Datapath{opts: opts, applied: map[uint32]Entries{}, endpointInfo: map[int]bpf.TcEndpointInfo{}, netns: map[int]uint64{}, nsid: map[int]int32{}}
	// From here on, a failure closes what Open loaded and attached. The cleanup holds its own
	// pointer: `return nil, err` sets the named result d to nil before deferred calls run.
	loaded := d
	defer func() {
		if err != nil {
			loaded.closeCgroupLinks()
			loaded.objs.Close()
		}
	}()
	if err := loadObjects(&d.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load programs: verifier: %+v", ve)
		}
		return nil, fmt.Errorf("load programs (pinned maps in %s may be from an incompatible version; Teardown removes them): %w", opts.PinPath, err)
	}
	if d.shares, err = loadPodShares(&d.objs); err != nil {
		return nil, err
	}
	if err := d.initSettings(opts); err != nil {
		return nil, err
	}
	if err := d.bumpRevision(); err != nil {
		return nil, err
	}
	if err := d.pinPrograms(); err != nil {
		return nil, err
	}
	d.attach = &attacher{pinDir: filepath.Join(opts.PinPath, "links"), forceLegacy: opts.ForceLegacyTC,
		fromPod: d.objs.TcFromPod, toPod: d.objs.TcToPod, fromUplink: d.objs.TcFromUplink}
	if err := d.attach.adopt(); err != nil {
		return nil, err
	}
	if err := d.loadApplied(); err != nil {
		return nil, err
	}
	if err := d.loadServices(); err != nil {
		return nil, err
	}
	if opts.Cgroup != "" {
		if err := d.attachCgroup(opts.Cgroup); err != nil {
			return nil, err
		}
	}
	d.pinnedInfo = maps.Clone(d.endpointInfo)
	d.pinnedIPCache = maps.Clone(d.ipcache)
	return d, nil
}

// initSettings reads the settings an earlier process left and sets this one's: the event rate,
// the flags, and the random marks (kept across restarts).
func (d *Datapath) initSettings(opts Options) error {
	// Continue the policy revision of an earlier process: tracked flows are checked again once.
	if err := d.objs.Settings.Lookup(uint32(0), &d.cfg); err != nil {
		return fmt.Errorf("read settings: %w", err)
	}
	d.cfg.EventsPerSec, d.cfg.Flags = opts.EventsPerSecond, 0
	// The mark of the deny responses: random, kept across restarts (responses in flight keep
	// passing), never 0 (unmarked).
	for d.cfg.ResponseMark == 0 {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("draw the response mark: %w", err)
		}
		d.cfg.ResponseMark = binary.LittleEndian.Uint32(b[:])
	}
	// The proxy's mark: random, high 16 bits only (clear of MARK_TO_PROXY's 0xf00 and of
	// kube-proxy's 0x4000 and 0x8000), kept across restarts like the response mark.
	for d.cfg.ProxyMark&0xffff0000 == 0 || d.cfg.ProxyMark&0xffff != 0 || d.cfg.ProxyMark == d.cfg.ResponseMark {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("draw the proxy mark: %w", err)
		}
		d.cfg.ProxyMark = binary.LittleEndian.Uint32(b[:]) &^ 0xffff
	}
	if opts.DenyResponseICMP {
		d.cfg.Flags |= cfgDenyICMP
	}
	if opts.Cgroup != "" {
		d.cfg.Flags |= cfgSocketLB
	}
	return nil
}

// objects are the datapath's programs and maps, one collection per object of package bpf: the tc
// programs and their maps; the socket programs' maps, and with Service translation the socket
// programs; the proxy's listener lookup once SetProxyListeners asks for it. Maps that several
// objects use are pinned by name, so every object's load adopts the same map.
type objects struct {
	bpf.TcObjects
	sock   bpf.SockObjects
	lookup bpf.LookupObjects
}

func (o *objects) Close() error {
	return errors.Join(o.TcObjects.Close(), o.sock.Close(), o.lookup.Close())
}

// loadObjects loads the maps (adopting pinned ones) and the tc programs, and the socket programs
// only when translation is asked for: a kernel without them (bpf_set_retval, the getpeername
// hooks) still enforces policy. The socket programs' maps are loaded either way: Services and the
// pods' shares of reverse translations are written to them.
func loadObjects(objs *objects, opts Options) error {
	pinned := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinPath}}
	// Not the tc object's variables: they are there only so that bpf2go mirrors the C enums, and
	// loading them would make a map for nothing.
	tc := struct {
		*bpf.TcMaps
		*bpf.TcPrograms
	}{&objs.TcMaps, &objs.TcPrograms}
	if err := bpf.LoadTcObjects(&tc, pinned); err != nil {
		return err
	}
	if err := bpf.LoadSockObjects(&objs.sock.SockMaps, pinned); err != nil {
		return err
	}
	if opts.Cgroup == "" {
		return nil
	}
	if err := bpf.LoadSockObjects(&objs.sock.SockPrograms, pinned); err != nil {
		return fmt.Errorf("socket programs for Service translation (kernel >= 5.18 needed; without --cgroup-root, policy is enforced and Services are left to kube-proxy): %w", err)
	}
	return nil
}

// statsMaps hold only statistics: when an upgrade changed their layout (a reason added to the
// counters), the pinned one is replaced instead of refusing to start. The maps that decide
// verdicts are never replaced this way: an incompatible one still stops Open.
var statsMaps = map[string]bool{"counters": true, "event_ratelimit": true, "events_lost": true}

// dropStaleStatsPins removes pinned statistics maps whose type, key, value or size differ from
// the programs' now.
func dropStaleStatsPins(pinPath string) error {
	spec, err := bpf.LoadTc()
	if err != nil {
		return fmt.Errorf("load program spec: %w", err)
	}
	for name := range statsMaps {
		ms, ok := spec.Maps[name]
		if !ok {
			continue
		}
		path := filepath.Join(pinPath, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			continue // none pinned (or unreadable: the load below says so)
		}
		info, ierr := m.Info()
		m.Close()
		if ierr == nil && (info.Type != ms.Type || info.KeySize != ms.KeySize || info.ValueSize != ms.ValueSize ||
			info.MaxEntries != ms.MaxEntries) {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("replace stale statistics map %s: %w", name, err)
			}
		}
	}
	return nil
}

// checkOwnership refuses a pin directory that is a symlink, not root's (not this process's
// user's), or writable by group or others.
func checkOwnership(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check pin directory %s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("pin directory %s is not a directory (%s): refused", dir, fi.Mode().Type())
	case !ok || int(st.Uid) != os.Geteuid():
		return fmt.Errorf("pin directory %s belongs to uid %d, not to this process's uid %d: refused (remove it)", dir, st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("pin directory %s is writable by group or others (mode %v): refused (remove it)", dir, fi.Mode().Perm())
	}
	return nil
}

// bumpRevision tells the programs that policy changed: every tracked flow is checked against
// the maps again at its next packet in its original direction.
func (d *Datapath) bumpRevision() error {
	d.cfg.PolicyRev++
	if err := d.objs.Settings.Put(uint32(0), d.cfg); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}

// pinPrograms replaces the program pins with the programs of this process.
func (d *Datapath) pinPrograms() error {
	for name, p := range map[string]*ebpf.Program{"tc_from_pod": d.objs.TcFromPod, "tc_to_pod": d.objs.TcToPod} {
		path := filepath.Join(d.opts.PinPath, "progs", name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("replace program pin %s: %w", path, err)
		}
		if err := p.Pin(path); err != nil {
			return fmt.Errorf("pin program %s: %w", name, err)
		}
	}
	return nil
}

// loadApplied reads what the policy maps hold, so that the first update after a restart is a
// diff against the real state and entries that stay the same are never touched.
func (d *Datapath) loadApplied() error {
	var k bpf.TcPolicyKey
	var v bpf.TcPolicyValue
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		e := d.entriesOf(k.EpId)
		e.Policy[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read policy map: %w", err)
	}
	var pk bpf.TcPrefixPolicyKey
	pit := d.objs.PrefixPolicy.Iterate()
	for pit.Next(&pk, &v) {
		e := d.entriesOf(pk.EpId)
		e.Prefix[pk] = v
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("read prefix policy map: %w", err)
	}
	var ifindex uint32
	var info bpf.TcEndpointInfo
	eit := d.objs.Endpoints.Iterate()
	for eit.Next(&ifindex, &info) {
		d.endpointInfo[int(ifindex)] = info
	}
	if err := eit.Err(); err != nil {
		return fmt.Errorf("read endpoints map: %w", err)
	}
	var cookie uint64
	nit := d.objs.EndpointNetns.Iterate()
	for nit.Next(&ifindex, &cookie) {
		d.netns[int(ifindex)] = cookie
	}
	if err := nit.Err(); err != nil {
		return fmt.Errorf("read endpoint_netns map: %w", err)
	}
	var ik bpf.TcIpcacheKey
	var iv bpf.TcIpcacheValue
	d.ipcache = map[netip.Prefix]policy.ID{}
	iit := d.objs.Ipcache.Iterate()
	for iit.Next(&ik, &iv) {
		d.ipcache[ipcachePrefix(ik)] = policy.ID(iv.Identity)
	}
	return iit.Err()
}

func (d *Datapath) entriesOf(id uint32) Entries {
	e, ok := d.applied[id]
	if !ok {
		e = newEntries()
		d.applied[id] = e
	}
	return e
}

func (d *Datapath) closeCgroupLinks() {
	for _, l := range d.cgroupLinks {
		l.Close()
	}
	d.cgroupLinks = nil
}

// Mode says how programs are attached: "tcx" or "tc" (legacy clsact).
func (d *Datapath) Mode() string { return d.attach.mode() }

// Close releases this process's handles. Pinned maps, programs and links keep enforcing.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.attach.close()
	d.closeCgroupLinks()
	d.closeLookup()
	return d.objs.Close()
}

// Teardown detaches from every endpoint and removes all pins.
func (d *Datapath) Teardown() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closeLookup()
	errs := []error{d.attach.detachAll(), d.detachCgroup()}
	errs = append(errs, d.objs.Close(), os.RemoveAll(d.opts.PinPath))
	return errors.Join(errs...)
}

// bpffsRoot is where bpffs must be mounted for a pin path: /sys/fs/bpf for anything under it,
// else the pin path's parent.
func bpffsRoot(pinPath string) string {
	const standard = "/sys/fs/bpf"
	if pinPath == standard || strings.HasPrefix(pinPath, standard+"/") {
		return standard
	}
	return filepath.Dir(pinPath)
}

// ensureBPFFS mounts bpffs at dir when nothing is mounted there (this machine boots without it).
func ensureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s (needs root): %w", dir, err)
	}
	return nil
}
