// Package podnet wires a pod's veth the way Cilium routes pods, for both of netpact's nodes (the
// CNI plugin on Kubernetes and the local node of network namespaces): the pod gets /32 and /128
// addresses and default routes through link-local gateways that the host veth answers for (proxy
// ARP for IPv4, the gateway address on the host veth for IPv6), and the host routes each pod
// address to the pod's veth.
package podnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Gateways every pod routes through.
var (
	GatewayV4 = netip.MustParseAddr("169.254.1.1")
	GatewayV6 = netip.MustParseAddr("fe80::1")
)

// RouteProtocol marks the routes netpact owns (pod routes here, other nodes' pod CIDRs in the
// enforcer), so they can be told from everyone else's.
const RouteProtocol netlink.RouteProtocol = 0x6e // 'n'

// ConfigurePod addresses the pod's interface with host-scoped addresses, brings it and lo up,
// and routes everything through the gateways. It runs inside the pod's network namespace.
func ConfigurePod(ifName string, addrs []netip.Addr) error {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
	}
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", ifName, err)
	}
	has4, has6 := false, false
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: HostPrefix(a)}
		if a.Is4() {
			has4 = true
		} else {
			has6 = true
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("address %s: %w", addr.IPNet, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", ifName, err)
	}
	idx := link.Attrs().Index
	if has4 {
		gw := net.IP(GatewayV4.AsSlice())
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: HostPrefix(GatewayV4), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to gateway %s: %w", GatewayV4, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}); err != nil {
			return fmt.Errorf("default route: %w", err)
		}
	}
	if has6 {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: net.IP(GatewayV6.AsSlice()),
			Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}); err != nil {
			return fmt.Errorf("default IPv6 route: %w", err)
		}
	}
	return nil
}

// ConfigureHost makes the host side of a pod's veth answer for the gateways, brings it up and
// routes the pod's addresses to it. It runs in the host's network namespace.
func ConfigureHost(hostIfname string, addrs []netip.Addr) error {
	return configureHost(hostIfname, addrs, 0)
}

// configureHost is ConfigureHost with the routes in table (0: main).
func configureHost(hostIfname string, addrs []netip.Addr, table int) error {
	link, err := netlink.LinkByName(hostIfname)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", hostIfname, err)
	}
	for _, kv := range [][2]string{
		{"/proc/sys/net/ipv4/conf/" + hostIfname + "/proxy_arp", "1"},
		// Proxy ARP answers are delayed by up to 0.8 s by default, longer than a probe's timeout.
		{"/proc/sys/net/ipv4/neigh/" + hostIfname + "/proxy_delay", "0"},
		{"/proc/sys/net/ipv6/conf/" + hostIfname + "/disable_ipv6", "0"},
		{"/proc/sys/net/ipv4/conf/" + hostIfname + "/forwarding", "1"},
		{"/proc/sys/net/ipv6/conf/" + hostIfname + "/forwarding", "1"},
	} {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("sysctl %s: %w", kv[0], err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", hostIfname, err)
	}
	gw6 := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(GatewayV6.AsSlice()), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrAdd(link, gw6); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("gateway address %s: %w", GatewayV6, err)
	}
	for _, a := range addrs {
		rt := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: HostPrefix(a), Scope: netlink.SCOPE_LINK,
			Protocol: RouteProtocol, Table: table}
		if err := netlink.RouteReplace(rt); err != nil {
			return fmt.Errorf("route %s: %w", rt.Dst, err)
		}
	}
	return nil
}

// HostPrefix is the address as a /32 or /128.
func HostPrefix(a netip.Addr) *net.IPNet {
	a = a.Unmap()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
