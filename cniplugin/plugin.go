// Package cniplugin is netpact's CNI plugin (CNI spec 1.0): for each pod it makes a veth pair,
// takes addresses from an IPAM plugin (host-local over the node's IPv4 and IPv6 pod CIDRs), and
// routes the way Cilium does: the pod gets /32 and /128 addresses and a default route through
// link-local gateways that the host answers for, and the host routes each pod address to its veth.
//
// The netpact binary becomes this plugin when the container runtime runs it with CNI_COMMAND
// set. Every pod it wires is also recorded as an Endpoint under EndpointDir: that record is the
// seam where the enforcer attaches the eBPF datapath to the pod's host veth.
package cniplugin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Gateways every pod routes through; the host veth answers for them (proxy ARP for IPv4, the
// link-local address on the host veth for IPv6).
var (
	GatewayV4 = net.IPv4(169, 254, 1, 1)
	GatewayV6 = net.ParseIP("fe80::1")
)

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.NetConf
	// MTU of the pod's interface; the host's default route MTU when zero.
	MTU int `json:"mtu,omitempty"`
	// EndpointDir is where endpoint records are written; DefaultEndpointDir when empty.
	EndpointDir string `json:"endpointDir,omitempty"`
}

// DefaultEndpointDir holds one JSON record per pod wired on this node.
const DefaultEndpointDir = "/var/run/netpact/endpoints"

// K8sArgs are the Kubernetes pod arguments container runtimes pass in CNI_ARGS.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // names fixed by the runtimes
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// Main runs the plugin for the current process's CNI environment.
func Main() {
	runtime.LockOSThread()
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Check: cmdCheck, Del: cmdDel, Status: cmdStatus},
		version.All, "netpact CNI plugin")
}

func loadConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	if conf.IPAM.Type == "" {
		return nil, errors.New("network configuration: ipam.type is required (host-local with the node's pod CIDRs)")
	}
	if conf.EndpointDir == "" {
		conf.EndpointDir = DefaultEndpointDir
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, fmt.Errorf("parse prevResult: %w", err)
	}
	return conf, nil
}

// HostVethName is the host side of a container's veth: "np" and 11 hex digits of a hash of the
// container id, so the enforcer and a later DEL find it without state.
func HostVethName(containerID string) string {
	h := sha256.Sum256([]byte(containerID))
	return "np" + hex.EncodeToString(h[:])[:11]
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	k8s := K8sArgs{}
	if err := types.LoadArgs(args.Args, &k8s); err != nil {
		return fmt.Errorf("parse CNI_ARGS: %w", err)
	}
	mtu := conf.MTU
	if mtu == 0 {
		mtu = defaultMTU()
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return fmt.Errorf("open netns %q: %w", args.Netns, err)
	}
	defer netns.Close()

	r, err := ipam.ExecAdd(conf.IPAM.Type, args.StdinData)
	if err != nil {
		return fmt.Errorf("ipam %s: %w", conf.IPAM.Type, err)
	}
	// Release the addresses again if anything below fails.
	success := false
	defer func() {
		if !success {
			_ = ipam.ExecDel(conf.IPAM.Type, args.StdinData)
		}
	}()
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return fmt.Errorf("ipam result: %w", err)
	}
	if len(res.IPs) == 0 {
		return errors.New("ipam returned no address")
	}

	hostName := HostVethName(args.ContainerID)
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return fmt.Errorf("current netns: %w", err)
	}
	defer hostNS.Close()
	var hostIf, contIf net.Interface
	err = netns.Do(func(ns.NetNS) error {
		var err error
		hostIf, contIf, err = ip.SetupVethWithName(args.IfName, hostName, mtu, "", hostNS)
		if err != nil {
			return err
		}
		return configurePod(args.IfName, res.IPs)
	})
	if err != nil {
		return fmt.Errorf("pod interface: %w", err)
	}
	if err := configureHost(hostName, res.IPs); err != nil {
		_ = netns.Do(func(ns.NetNS) error { return ip.DelLinkByName(args.IfName) })
		return fmt.Errorf("host side of %s: %w", hostName, err)
	}

	res.Interfaces = []*current.Interface{
		{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
		{Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Sandbox: args.Netns},
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(1)
		if ipc.Address.IP.To4() != nil {
			ipc.Gateway = GatewayV4
		} else {
			ipc.Gateway = GatewayV6
		}
	}
	res.Routes = nil
	res.DNS = conf.DNS
	ep := Endpoint{
		ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName, HostVeth: hostName,
		HostIfIndex: hostIf.Index, Namespace: string(k8s.K8S_POD_NAMESPACE), Pod: string(k8s.K8S_POD_NAME),
		PodUID: string(k8s.K8S_POD_UID),
	}
	for _, ipc := range res.IPs {
		ep.IPs = append(ep.IPs, ipc.Address.IP.String())
	}
	if err := WriteEndpoint(conf.EndpointDir, ep); err != nil {
		_ = netns.Do(func(ns.NetNS) error { return ip.DelLinkByName(args.IfName) })
		return err
	}
	success = true
	return types.PrintResult(res, conf.CNIVersion)
}

