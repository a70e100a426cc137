package podnet

// Readiness: a pod's network is usable only when the kernel has finished what it does after the
// veth comes up, some of it asynchronously. Bringing the host end up turns the pod end's carrier
// on, but the pod end's transmit queue is switched from the kernel's drop-everything qdisc to
// its real one later, by the link-watch work queue. A packet the pod sends before then (its
// first ARP request for the gateway, say) is dropped and counted as tx_dropped, and the
// neighbour entry waits a whole retransmit interval (1 s) before it asks again: longer than a
// probe. Each condition below is checked on the kernel's own state and waited on with a bound;
// nothing here sleeps a fixed time.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ReadyTimeout bounds each wait for a pod's network: well above the ARP and neighbour discovery
// retransmit interval (1 s), so a request lost once is asked again within it.
const ReadyTimeout = 5 * time.Second

// pollEvery is how often a condition is checked again while waited on.
const pollEvery = time.Millisecond

// NotReadyError names the condition of a pod's network that did not hold within the bound.
type NotReadyError struct {
	Pod       string
	Condition string
	// State is what the kernel reported last.
	State string
}

func (e *NotReadyError) Error() string {
	return fmt.Sprintf("pod %s network not ready: %s (last seen: %s)", e.Pod, e.Condition, e.State)
}

// WaitLinkUp waits, in the calling thread's network namespace, until the interface is
// operationally up: the kernel has processed its carrier and activated its transmit queue.
func WaitLinkUp(ifName string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	state := "not found"
	for {
		l, err := netlink.LinkByName(ifName)
		if err == nil {
			a := l.Attrs()
			state = fmt.Sprintf("operstate %s, flags %s", a.OperState, a.Flags)
			if a.OperState == netlink.OperUp && a.Flags&net.FlagUp != 0 {
				return nil
			}
		} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
			return fmt.Errorf("link %s: %w", ifName, err)
		}
		if time.Now().After(deadline) {
			return &NotReadyError{Condition: fmt.Sprintf("interface %s operationally up within %s", ifName, timeout), State: state}
		}
		time.Sleep(pollEvery)
	}
}

// checkAddrs checks, in the calling thread's namespace, that each address is on the interface
// and usable: not tentative (duplicate address detection still running) and not failed.
func checkAddrs(ifName string, addrs []netip.Addr) error {
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("link %s: %w", ifName, err)
	}
	have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", ifName, err)
	}
	for _, a := range addrs {
		found := false
		for _, h := range have {
			if ha, ok := netip.AddrFromSlice(h.IP); ok && ha.Unmap() == a.Unmap() {
				found = true
				if h.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
					return &NotReadyError{Condition: fmt.Sprintf("address %s on %s usable", a, ifName),
						State: fmt.Sprintf("flags %#x (tentative or duplicate)", h.Flags)}
				}
			}
		}
		if !found {
			return &NotReadyError{Condition: fmt.Sprintf("address %s on %s", a, ifName), State: "missing"}
		}
	}
	return nil
}

// waitRoute waits, in the calling thread's namespace, until dst is routed out of the interface:
// by the main routing (table 0), or by a route of the given table.
func waitRoute(linkIndex int, ifName string, dst netip.Addr, table int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var rs []netlink.Route
		var err error
		if table == 0 {
			rs, err = netlink.RouteGet(net.IP(dst.AsSlice()))
		} else {
			rs, err = netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table, Dst: HostPrefix(dst)},
				netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		}
		state := fmt.Sprintf("routed %v", rs)
		if err != nil {
			state = err.Error()
		}
		for _, r := range rs {
			if r.LinkIndex == linkIndex {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return &NotReadyError{Condition: fmt.Sprintf("a route to %s via %s within %s", dst, ifName, timeout), State: state}
		}
		time.Sleep(pollEvery)
	}
}

