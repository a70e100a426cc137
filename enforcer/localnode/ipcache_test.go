package localnode

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// TestIPCacheOverflowClosesOnlyItsPods: five policies of 14,000 CIDRs each, every one valid and
// each selecting its own pod, need more ipcache entries (70,000) than the node's 65,536. The
// policy refused is named, its pod alone is failed closed, and the other pods (those of the four
// other policies, and f, which has none) are programmed: before, every pod of the node closed.
func TestIPCacheOverflowClosesOnlyItsPods(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	n := NewNode(Options{})
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	// Each policy in a namespace of its own: within the per-namespace budget too.
	pods := []string{"a", "b", "c", "d", "e", "f"}
	c := &policy.Cluster{}
	for _, name := range pods {
		c.Namespaces = append(c.Namespaces, policy.Namespace{Name: "ns-" + name})
		c.Endpoints = append(c.Endpoints, policy.Endpoint{Namespace: "ns-" + name, Name: name, Labels: map[string]string{"app": name}})
	}
	c, err := n.AddCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	key := func(name string) string { return "ns-" + name + "/" + name }
	for _, name := range pods {
		listen(t, n.Pod(key(name)))
	}
	var src strings.Builder
	for i, pod := range pods[:5] {
		fmt.Fprintf(&src, "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p%d, namespace: ns-%s}\nspec:\n  endpointSelector: {matchLabels: {app: %s}}\n  egress:\n  - toCIDR:\n", i+1, pod, pod)
		for j := 0; j < 14000; j++ {
			fmt.Fprintf(&src, "    - 10.%d.%d.%d/32\n", 100+i, j/256, j%256)
		}
	}
	b, err := policy.LoadBytes("cidrs.yaml", []byte(src.String()), policy.LoadOptions{})
	if err != nil {
		t.Fatalf("each policy is within the per-policy and per-namespace budgets: %v", err)
	}
	err = n.Enforce(c, b.Policies)
	for _, want := range []string{"ns-e/e", "failed closed", "CiliumNetworkPolicy ns-e/p5 names 14000 CIDRs", "ipcache (65536 entries)"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want an error with %q, got %.600v", want, err)
		}
	}
	for _, other := range []string{"a", "b", "c", "d", "f"} {
		if strings.Contains(err.Error(), key(other)+" ") {
			t.Errorf("the error names %s, which was programmed: %.600v", key(other), err)
		}
	}
	reach := func(from, to string) bool {
		addr := net.JoinHostPort(n.Pod(key(to)).IPv4.String(), "8080")
		for try := 0; try < 2; try++ {
			var derr error
			if err := n.Pod(key(from)).Do(func() error {
				var conn net.Conn
				if conn, derr = net.DialTimeout("tcp", addr, 400*time.Millisecond); derr == nil {
					conn.Close()
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if derr == nil {
				return true
			}
		}
		return false
	}
	for _, to := range []string{"a", "b", "c", "d"} {
		if !reach("f", to) {
			t.Errorf("f -> %s: closed, though %s's policy fits", to, to)
		}
	}
	if reach("f", "e") {
		t.Error("f -> e: open, though e's policy was refused")
	}
	if reach("a", "f") {
		t.Error("a -> f: open, though a's policy allows only its CIDRs")
	}
	if !reach("f", "f") {
		t.Error("f -> f: f, with no policy, is closed")
	}
}