// configurePod addresses the pod's interface with host routes only and routes everything through
// the gateways. It runs inside the pod's netns.
func configurePod(ifName string, ips []*current.IPConfig) error {
	link, err := netlink.LinkByName(ifName)
	if err != nil {
		return err
	}
	has4, has6 := false, false
	for _, ipc := range ips {
		addr := &netlink.Addr{IPNet: hostMask(ipc.Address.IP)}
		if ipc.Address.IP.To4() == nil {
			has6 = true
			addr.Flags = unix.IFA_F_NODAD
		} else {
			has4 = true
		}
		if err := netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("address %s: %w", addr.IPNet, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	if has4 {
		gw := &net.IPNet{IP: GatewayV4, Mask: net.CIDRMask(32, 32)}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: gw, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to gateway %s: %w", GatewayV4, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: GatewayV4,
			Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
			return fmt.Errorf("default route: %w", err)
		}
	}
	if has6 {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: GatewayV6,
			Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}}); err != nil {
			return fmt.Errorf("default IPv6 route: %w", err)
		}
	}
	return nil
}

// configureHost makes the host veth answer for the gateways and routes the pod's addresses to it.
func configureHost(hostName string, ips []*current.IPConfig) error {
	link, err := netlink.LinkByName(hostName)
	if err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"/proc/sys/net/ipv4/conf/" + hostName + "/proxy_arp", "1"},
		{"/proc/sys/net/ipv4/neigh/" + hostName + "/proxy_delay", "0"},
		{"/proc/sys/net/ipv4/conf/" + hostName + "/forwarding", "1"},
		{"/proc/sys/net/ipv6/conf/" + hostName + "/forwarding", "1"},
	} {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("sysctl %s: %w", kv[0], err)
		}
	}
	gw6 := &netlink.Addr{IPNet: &net.IPNet{IP: GatewayV6, Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrAdd(link, gw6); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("gateway address %s: %w", GatewayV6, err)
	}
	for _, ipc := range ips {
		rt := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostMask(ipc.Address.IP), Scope: netlink.SCOPE_LINK,
			Protocol: RouteProtocol}
		if err := netlink.RouteReplace(rt); err != nil {
			return fmt.Errorf("route %s: %w", rt.Dst, err)
		}
	}
	return nil
}

// RouteProtocol marks the routes netpact owns (pod routes here, other nodes' pod CIDRs in the
// enforcer), so they can be told from everyone else's.
const RouteProtocol netlink.RouteProtocol = 0x6e // 'n'

func hostMask(a net.IP) *net.IPNet {
	if v4 := a.To4(); v4 != nil {
		return &net.IPNet{IP: v4, Mask: net.CIDRMask(32, 32)}
	}
	return &net.IPNet{IP: a, Mask: net.CIDRMask(128, 128)}
}

// defaultMTU is the MTU of the interface the host's default route uses, 1500 without one.
func defaultMTU() int {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err == nil {
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					return l.Attrs().MTU
				}
			}
		}
	}
	return 1500
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := ipam.ExecDel(conf.IPAM.Type, args.StdinData); err != nil {
		return fmt.Errorf("ipam %s: %w", conf.IPAM.Type, err)
	}
	// DEL may come more than once, and after the netns is gone: deleting what is left is enough.
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			err := ip.DelLinkByName(args.IfName)
			if errors.Is(err, ip.ErrLinkNotFound) {
				return nil
			}
			return err
		})
		var nsErr ns.NSPathNotExistErr
		if err != nil && !errors.As(err, &nsErr) {
			return fmt.Errorf("delete %s in %s: %w", args.IfName, args.Netns, err)
		}
	}
	if l, err := netlink.LinkByName(HostVethName(args.ContainerID)); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("delete host veth: %w", err)
		}
	}
	return RemoveEndpoint(conf.EndpointDir, args.ContainerID)
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("check: no prevResult")
	}
	if err := ipam.ExecCheck(conf.IPAM.Type, args.StdinData); err != nil {
		return fmt.Errorf("ipam %s: %w", conf.IPAM.Type, err)
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("check: prevResult: %w", err)
	}
	host, err := netlink.LinkByName(HostVethName(args.ContainerID))
	if err != nil {
		return fmt.Errorf("check: host veth %s: %w", HostVethName(args.ContainerID), err)
	}
	if host.Attrs().OperState != netlink.OperUp && host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("check: host veth %s is down", host.Attrs().Name)
	}
	return ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		link, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return fmt.Errorf("check: %s: %w", args.IfName, err)
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, ipc := range prev.IPs {
			found := false
			for _, a := range addrs {
				if a.IP.Equal(ipc.Address.IP) {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("check: %s lacks %s", args.IfName, ipc.Address.IP)
			}
		}
		return nil
	})
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	return ipam.ExecStatus(conf.IPAM.Type, args.StdinData)
}