// resolvedStates are neighbour states with a link-layer address the kernel sends to.
const resolvedStates = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// ResolveNeighbor makes the kernel resolve addr on the link, in the calling thread's namespace,
// as traffic would (ARP or neighbour solicitation, NTF_USE), and waits until the entry has a
// link-layer address. A request that is lost is asked again by the kernel after its retransmit
// interval; an entry that failed is asked for anew.
func ResolveNeighbor(linkIndex int, ifName string, addr netip.Addr, timeout time.Duration) error {
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	use := &netlink.Neigh{LinkIndex: linkIndex, Family: family, IP: net.IP(addr.AsSlice()), Flags: netlink.NTF_USE}
	deadline := time.Now().Add(timeout)
	state := "none"
	asked := false
	for {
		st, found, err := neighState(linkIndex, family, addr)
		if err != nil {
			return fmt.Errorf("neighbour %s on %s: %w", addr, ifName, err)
		}
		if found {
			state = neighStateString(st)
			if st&resolvedStates != 0 {
				return nil
			}
		}
		if !asked || !found || st&(netlink.NUD_FAILED|netlink.NUD_NONE) != 0 {
			if err := netlink.NeighSet(use); err != nil {
				return fmt.Errorf("resolve neighbour %s on %s: %w", addr, ifName, err)
			}
			asked = true
		}
		if time.Now().After(deadline) {
			return &NotReadyError{Condition: fmt.Sprintf("neighbour %s resolved on %s within %s", addr, ifName, timeout), State: state}
		}
		time.Sleep(pollEvery)
	}
}

func neighState(linkIndex, family int, addr netip.Addr) (int, bool, error) {
	ns, err := netlink.NeighList(linkIndex, family)
	if err != nil {
		return 0, false, err
	}
	for _, n := range ns {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr.Unmap() {
			return n.State, true, nil
		}
	}
	return 0, false, nil
}

func neighStateString(st int) string {
	names := []struct {
		bit  int
		name string
	}{{netlink.NUD_INCOMPLETE, "INCOMPLETE"}, {netlink.NUD_REACHABLE, "REACHABLE"}, {netlink.NUD_STALE, "STALE"},
		{netlink.NUD_DELAY, "DELAY"}, {netlink.NUD_PROBE, "PROBE"}, {netlink.NUD_FAILED, "FAILED"},
		{netlink.NUD_NOARP, "NOARP"}, {netlink.NUD_PERMANENT, "PERMANENT"}}
	s := ""
	for _, n := range names {
		if st&n.bit != 0 {
			if s != "" {
				s += "|"
			}
			s += n.name
		}
	}
	if s == "" {
		return "NONE"
	}
	return s
}

// WaitReady waits until the pod's network carries traffic in both directions for the given
// addresses of the pod (those its endpoint is programmed with), each condition bounded by
// timeout: both ends of the veth operationally up, the addresses usable, the pod's routes and
// the host's routes to it in place, the IPv4 gateway resolved from inside the pod, and the
// addresses resolved from the host. The neighbour resolutions send real ARP and neighbour
// discovery packets both ways, so the datapath must already let the pod's traffic through (call
// it after the pod's endpoint is programmed). The error names the first condition that did not
// hold.
func (p *Pod) WaitReady(addrs []netip.Addr, timeout time.Duration) error {
	has4 := false
	for _, a := range addrs {
		if a != p.IPv4 && a != p.IPv6 {
			return fmt.Errorf("pod %s: %s is not its address", p.Name, a)
		}
		has4 = has4 || a.Is4()
	}
	named := func(err error) error {
		var nr *NotReadyError
		if errors.As(err, &nr) {
			nr.Pod = p.Name
		}
		return err
	}
	err := p.Do(func() error {
		if err := WaitLinkUp("eth0", timeout); err != nil {
			return err
		}
		if err := checkAddrs("eth0", addrs); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("link eth0: %w", err)
		}
		if has4 {
			if err := waitRoute(l.Attrs().Index, "eth0", GatewayV4, 0, timeout); err != nil {
				return err
			}
			return ResolveNeighbor(l.Attrs().Index, "eth0", GatewayV4, timeout)
		}
		return nil
	})
	if err != nil {
		return named(err)
	}
	if err := WaitLinkUp(p.HostIfname, timeout); err != nil {
		return named(err)
	}
	for _, a := range addrs {
		if err := waitRoute(p.Ifindex, p.HostIfname, a, p.Table, timeout); err != nil {
			return named(err)
		}
		if err := ResolveNeighbor(p.Ifindex, p.HostIfname, a, timeout); err != nil {
			return named(err)
		}
	}
	return nil
}
