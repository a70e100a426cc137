package enforcer

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

var restartPolicy = testPolicy("a-allows-b.yaml") + "---\n" + `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
`

// TestRestartKeepsIdsAndIdentities: an enforcer met b first, then a and c, so its numbers are
// not what a fresh one would give. It stops (the pinned maps keep enforcing), c is deleted while
// no enforcer runs, and a new enforcer starts: a and b keep their endpoint ids and identity
// numbers (their entries are unchanged by the first Sync, so no pod is ever judged by another's
// entries), and what c left is removed.
func TestRestartKeepsIdsAndIdentities(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	pid := os.Getpid() % 10000
	pin := filepath.Join(datapath.DefaultPinPath+"-test", fmt.Sprintf("restart-ids-%d", pid))
	t.Cleanup(func() { os.RemoveAll(pin); os.Remove(datapath.DefaultPinPath + "-test") })
	pods := map[string]*podnet.Pod{}
	cluster := &policy.Cluster{Nodes: []policy.Node{{Name: "n"}}, Namespaces: []policy.Namespace{{Name: "app"}}}
	endpoint := map[string]*policy.Endpoint{}
	for i, name := range []string{"a", "b", "c"} {
		v4 := netip.AddrFrom4([4]byte{10, 202, byte(pid % 200), byte(i + 1)})
		p, err := podnet.CreatePod(name, fmt.Sprintf("npr-%d-%s", pid, name), fmt.Sprintf("npr%d%s", pid, name), v4, netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Delete() })
		pods[name] = p
		endpoint[name] = &policy.Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name}, Node: "n", IPs: []netip.Addr{v4}}
	}
	b, err := policy.LoadBytes("restart.yaml", []byte(restartPolicy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sync := func(e *Enforcer, names ...string) {
		t.Helper()
		c := *cluster
		var local []LocalPod
		for _, n := range names {
			c.Endpoints = append(c.Endpoints, *endpoint[n])
			local = append(local, LocalPod{Key: endpoint[n].Key(), Ifindex: pods[n].Ifindex, HostIfname: pods[n].HostIfname})
		}
		if err := e.Sync(&c, b.Policies, local); err != nil {
			t.Fatal(err)
		}
	}
	key := func(n string) policy.EndpointKey { return endpoint[n].Key() }
	identity := func(e *Enforcer, n string) policy.ID {
		ident, ok := e.State().Identity(key(n))
		if !ok {
			t.Fatalf("no identity for %s", n)
		}
		return ident.ID
	}

	dp1, err := datapath.Open(datapath.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	e1 := New("n", dp1, policy.Options{})
	sync(e1, "b")
	sync(e1, "b", "a", "c")
	ids := map[string]uint32{"a": e1.EndpointID(key("a")), "b": e1.EndpointID(key("b")), "c": e1.EndpointID(key("c"))}
	idents := map[string]policy.ID{"a": identity(e1, "a"), "b": identity(e1, "b")}
	// What an entry does, without the rule it names (rule numbers follow the engine's history).
	entries := func(dp *datapath.Datapath, id uint32) string {
		t.Helper()
		d, err := dp.Dump(id)
		if err != nil {
			t.Fatal(err)
		}
		for i := range d {
			d[i].Rule = 0
		}
		return fmt.Sprint(d)
	}
	before := entries(dp1, ids["a"])
	identC := identity(e1, "c")
	dp1.Close() // the enforcer dies; the pins keep enforcing
	if err := pods["c"].Delete(); err != nil {
		t.Fatal(err)
	}

	dp2, err := datapath.Open(datapath.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := dp2.Teardown(); err != nil {
			t.Error(err)
		}
	}()
	e2 := New("n", dp2, policy.Options{})
	sync(e2, "a", "b")
	for _, n := range []string{"a", "b"} {
		if got := e2.EndpointID(key(n)); got != ids[n] {
			t.Errorf("%s: endpoint id %d after the restart, the maps hold %d", n, got, ids[n])
		}
		if got := identity(e2, n); got != idents[n] {
			t.Errorf("%s: identity %d after the restart, the maps hold %d", n, got, idents[n])
		}
	}
	if after := entries(dp2, ids["a"]); after != before {
		t.Errorf("a: the first Sync after the restart changed what its entries do:\nbefore %s\nafter  %s", before, after)
	}
	if after := entries(dp2, ids["b"]); strings.Contains(after, fmt.Sprintf("identity %d ", identC)) {
		t.Errorf("b still allows the identity of c, which is gone: %s", after)
	}
	if d, err := dp2.Dump(ids["c"]); err != nil || len(d) != 0 {
		t.Errorf("entries of c, deleted while no enforcer ran, are still there: %v %v", d, err)
	}
	if pinned, _ := dp2.Pinned(); len(pinned) != 3 {
		t.Fatalf("the maps held %d endpoints at the restart, want 3", len(pinned))
	}
	if err := e2.Verify(); err != nil {
		t.Error(err)
	}
}

// testPolicy is a policy of the repository's testdata/policies, which the tests of several
// packages share.
func testPolicy(name string) string {
	b, err := os.ReadFile(filepath.Join("..", "testdata", "policies", name))
	if err != nil {
		panic(err)
	}
	return string(b)
}
