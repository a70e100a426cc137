package localnode

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// TestNodePortClientIsJudged: the host translates a NodePort as kube-proxy does (DNAT to pod a,
// then masquerade to the node's address), so a's ingress program sees the node's address. a
// admits only c. b through the NodePort is judged as b and times out, where the host allowance
// used to let it in; c through the NodePort connects; the host's own connection (a kubelet probe)
// still does.
func TestNodePortClientIsJudged(t *testing.T) {
	nft := testenv.RequireCommand(t, "nft", "nftables")
	n, c := testNode(t)
	// The node's address (on lo, the run's own) and the NodePort on it.
	node, _ := n.VirtualAddrs(249)
	table := fmt.Sprintf("netpact_np_%d", node.As4()[2])
	a := n.Pod("app/a").IPv4
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "addr", "add", node.String()+"/32", "dev", "lo")
	t.Cleanup(func() { exec.Command("ip", "addr", "del", node.String()+"/32", "dev", "lo").Run() })
	rules := fmt.Sprintf(`table ip %[1]s {
	chain pre { type nat hook prerouting priority dstnat; ip daddr %[2]s tcp dport 30080 dnat to %[3]s:8080; }
	chain post { type nat hook postrouting priority srcnat; ct status dnat ip daddr %[3]s tcp dport 8080 snat to %[2]s; }
}`, table, node, a)
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(nft, "delete", "table", "ip", table).Run() })

	c.Nodes[0].IPs = []netip.Addr{node}
	b, err := policy.LoadBytes("a.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-c, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	nodePort := net.JoinHostPort(node.String(), "30080")
	dial := func(from string, wait time.Duration) error {
		var err error
		if derr := n.Pod("app/" + from).Do(func() error {
			var conn net.Conn
			if conn, err = net.DialTimeout("tcp", nodePort, wait); err == nil {
				conn.Close()
			}
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		return err
	}
	if err := dial("c", 3*time.Second); err != nil {
		t.Fatalf("c -> the NodePort (a admits c): %v", err)
	}
	if err := dial("b", time.Second); err == nil {
		t.Fatal("b -> the NodePort: connected, though a admits only c: the masqueraded client passed as the host")
	}
	// The drop names b's identity, though the packet came from the node's address.
	bID, _ := n.enf.State().Identity(policy.EndpointKey{Namespace: "app", Name: "b"})
	if !waitFlow(t, n, func(f datapath.Flow) bool {
		return f.Src == node && f.Dst == a && f.Dropped() && bID != nil && f.SrcIdentity == bID.ID
	}) {
		t.Error("no drop at a names b's identity")
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(a.String(), "8080"), 3*time.Second)
	if err != nil {
		t.Fatalf("the host -> a directly (as a kubelet probe): %v", err)
	}
	conn.Close()
}
