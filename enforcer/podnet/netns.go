package podnet

// A pod of a node made of network namespaces: a named network namespace (under /run/netns, so
// other processes can enter it) joined to the host by a veth pair, with a /32 and /128 address
// routed through the host the way Cilium routes pods (ConfigurePod, ConfigureHost).

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Pod is a pod in a named network namespace of this host.
type Pod struct {
	Name       string
	Netns      string // name under /run/netns
	HostIfname string
	Ifindex    int // of the host-side veth
	IPv4       netip.Addr
	IPv6       netip.Addr
	// NetnsCookie is the namespace's cookie (SO_NETNS_COOKIE): what the socket programs see.
	NetnsCookie uint64
	// Table is the host routing table that routes the addresses to HostIfname: 0 for the main
	// table (pods), another for a namespace only some sources reach (see CreateRouted).
	Table int
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// PrepareHost turns on forwarding, which routing between pods needs.
func PrepareHost() error {
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding (%s): %w", f, err)
		}
	}
	return nil
}

// CreatePod makes a namespace, a veth pair named hostIfname on the host and eth0 inside, and
// the addresses and routes. The caller owns the names (see ClaimRunID): leftovers of a crashed
// run under them are removed first. Whatever it created is removed again when a step fails.
func CreatePod(name, netnsName, hostIfname string, v4, v6 netip.Addr) (*Pod, error) {
	return create(&Pod{Name: name, Netns: netnsName, HostIfname: hostIfname, IPv4: v4, IPv6: v6})
}

// CreateRouted makes a namespace wired as CreatePod does, except that the host routes its
// addresses in routing table table, not in the main one: only the sources a routing rule sends
// to that table reach it. Several such namespaces on one host may then hold the same addresses
// (the local node's external hosts: every run on this host has its own).
func CreateRouted(name, netnsName, hostIfname string, v4, v6 netip.Addr, table int) (*Pod, error) {
	if table == 0 {
		return nil, fmt.Errorf("create %s: a routed namespace needs a routing table other than main", name)
	}
	return create(&Pod{Name: name, Netns: netnsName, HostIfname: hostIfname, IPv4: v4, IPv6: v6, Table: table})
}

func create(p *Pod) (_ *Pod, err error) {
	name, netnsName, hostIfname := p.Name, p.Netns, p.HostIfname
	p.Delete()
	defer func() {
		if err != nil {
			p.Delete()
		}
	}()
	for _, step := range [][]string{
		{"ip", "netns", "add", netnsName},
		{"ip", "link", "add", hostIfname, "type", "veth", "peer", "name", "eth0", "netns", netnsName},
	} {
		if err := run(step...); err != nil {
			return nil, fmt.Errorf("create pod %s: %w", name, err)
		}
	}
	// The same wiring the CNI plugin gives a Kubernetes pod.
	var addrs []netip.Addr
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	if err := p.Do(func() error {
		if err := ConfigurePod("eth0", addrs); err != nil {
			return err
		}
		p.NetnsCookie, err = CurrentNetnsCookie()
		return err
	}); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	if err := configureHost(hostIfname, addrs, p.Table); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	// The pod end's queue is activated asynchronously once the host end is up: until then what
	// the pod sends is dropped (ready.go).
	if err := p.Do(func() error { return WaitLinkUp("eth0", ReadyTimeout) }); err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	l, err := netlink.LinkByName(hostIfname)
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	p.Ifindex = l.Attrs().Index
	return p, nil
}

// Delete removes the pod's namespace and veth; missing pieces are not an error.
func (p *Pod) Delete() error {
	if l, err := netlink.LinkByName(p.HostIfname); err == nil {
		netlink.LinkDel(l)
	}
	if _, err := os.Stat("/run/netns/" + p.Netns); err == nil {
		return run("ip", "netns", "delete", p.Netns)
	}
	return nil
}

// Do runs f with the calling goroutine's thread inside the pod's namespace. Sockets created in
// f stay in the pod's namespace after Do returns.
func (p *Pod) Do(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("enter pod %s: %w", p.Name, err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(p.Netns)
	if err != nil {
		return fmt.Errorf("enter pod %s: %w", p.Name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter pod %s: %w", p.Name, err)
	}
	defer netns.Set(orig)
	return f()
}

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14, asm-generic socket.h); x/sys/unix lacks it.
const soNetnsCookie = 71

// CurrentNetnsCookie is the cookie of the calling thread's network namespace: the number the
// kernel's bpf_get_netns_cookie gives programs for sockets of that namespace.
func CurrentNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: socket: %w", err)
	}
	defer unix.Close(fd)
	var cookie uint64
	size := uint32(unsafe.Sizeof(cookie))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, soNetnsCookie,
		uintptr(unsafe.Pointer(&cookie)), uintptr(unsafe.Pointer(&size)), 0); e != 0 {
		return 0, fmt.Errorf("netns cookie: getsockopt SO_NETNS_COOKIE: %w", e)
	}
	return cookie, nil
}
