package kubenode

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

func kubeNode(name string, cidrs []string, ips ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	return n
}

func TestDesiredRoutesPairFamilies(t *testing.T) {
	nodes := []*corev1.Node{
		kubeNode("cp", []string{"10.244.0.0/24", "fd00:10:244::/64"}, "172.18.0.2", "fc00::2"),
		kubeNode("w1", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "172.18.0.3", "fc00::3"),
		kubeNode("w2", []string{"10.244.2.0/24"}, "fc00::4", "172.18.0.4"), // IPv6 listed first, no IPv6 CIDR
		kubeNode("new", nil, "172.18.0.5"),                                 // no CIDR allocated yet
	}
	got := DesiredRoutes("cp", nodes)
	want := []Route{
		{Node: "w1", Dst: netip.MustParsePrefix("10.244.1.0/24"), Via: netip.MustParseAddr("172.18.0.3")},
		{Node: "w2", Dst: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("172.18.0.4")},
		{Node: "w1", Dst: netip.MustParsePrefix("fd00:10:244:1::/64"), Via: netip.MustParseAddr("fc00::3")},
	}
	if len(got) != len(want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("route %d: %v, want %v", i, got[i], want[i])
		}
	}
}

// TestSyncInNodeNetns runs the agent's sync in a network namespace standing for a node: the CNI
// configuration is written for the node's CIDRs, the other nodes' CIDRs are routed through their
// addresses, a node that goes away loses its routes, and routes that are not netpact's stay.
func TestSyncInNodeNetns(t *testing.T) {
	testenv.RequireRoot(t)
	nodeNS := testenv.NetNS(t)
	dir := t.TempDir()
	self, _ := os.Executable()
	a := New(Config{NodeName: "cp", CNIBinDir: filepath.Join(dir, "bin"), CNIConfDir: filepath.Join(dir, "net.d"),
		EndpointDir: filepath.Join(dir, "endpoints"), Binary: self})
	nodes := []*corev1.Node{
		kubeNode("cp", []string{"10.244.0.0/24", "fd00:10:244::/64"}, "172.18.0.2", "fc00::2"),
		kubeNode("w1", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}, "172.18.0.3", "fc00::3"),
		kubeNode("w2", []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, "172.18.0.4", "fc00::4"),
	}
	err := nodeNS.Do(func(ns.NetNS) error {
		if err := nodeUplink(); err != nil {
			return err
		}
		// A route someone else owns, to the same kind of destination.
		if err := netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("10.99.0.0"), Mask: net.CIDRMask(16, 32)},
			Gw: net.ParseIP("172.18.0.9")}); err != nil {
			return err
		}
		if err := a.installBinary(); err != nil {
			return err
		}
		if err := EnableForwarding(); err != nil {
			return err
		}
		if err := a.Sync(nodes); err != nil {
			return err
		}
		got := gatewayRoutes(t)
		for dst, gw := range map[string]string{"10.244.1.0/24": "172.18.0.3", "10.244.2.0/24": "172.18.0.4",
			"fd00:10:244:1::/64": "fc00::3", "fd00:10:244:2::/64": "fc00::4", "10.99.0.0/16": "172.18.0.9"} {
			if got[dst] != gw {
				t.Errorf("route %s via %q, want via %s (routes %v)", dst, got[dst], gw, got)
			}
		}
		if _, ok := got["10.244.0.0/24"]; ok {
			t.Error("the node routes its own pod CIDR to a gateway")
		}
		// w2 leaves: its routes go, the foreign route stays.
		if err := a.Sync(nodes[:2]); err != nil {
			return err
		}
		got = gatewayRoutes(t)
		for _, dst := range []string{"10.244.2.0/24", "fd00:10:244:2::/64"} {
			if _, ok := got[dst]; ok {
				t.Errorf("route %s of a deleted node stays", dst)
			}
		}
		if got["10.99.0.0/16"] != "172.18.0.9" || got["10.244.1.0/24"] != "172.18.0.3" {
			t.Errorf("routes after w2 left: %v", got)
		}
		// A route deleted behind the agent's back comes back on the next sync.
		_ = netlink.RouteDel(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("10.244.1.0"), Mask: net.CIDRMask(24, 32)},
			Gw: net.ParseIP("172.18.0.3"), Protocol: podnet.RouteProtocol})
		if err := a.Sync(nodes[:2]); err != nil {
			return err
		}
		if got := gatewayRoutes(t); got["10.244.1.0/24"] != "172.18.0.3" {
			t.Errorf("route not repaired: %v", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The CNI configuration covers both of the node's CIDRs with host-local.
	raw, err := os.ReadFile(filepath.Join(dir, "net.d", ConfFile))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type string `json:"type"`
			IPAM struct {
				Type   string                `json:"type"`
				Ranges [][]map[string]string `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.CNIVersion != "1.0.0" || len(conf.Plugins) != 1 || conf.Plugins[0].Type != "netpact" ||
		conf.Plugins[0].IPAM.Type != "host-local" || len(conf.Plugins[0].IPAM.Ranges) != 2 ||
		conf.Plugins[0].IPAM.Ranges[1][0]["subnet"] != "fd00:10:244::/64" {
		t.Fatalf("conf: %s", raw)
	}
	if st, err := os.Stat(filepath.Join(dir, "bin", "netpact")); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("plugin binary not installed executable: %v", err)
	}

	// /readyz answers once synced, /routes lists what the agent keeps.
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp, err = srv.Client().Get(srv.URL + "/routes")
	if err != nil {
		t.Fatal(err)
	}
	var routes []Route
	if err := json.NewDecoder(resp.Body).Decode(&routes); err != nil || len(routes) != 2 {
		t.Fatalf("routes: %v %v", routes, err)
	}
}

// nodeUplink gives the current network namespace the node's eth0 (a veth: this kernel may have no
// dummy driver) on 172.18.0.0/24 and fc00::/64, as node cp, so gateways on those are on-link.
func nodeUplink() error {
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0-peer"}
	if err := netlink.LinkAdd(up); err != nil {
		return err
	}
	l, err := netlink.LinkByName("eth0")
	if err != nil {
		return err
	}
	for _, s := range []string{"172.18.0.2/24", "fc00::2/64"} {
		addr, _ := netlink.ParseAddr(s)
		addr.Flags = 0x02 // IFA_F_NODAD
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
	}
	return netlink.LinkSetUp(l)
}

// gatewayRoutes maps the destination of each gateway route in the current network namespace to
// its gateway.
func gatewayRoutes(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Gw != nil {
			out[r.Dst.String()] = r.Gw.String()
		}
	}
	return out
}

// TestReplaceRoutesPastAFailure: a node whose route the kernel refuses (its address is not on any
// link of this node) holds back neither the other nodes' routes nor the deletion of a stale one,
// and the error names the node.
func TestReplaceRoutesPastAFailure(t *testing.T) {
	testenv.RequireRoot(t)
	nodeNS := testenv.NetNS(t)
	err := nodeNS.Do(func(ns.NetNS) error {
		if err := nodeUplink(); err != nil {
			return err
		}
		// Left by a node that is gone.
		if err := netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("10.244.9.0"), Mask: net.CIDRMask(24, 32)},
			Gw: net.ParseIP("172.18.0.9"), Protocol: podnet.RouteProtocol}); err != nil {
			return err
		}
		// far sorts first, so a stop at the first failure skips everything after it.
		want := []Route{
			{Node: "far", Dst: netip.MustParsePrefix("10.243.0.0/24"), Via: netip.MustParseAddr("192.0.2.9")},
			{Node: "w1", Dst: netip.MustParsePrefix("10.244.1.0/24"), Via: netip.MustParseAddr("172.18.0.3")},
			{Node: "w1", Dst: netip.MustParsePrefix("fd00:10:244:1::/64"), Via: netip.MustParseAddr("fc00::3")},
		}
		err := ReplaceRoutes(want)
		if err == nil || !strings.HasPrefix(err.Error(), "replace routes: ") || !strings.Contains(err.Error(), "(node far)") {
			t.Errorf("error %v; want one that starts with \"replace routes: \" and names node far", err)
		}
		got := gatewayRoutes(t)
		for dst, gw := range map[string]string{"10.244.1.0/24": "172.18.0.3", "fd00:10:244:1::/64": "fc00::3"} {
			if got[dst] != gw {
				t.Errorf("route %s via %q, want via %s (routes %v)", dst, got[dst], gw, got)
			}
		}
		if _, ok := got["10.244.9.0/24"]; ok {
			t.Errorf("the stale route stays (routes %v)", got)
		}
		if _, ok := got["10.243.0.0/24"]; ok {
			t.Errorf("a route via an address not on-link was installed (routes %v)", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSyncWithoutPodCIDRIsNotReady(t *testing.T) {
	a := New(Config{NodeName: "cp", CNIConfDir: t.TempDir()})
	err := a.Sync([]*corev1.Node{kubeNode("cp", nil, "172.18.0.2")})
	if err == nil {
		t.Fatal("want an error for a node without a pod CIDR")
	}
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/readyz")
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("readyz before a sync: %v %v", resp, err)
	}
}

// TestLocalPods: the pods the CNI plugin recorded on this node are the enforcer's local pods,
// keyed by namespace and name, with their host veth; a record removed by DEL is gone, and a
// temporary file of a record being written is not a pod.
func TestLocalPods(t *testing.T) {
	dir := t.TempDir()
	e := &Enforcement{cfg: EnforceConfig{EndpointDir: dir}}
	for _, ep := range []cniplugin.Endpoint{
		{ContainerID: "c1", Namespace: "db", Pod: "postgres-0", Netns: "/run/netns/x", IfName: "eth0", HostVeth: "np1", HostIfIndex: 11, IPs: []string{"10.244.1.5/32"}},
		{ContainerID: "c2", Namespace: "db", Pod: "flask-app-1", Netns: "/run/netns/y", IfName: "eth0", HostVeth: "np2", HostIfIndex: 12, IPs: []string{"10.244.1.6/32"}},
		{ContainerID: "c3", Namespace: "dummy", Pod: "debug", Netns: "/run/netns/z", IfName: "eth0", HostVeth: "np3", HostIfIndex: 13, IPs: []string{"10.244.1.7/32"}},
	} {
		if err := cniplugin.WriteEndpoint(dir, ep); err != nil {
			t.Fatal(err)
		}
	}
	if err := cniplugin.RemoveEndpoint(dir, "c3"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".c4.tmp"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	records, err := e.localRecords()
	if err != nil {
		t.Fatal(err)
	}
	var pods []enforcer.LocalPod
	for k, r := range records {
		pods = append(pods, localPod(k, r))
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Key.Name < pods[j].Key.Name })
	got := fmt.Sprint(pods)
	want := fmt.Sprint([]enforcer.LocalPod{
		{Key: policy.EndpointKey{Namespace: "db", Name: "flask-app-1"}, Ifindex: 12, HostIfname: "np2"},
		{Key: policy.EndpointKey{Namespace: "db", Name: "postgres-0"}, Ifindex: 11, HostIfname: "np1"},
	})
	if got != want {
		t.Errorf("local pods %s, want %s", got, want)
	}
}
