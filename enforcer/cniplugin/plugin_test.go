package cniplugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
)

// The test binary is the plugin when a runtime-like caller sets NETPACT_CNI_HELPER, the way the
// netpact binary is when the container runtime sets CNI_COMMAND.
func TestMain(m *testing.M) {
	if os.Getenv("NETPACT_CNI_HELPER") == "1" {
		Main()
		return
	}
	os.Exit(m.Run())
}

const hostLocalDir = "/usr/lib/cni"

// node is a network namespace standing for a Kubernetes node: it has an uplink with a default
// route (so proxy ARP answers for the pods' gateway) and forwarding on.
type node struct {
	t       *testing.T
	ns      ns.NetNS
	conf    []byte
	cniPath string
	epDir   string
	ipamDir string
}

func newNode(t *testing.T) *node {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := os.Stat(filepath.Join(hostLocalDir, "host-local")); err != nil {
		testenv.Missing(t, "the host-local IPAM plugin", "apt-get install containernetworking-plugins")
	}
	nodeNS, peerNS := testenv.NetNS(t), testenv.NetNS(t)
	err := nodeNS.Do(func(ns.NetNS) error {
		for _, kv := range [][2]string{{"/proc/sys/net/ipv4/ip_forward", "1"}, {"/proc/sys/net/ipv6/conf/all/forwarding", "1"}} {
			if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil {
				return err
			}
		}
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "uplink-peer"}
		if err := netlink.LinkAdd(up); err != nil {
			return err
		}
		peer, _ := netlink.LinkByName("uplink-peer")
		if err := netlink.LinkSetNsFd(peer, int(peerNS.Fd())); err != nil {
			return err
		}
		l, _ := netlink.LinkByName("uplink")
		addr, _ := netlink.ParseAddr("192.0.2.1/24")
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("192.0.2.2"),
			Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}})
	})
	if err != nil {
		t.Fatalf("node netns: %v", err)
	}
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(bin, "netpact")); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, ns: nodeNS, cniPath: bin + ":" + hostLocalDir, epDir: filepath.Join(dir, "endpoints"),
		ipamDir: filepath.Join(dir, "ipam")}
	n.conf = []byte(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "netpact", "type": "netpact", "endpointDir": %q,
		"ipam": {"type": "host-local", "dataDir": %q,
			"ranges": [[{"subnet": "10.99.1.0/24"}], [{"subnet": "fd00:99:1::/64"}]]}}`,
		n.epDir, n.ipamDir))
	return n
}

// call runs the plugin as a container runtime does: in the node's netns, with CNI_* variables
// and the configuration on stdin.
func (n *node) call(command, containerID, netns string, conf []byte) ([]byte, error) {
	var out []byte
	var runErr error
	err := n.ns.Do(func(ns.NetNS) error {
		cmd := exec.Command(filepath.Join(strings.Split(n.cniPath, ":")[0], "netpact"))
		cmd.Env = append(os.Environ(), "NETPACT_CNI_HELPER=1", "CNI_COMMAND="+command, "CNI_PATH="+n.cniPath)
		if command != "STATUS" { // a runtime asks STATUS of the network, not of a container
			cmd.Env = append(cmd.Env, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netns, "CNI_IFNAME=eth0",
				"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=db;K8S_POD_NAME="+containerID)
		}
		cmd.Stdin = bytes.NewReader(conf)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, runErr = cmd.Output()
		if runErr != nil {
			runErr = fmt.Errorf("%s %s: %w: %s %s", command, containerID, runErr, out, stderr.String())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, runErr
}

type pod struct {
	ns     ns.NetNS
	id     string
	result *current.Result
	raw    []byte
}

func (n *node) add(id string) *pod {
	n.t.Helper()
	pns := testenv.NetNS(n.t)
	out, err := n.call("ADD", id, pns.Path(), n.conf)
	if err != nil {
		n.t.Fatal(err)
	}
	res := &current.Result{}
	if err := json.Unmarshal(out, res); err != nil {
		n.t.Fatalf("ADD result %s: %v", out, err)
	}
	return &pod{ns: pns, id: id, result: res, raw: out}
}

func (p *pod) addr(v6 bool) net.IP {
	for _, ipc := range p.result.IPs {
		if (ipc.Address.IP.To4() == nil) == v6 {
			return ipc.Address.IP
		}
	}
	return nil
}

// connect dials from one pod to a listener in another and exchanges a line.
func connect(t *testing.T, from, to *pod, dst net.IP) error {
	t.Helper()
	var ln net.Listener
	err := to.ns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(dst.String(), "7777"))
		return err
	})
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			buf := make([]byte, 5)
			_, _ = c.Read(buf)
			_, _ = c.Write(buf)
			c.Close()
		}
	}()
	return from.ns.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(dst.String(), "7777"), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("hello")); err != nil {
			return err
		}
		buf := make([]byte, 5)
		if _, err := c.Read(buf); err != nil {
			return err
		}
		if string(buf) != "hello" {
			return fmt.Errorf("echo %q", buf)
		}
		return nil
	})
}

func TestAddConnectCheckDel(t *testing.T) {
	n := newNode(t)
	a, b := n.add("pod-a"), n.add("pod-b")

	for _, p := range []*pod{a, b} {
		if p.addr(false) == nil || p.addr(true) == nil {
			t.Fatalf("%s: want an IPv4 and an IPv6 address, got %s", p.id, p.raw)
		}
		if !strings.HasPrefix(p.addr(false).String(), "10.99.1.") || !strings.HasPrefix(p.addr(true).String(), "fd00:99:1::") {
			t.Fatalf("%s: addresses outside the pod CIDRs: %s", p.id, p.raw)
		}
		if len(p.result.Interfaces) != 2 || p.result.Interfaces[0].Name != HostVethName(p.id) ||
			p.result.Interfaces[1].Sandbox != p.ns.Path() {
			t.Fatalf("%s: interfaces %s", p.id, p.raw)
		}
	}
	if a.addr(false).Equal(b.addr(false)) {
		t.Fatalf("both pods got %s", a.addr(false))
	}

	// Pod to pod through the node, both families.
	for _, v6 := range []bool{false, true} {
		if err := connect(t, a, b, b.addr(v6)); err != nil {
			t.Fatalf("pod-a -> pod-b %s: %v", b.addr(v6), err)
		}
		if err := connect(t, b, a, a.addr(v6)); err != nil {
			t.Fatalf("pod-b -> pod-a %s: %v", a.addr(v6), err)
		}
	}

	// The pod has host-scoped addresses and routes through the gateways.
	err := a.ns.Do(func(ns.NetNS) error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		var gw4, gw6 bool
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				gw4 = gw4 || r.Gw.Equal(net.IP(podnet.GatewayV4.AsSlice()))
				gw6 = gw6 || r.Gw.Equal(net.IP(podnet.GatewayV6.AsSlice()))
			}
		}
		if !gw4 || !gw6 {
			return fmt.Errorf("default routes via %s and %s missing: %v", podnet.GatewayV4, podnet.GatewayV6, routes)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The endpoint records name the pod, its host veth and addresses.
	eps, err := Endpoints(n.epDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 || eps[0].Pod != "pod-a" || eps[0].Namespace != "db" || eps[0].HostVeth != HostVethName("pod-a") ||
		len(eps[0].IPs) != 2 {
		t.Fatalf("endpoints: %+v", eps)
	}

	// CHECK passes on a healthy pod, fails once its address is gone.
	withPrev := func(p *pod) []byte {
		var m map[string]any
		_ = json.Unmarshal(n.conf, &m)
		var prev any
		_ = json.Unmarshal(p.raw, &prev)
		m["prevResult"] = prev
		b, _ := json.Marshal(m)
		return b
	}
	if _, err := n.call("CHECK", a.id, a.ns.Path(), withPrev(a)); err != nil {
		t.Fatalf("CHECK on a healthy pod: %v", err)
	}
	_ = a.ns.Do(func(ns.NetNS) error {
		l, _ := netlink.LinkByName("eth0")
		return netlink.AddrDel(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.addr(false), Mask: net.CIDRMask(32, 32)}})
	})
	if _, err := n.call("CHECK", a.id, a.ns.Path(), withPrev(a)); err == nil || !strings.Contains(err.Error(), "lacks") {
		t.Fatalf("CHECK after the address was removed: %v", err)
	}

	// DEL removes the veth, the route, the record and the lease, and may come twice.
	for range 2 {
		if _, err := n.call("DEL", a.id, a.ns.Path(), n.conf); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
	err = n.ns.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName(HostVethName(a.id)); err == nil {
			return fmt.Errorf("host veth %s still there", HostVethName(a.id))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if eps, _ := Endpoints(n.epDir); len(eps) != 1 || eps[0].Pod != "pod-b" {
		t.Fatalf("endpoints after DEL: %+v", eps)
	}
	// host-local keeps one file per lease: pod-a's are released, pod-b's are held.
	lease := func(ip net.IP) string { return filepath.Join(n.ipamDir, "netpact", ip.String()) }
	for _, ip := range []net.IP{a.addr(false), a.addr(true)} {
		if _, err := os.Stat(lease(ip)); err == nil {
			t.Fatalf("lease of %s still held after DEL", ip)
		}
	}
	if _, err := os.Stat(lease(b.addr(false))); err != nil {
		t.Fatalf("lease of pod-b: %v", err)
	}
	// DEL after the netns is gone still cleans up: the handle closed and the bind mount removed
	// first, as a runtime does for a pod that is already gone, so the namespace no longer exists.
	if err := testenv.RemoveNetNS(b.ns); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.ns.Path()); !os.IsNotExist(err) {
		t.Fatalf("netns %s still there before DEL: %v", b.ns.Path(), err)
	}
	if _, err := n.call("DEL", b.id, b.ns.Path(), n.conf); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	if _, err := os.Stat(lease(b.addr(false))); err == nil {
		t.Fatal("lease of pod-b still held after DEL")
	}
	if eps, _ := Endpoints(n.epDir); len(eps) != 0 {
		t.Fatalf("endpoints after every DEL: %+v", eps)
	}
}

func TestAddRejectsConfigWithoutIPAM(t *testing.T) {
	n := newNode(t)
	pns := testenv.NetNS(t)
	_, err := n.call("ADD", "x", pns.Path(), []byte(`{"cniVersion": "1.0.0", "name": "netpact", "type": "netpact"}`))
	if err == nil || !strings.Contains(err.Error(), "ipam.type is required") {
		t.Fatalf("want the missing ipam named, got %v", err)
	}
}

// TestStatus: CNI STATUS (spec 1.1) asks whether the plugin can take ADDs: yes with its IPAM
// plugin present, an error naming the IPAM plugin when it is missing, and a configuration
// without IPAM is refused.
func TestStatus(t *testing.T) {
	n := newNode(t)
	conf := bytes.Replace(n.conf, []byte(`"cniVersion": "1.0.0"`), []byte(`"cniVersion": "1.1.0"`), 1)
	if _, err := n.call("STATUS", "", "", conf); err != nil {
		t.Errorf("STATUS with host-local present: %v", err)
	}
	missing := bytes.Replace(conf, []byte(`"type": "host-local"`), []byte(`"type": "no-such-ipam"`), 1)
	if bytes.Equal(missing, conf) {
		t.Fatalf("the test configuration names no host-local IPAM: %s", conf)
	}
	if _, err := n.call("STATUS", "", "", missing); err == nil || !strings.Contains(err.Error(), "no-such-ipam") {
		t.Errorf("STATUS with the IPAM plugin missing: %v", err)
	}
	if _, err := n.call("STATUS", "", "", []byte(`{"cniVersion": "1.1.0", "name": "netpact", "type": "netpact"}`)); err == nil {
		t.Error("STATUS accepted a configuration without IPAM")
	}
}
