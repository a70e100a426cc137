package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// cidrPolicy is a CNP in namespace app selecting app=pod with an egress rule to n distinct /32s
// from 10.first.0.0 on.
func cidrPolicy(name, pod string, first, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: %s, namespace: app}\nspec:\n  endpointSelector: {matchLabels: {app: %s}}\n  egress:\n  - toCIDR:\n", name, pod)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    - 10.%d.%d.%d/32\n", first+i/65536, i/256%256, i%256)
	}
	return b.String()
}

func twoNodeCluster(pods map[string]string) *Cluster {
	c := &Cluster{Namespaces: []Namespace{{Name: "app"}}, Nodes: []Node{
		{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("172.18.0.2")}},
		{Name: "n2", IPs: []netip.Addr{netip.MustParseAddr("172.18.0.3")}}}}
	i := 0
	for name, node := range pods {
		i++
		c.Endpoints = append(c.Endpoints, Endpoint{Namespace: "app", Name: name, Node: node, Labels: map[string]string{"app": name},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 0, byte(i)})}})
	}
	return c
}

// TestIPCacheHoldsOnlyTheNodesCIDRs: a node's ipcache has the CIDRs of the policies that select
// its pods, not those of policies enforced elsewhere; verdicts are the same either way.
func TestIPCacheHoldsOnlyTheNodesCIDRs(t *testing.T) {
	c := twoNodeCluster(map[string]string{"a": "n1", "b": "n2"})
	b, err := LoadBytes("p.yaml", []byte(cidrPolicy("to-many", "a", 1, 300)+"---\n"+cidrPolicy("to-few", "b", 2, 3)), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := Compile(c, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	count := func(ipc map[netip.Prefix]ID, first byte) int {
		n := 0
		for p := range ipc {
			if p.Addr().Is4() && p.Addr().As4()[0] == 10 && p.Addr().As4()[1] == first {
				n++
			}
		}
		return n
	}
	n1, n2 := st.IPCache("n1"), st.IPCache("n2")
	if count(n1, 1) != 300 || count(n1, 2) != 0 {
		t.Errorf("n1 (a, to-many): %d of to-many's CIDRs and %d of to-few's; want 300 and 0", count(n1, 1), count(n1, 2))
	}
	if count(n2, 1) != 0 || count(n2, 2) != 3 {
		t.Errorf("n2 (b, to-few): %d of to-many's CIDRs and %d of to-few's; want 0 and 3", count(n2, 1), count(n2, 2))
	}
	for _, pod := range []string{"10.244.0.1", "10.244.0.2"} {
		for _, ipc := range []map[netip.Prefix]ID{n1, n2} {
			if _, ok := ipc[netip.MustParsePrefix(pod+"/32")]; !ok {
				t.Errorf("pod %s is not in every node's ipcache", pod)
			}
		}
	}
}

// TestIPCacheWithinRefusesTheLargest: when the node's CIDRs do not fit, the policy naming the
// most is refused and only its CIDRs go (a CIDR another policy names stays); the pods it selects
// are the ones to close.
func TestIPCacheWithinRefusesTheLargest(t *testing.T) {
	c := twoNodeCluster(map[string]string{"a": "n1", "b": "n1", "c": "n1"})
	// big and small share 10.1.0.0-10.1.0.9; other names 10.3.0.0/32 only.
	src := cidrPolicy("big", "a", 1, 500) + "---\n" + cidrPolicy("small", "b", 1, 10) + "---\n" + cidrPolicy("other", "c", 3, 1)
	b, err := LoadBytes("p.yaml", []byte(src), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := Compile(c, b, Options{Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	full := st.IPCache("n1")
	ipc, refused := st.IPCacheWithin("n1", len(full)-1)
	big := Key{Kind: KindCNP, Namespace: "app", Name: "big"}
	if len(refused) != 1 || refused[big] != 500 {
		t.Fatalf("refused %v, want only app/big with 500", refused)
	}
	if want := len(full) - 490; len(ipc) != want {
		t.Errorf("%d entries, want %d (big's 490 CIDRs of its own gone)", len(ipc), want)
	}
	for _, p := range []string{"10.1.0.9/32", "10.3.0.0/32", "10.244.0.1/32"} {
		if _, ok := ipc[netip.MustParsePrefix(p)]; !ok {
			t.Errorf("%s is gone: small, other or a pod needs it", p)
		}
	}
	if ks := st.PoliciesOf(EndpointKey{Namespace: "app", Name: "a"}); len(ks) != 1 || ks[0] != big {
		t.Errorf("a's policies %v, want app/big", ks)
	}
	if same, none := st.IPCacheWithin("n1", len(full)); len(same) != len(full) || none != nil {
		t.Errorf("a fitting ipcache changed: %d entries, refused %v", len(same), none)
	}
}

// TestCIDRBudgetPerPolicy: a policy naming more distinct CIDRs than a node can give it is refused
// by the loader, at the first CIDR past the budget, with its file and line.
func TestCIDRBudgetPerPolicy(t *testing.T) {
	src := cidrPolicy("ok", "a", 1, MaxCIDRsPerPolicy)
	if _, err := LoadBytes("ok.yaml", []byte(src), LoadOptions{}); err != nil {
		t.Fatalf("%d CIDRs: %v", MaxCIDRsPerPolicy, err)
	}
	start := time.Now()
	_, err := LoadBytes("many.yaml", []byte(cidrPolicy("many", "a", 1, 66000)), LoadOptions{})
	line := 8 + MaxCIDRsPerPolicy // the first CIDR is on line 8
	want := fmt.Sprintf("many.yaml:%d:", line)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "spec.egress[0].toCIDR[16384]") ||
		!strings.Contains(err.Error(), "at most 16384 distinct CIDRs") {
		t.Fatalf("66,000 CIDRs: %v; want an error at %s spec.egress[0].toCIDR[16384]", err, want)
	}
	if strings.Count(err.Error(), "at most") != 1 {
		t.Errorf("the budget is reported more than once: %.300s", err)
	}
	t.Logf("66,000 CIDRs refused in %v", time.Since(start))
}
