// Package cniplugin is netpact's CNI plugin (CNI spec 1.0): for each pod it makes a veth pair,
// takes addresses from an IPAM plugin (host-local over the node's IPv4 and IPv6 pod CIDRs), and
// routes the way Cilium does (package podnet, which wires the local node's pods too).
//
// The netpact binary becomes this plugin when the container runtime runs it with CNI_COMMAND
// set. Every pod it wires is also recorded as an Endpoint under EndpointDir: that record is the
// seam where the enforcer attaches the eBPF datapath to the pod's host veth.
package cniplugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/enforcer/podnet"
)

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.NetConf
	// MTU of the pod's interface; the host's default route MTU when zero.
	MTU int `json:"mtu,omitempty"`
	// EndpointDir is where endpoint records are written; DefaultEndpointDir when empty.
	EndpointDir string `json:"endpointDir,omitempty"`
	// AgentSocket, when set, is the enforcer's socket: ADD returns only once the enforcer has
	// programmed the pod's endpoint, and fails (kubelet retries) when it cannot within
	// AgentTimeoutSeconds (20 when zero). The pod has no network before its policy.
	AgentSocket         string `json:"agentSocket,omitempty"`
	AgentTimeoutSeconds int    `json:"agentTimeoutSeconds,omitempty"`
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
	res, addrs, err := ipamAddrs(r)
	if err != nil {
		return err
	}
	hostName := HostVethName(args.ContainerID)
	hostIf, contIf, cookie, err := wirePod(args, netns, hostName, mtu, addrs)
	if err != nil {
		return err
	}
	fillResult(res, args, conf, hostIf, contIf)
	ep := Endpoint{
		ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName, HostVeth: hostName,
		HostIfIndex: hostIf.Index, Namespace: string(k8s.K8S_POD_NAMESPACE), Pod: string(k8s.K8S_POD_NAME),
		PodUID: string(k8s.K8S_POD_UID), NetnsCookie: cookie,
	}
	for _, ipc := range res.IPs {
		ep.IPs = append(ep.IPs, ipc.Address.IP.String())
	}
	if err := recordEndpoint(conf, ep); err != nil {
		removePodLink(netns, args.IfName)
		return err
	}
	success = true
	return types.PrintResult(res, conf.CNIVersion)
}

// ipamAddrs is the IPAM plugin's result and the addresses it gave.
func ipamAddrs(r types.Result) (*current.Result, []netip.Addr, error) {
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, nil, fmt.Errorf("ipam result: %w", err)
	}
	if len(res.IPs) == 0 {
		return nil, nil, errors.New("ipam returned no address")
	}
	var addrs []netip.Addr
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, nil, fmt.Errorf("ipam returned an invalid address %v", ipc.Address.IP)
		}
		addrs = append(addrs, a.Unmap())
	}
	return res, addrs, nil
}

// wirePod makes the pod's veth pair and routes, and returns both ends and the pod network
// namespace's cookie. On failure it removes the pair.
func wirePod(args *skel.CmdArgs, netns ns.NetNS, hostName string, mtu int, addrs []netip.Addr) (hostIf, contIf net.Interface, cookie uint64, err error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return hostIf, contIf, 0, fmt.Errorf("current netns: %w", err)
	}
	defer hostNS.Close()
	err = netns.Do(func(ns.NetNS) error {
		var err error
		hostIf, contIf, err = ip.SetupVethWithName(args.IfName, hostName, mtu, "", hostNS)
		if err != nil {
			return err
		}
		if err := podnet.ConfigurePod(args.IfName, addrs); err != nil {
			return err
		}
		cookie, err = podnet.CurrentNetnsCookie()
		return err
	})
	if err != nil {
		return hostIf, contIf, 0, fmt.Errorf("pod interface: %w", err)
	}
	if err := podnet.ConfigureHost(hostName, addrs); err != nil {
		removePodLink(netns, args.IfName)
		return hostIf, contIf, 0, fmt.Errorf("host side of %s: %w", hostName, err)
	}
	// The pod's interface transmits only once the kernel has activated its queue, which it does
	// asynchronously after the host end came up; the workload may send as soon as ADD returns.
	if err := netns.Do(func(ns.NetNS) error { return podnet.WaitLinkUp(args.IfName, podnet.ReadyTimeout) }); err != nil {
		removePodLink(netns, args.IfName)
		return hostIf, contIf, 0, fmt.Errorf("pod interface %s: %w", args.IfName, err)
	}
	return hostIf, contIf, cookie, nil
}

// removePodLink deletes the pod's end of the veth pair, and with it the host's end.
func removePodLink(netns ns.NetNS, ifName string) {
	_ = netns.Do(func(ns.NetNS) error { return ip.DelLinkByName(ifName) })
}

// fillResult completes the IPAM result with the interfaces and the gateways ADD returns.
func fillResult(res *current.Result, args *skel.CmdArgs, conf *NetConf, hostIf, contIf net.Interface) {
	res.Interfaces = []*current.Interface{
		{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
		{Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Sandbox: args.Netns},
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(1)
		if ipc.Address.IP.To4() != nil {
			ipc.Gateway = net.IP(podnet.GatewayV4.AsSlice())
		} else {
			ipc.Gateway = net.IP(podnet.GatewayV6.AsSlice())
		}
	}
	res.Routes = nil
	res.DNS = conf.DNS
}

// recordEndpoint writes the pod's endpoint record and, with an agent socket, waits for the
// enforcer to program the pod; when it cannot, the record is removed again.
func recordEndpoint(conf *NetConf, ep Endpoint) error {
	if err := WriteEndpoint(conf.EndpointDir, ep); err != nil {
		return err
	}
	if conf.AgentSocket == "" {
		return nil
	}
	timeout := 20 * time.Second
	if conf.AgentTimeoutSeconds > 0 {
		timeout = time.Duration(conf.AgentTimeoutSeconds) * time.Second
	}
	err := AskAgent(conf.AgentSocket, AgentRequest{Op: "add", Namespace: ep.Namespace, Pod: ep.Pod,
		PodUID: ep.PodUID, ContainerID: ep.ContainerID}, timeout)
	if err != nil {
		_ = RemoveEndpoint(conf.EndpointDir, ep.ContainerID)
		return types.NewError(types.ErrTryAgainLater, "the pod's policy is not programmed", err.Error())
	}
	return nil
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
	if err := RemoveEndpoint(conf.EndpointDir, args.ContainerID); err != nil {
		return err
	}
	if conf.AgentSocket != "" {
		// Only news: the enforcer also finds the record gone on its next sync.
		_ = AskAgent(conf.AgentSocket, AgentRequest{Op: "del", ContainerID: args.ContainerID}, 2*time.Second)
	}
	return nil
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

// cmdStatus answers whether ADDs can work: the IPAM plugin must be there, and when it speaks
// CNI 1.1 its own STATUS decides. An older IPAM plugin (Debian's host-local is 1.1.1, before
// STATUS existed) refuses a STATUS it does not know, which says nothing about its ADDs.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	path, err := invoke.FindInPath(conf.IPAM.Type, filepath.SplitList(os.Getenv("CNI_PATH")))
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("IPAM plugin %s: %v", conf.IPAM.Type, err), "")
	}
	info, err := invoke.GetVersionInfo(context.Background(), path, nil)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("IPAM plugin %s: %v", conf.IPAM.Type, err), "")
	}
	if !slices.Contains(info.SupportedVersions(), "1.1.0") {
		return nil
	}
	return ipam.ExecStatus(conf.IPAM.Type, args.StdinData)
}
