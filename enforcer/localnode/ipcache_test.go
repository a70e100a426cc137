package localnode

import (
	"fmt"
	"strings"
	"testing"

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
	pods := []string{"a", "b", "c", "d", "e", "f"}
	c := &policy.Cluster{Namespaces: []policy.Namespace{{Name: "app"}}}
	for _, name := range pods {
		c.Endpoints = append(c.Endpoints, policy.Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name}})
	}
	c, err := n.AddCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range pods {
		listen(t, n.Pod("app/"+name))
	}
	var src strings.Builder
	for i, pod := range pods[:5] {
		fmt.Fprintf(&src, "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p%d, namespace: app}\nspec:\n  endpointSelector: {matchLabels: {app: %s}}\n  egress:\n  - toCIDR:\n", i+1, pod)
		for j := 0; j < 14000; j++ {
			fmt.Fprintf(&src, "    - 10.%d.%d.%d/32\n", 100+i, j/256, j%256)
		}
	}
	b, err := policy.LoadBytes("cidrs.yaml", []byte(src.String()), policy.LoadOptions{})
	if err != nil {
		t.Fatalf("each policy is within the per-policy budget: %v", err)
	}
	err = n.Enforce(c, b.Policies)
	for _, want := range []string{"app/e", "failed closed", "CiliumNetworkPolicy app/p5 names 14000 CIDRs", "ipcache (65536 entries)"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want an error with %q, got %.600v", want, err)
		}
	}
	for _, other := range []string{"app/a", "app/b", "app/c", "app/d", "app/f"} {
		if strings.Contains(err.Error(), other+" ") {
			t.Errorf("the error names %s, which was programmed: %.600v", other, err)
		}
	}
	for _, to := range []string{"a", "b", "c", "d"} {
		if !connects(t, n, "f", to) {
			t.Errorf("f -> %s: closed, though %s's policy fits", to, to)
		}
	}
	if connects(t, n, "f", "e") {
		t.Error("f -> e: open, though e's policy was refused")
	}
	if connects(t, n, "a", "f") {
		t.Error("a -> f: open, though a's policy allows only its CIDRs")
	}
	if !connects(t, n, "f", "f") {
		t.Error("f -> f: f, with no policy, is closed")
	}
}
