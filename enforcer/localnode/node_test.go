package localnode

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// testNode starts a local node with pods a, b and c of namespace app, each accepting TCP on
// 8080, not yet programmed.
func testNode(t testing.TB) (*Node, *policy.Cluster) {
	t.Helper()
	return testNodeWith(t, Options{})
}

// testNodeWith is testNode with the node's options.
func testNodeWith(t testing.TB, opts Options) (*Node, *policy.Cluster) {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	n := NewNode(opts)
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	c := &policy.Cluster{Namespaces: []policy.Namespace{{Name: "app"}}}
	for _, name := range []string{"a", "b", "c"} {
		c.Endpoints = append(c.Endpoints, policy.Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name}})
	}
	c, err := n.AddCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b", "c"} {
		listen(t, n.Pod("app/"+name))
	}
	return n, c
}

func listen(t testing.TB, p *podnet.Pod) {
	t.Helper()
	var ln net.Listener
	if err := p.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// connects reports whether a TCP connection from pod from to pod to's 8080 is made (retried
// once when it is not).
func connects(t *testing.T, n *Node, from, to string) bool {
	t.Helper()
	addr := net.JoinHostPort(n.Pod("app/"+to).IPv4.String(), strconv.Itoa(8080))
	for try := 0; try < 2; try++ {
		var err error
		if derr := n.Pod("app/" + from).Do(func() error {
			var c net.Conn
			c, err = net.DialTimeout("tcp", addr, 400*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		if err == nil {
			return true
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("%s -> %s: want connected or timed out, got %v", from, to, err)
		}
	}
	return false
}

// TestNewPodClosedUntilProgrammed: a pod's workload may run before the enforcer programs the
// pod; until then nothing reaches it and it reaches nothing.
func TestNewPodClosedUntilProgrammed(t *testing.T) {
	n, c := testNode(t)
	if connects(t, n, "b", "a") || connects(t, n, "a", "b") {
		t.Fatal("a pod not yet programmed is open")
	}
	// A closed pod does not even resolve its gateway: its ARP is dropped too.
	if !waitFlow(t, n, func(f datapath.Flow) bool { return f.Reason == datapath.ReasonDropFailClosed }) {
		t.Error("no flow event says an endpoint is closed")
	}
	if err := n.Enforce(c, nil); err != nil {
		t.Fatal(err)
	}
	if !connects(t, n, "b", "a") || !connects(t, n, "a", "b") {
		t.Fatal("pods without policy are not open once programmed")
	}
}

// unprogrammable validates but needs more address-matched entries for pod a than an endpoint
// may have (600 addresses times the port blocks of 1-65534); b's policy is ordinary.
func unprogrammable() string {
	var b strings.Builder
	b.WriteString("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: wide, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n")
	for i := 0; i < 600; i++ {
		fmt.Fprintf(&b, "    - ipBlock: {cidr: 10.1.%d.%d/32}\n", i/200, i%200+1)
	}
	b.WriteString("    ports: [{port: 1, endPort: 65534, protocol: TCP}]\n")
	b.WriteString(`---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: app}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
`)
	return b.String()
}

// TestOneEndpointFailsClosedTheOthersAreProgrammed: a policy that validates but cannot be
// programmed for one pod closes that pod and is reported; the other pods get their policies.
func TestOneEndpointFailsClosedTheOthersAreProgrammed(t *testing.T) {
	n, c := testNode(t)
	if err := n.Enforce(c, nil); err != nil {
		t.Fatal(err)
	}
	b, err := policy.LoadBytes("wide.yaml", []byte(unprogrammable()), policy.LoadOptions{})
	if err != nil {
		t.Fatalf("the policy must validate: %v", err)
	}
	err = n.Enforce(c, b.Policies)
	for _, want := range []string{"app/a", "failed closed", "prefix_policy entries", "NetworkPolicy app/wide spec.ingress[0] (wide.yaml:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("want an error with %q, got %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "app/b") || strings.Contains(err.Error(), "app/c") {
		t.Errorf("the error names pods that were programmed: %v", err)
	}
	if verr := n.Verify(); verr == nil || !strings.Contains(verr.Error(), "app/a") {
		t.Errorf("Verify passes with a pod failed closed: %v", verr)
	}
	if connects(t, n, "b", "a") || connects(t, n, "a", "c") {
		t.Error("the pod that failed is open")
	}
	if connects(t, n, "c", "b") {
		t.Error("b's policy (only a may connect) was not programmed")
	}
	if !connects(t, n, "b", "c") {
		t.Error("c (no policy) was not programmed open")
	}
}

// TestDeadRunsAreSwept: a local node killed before it stopped leaves its pin directory and run
// id; the next node removes those whose process is gone, and only those.
func TestDeadRunsAreSwept(t *testing.T) {
	testenv.RequireBPF(t)
	dead := 1 << 22 // above pid_max's default: no such process
	pins := filepath.Join(runPinRoot, fmt.Sprintf("%d-7", dead))
	live := filepath.Join(runPinRoot, fmt.Sprintf("%d-8", os.Getppid()))
	ids := filepath.Join(idDir, "199")
	for _, d := range []string{pins, live} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.RemoveAll(live); os.RemoveAll(pins); os.Remove(runPinRoot) })
	if err := os.MkdirAll(ids, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ids, "pid"), []byte(fmt.Sprint(dead)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The dead run's proxy left its routing rule and table, and its pods their rules to its
	// external hosts.
	if err := proxyRoutes(7).Ensure(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxyRoutes(7).Remove() })
	deadPod := &podnet.Pod{Name: "dead/pod", IPv4: netip.MustParseAddr("10.250.7.1"), IPv6: netip.MustParseAddr("fd00:250:7::1")}
	if err := (&Node{id: 7}).routeToExternals(deadPod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeExternalRules(7) })
	n := NewNode(Options{})
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Table == proxyRoutes(7).Table || r.Table == proxyRoutes(n.id).Table {
			t.Errorf("a proxy routing rule is left: %v", r)
		}
		if r.Table == externalTable(7) {
			t.Errorf("an external hosts' routing rule is left: %v", r)
		}
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("the pin directory of a dead run is still there: %v", err)
	}
	if _, err := os.Stat(ids); !os.IsNotExist(err) {
		t.Errorf("the run id of a dead process is still claimed: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the pin directory of a live process was removed: %v", err)
	}
}

// TestSweepSparesAReclaimedID: a dead run's id that a live process has claimed since keeps its
// proxy routing when the dead run's pins are swept: the table and rule are the live process's
// now (removing them stalled its proxied connections while other local nodes started).
func TestSweepSparesAReclaimedID(t *testing.T) {
	testenv.RequireBPF(t)
	dead := 1 << 22 // above pid_max's default: no such process
	const id = 198
	pins := filepath.Join(runPinRoot, fmt.Sprintf("%d-%d", dead, id))
	ids := filepath.Join(idDir, fmt.Sprint(id))
	if err := os.MkdirAll(pins, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pins); os.Remove(runPinRoot) })
	if err := os.MkdirAll(ids, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ids) })
	// This process holds the id now, as a live run would, with its proxy's routing.
	if err := os.WriteFile(filepath.Join(ids, "pid"), []byte(fmt.Sprint(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := proxyRoutes(id).Ensure(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxyRoutes(id).Remove() })
	sweepDeadRuns()
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("the dead run's pins are still there: %v", err)
	}
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	kept := false
	for _, r := range rules {
		kept = kept || r.Table == proxyRoutes(id).Table
	}
	if !kept {
		t.Error("the sweep removed the proxy routing of the process that holds the id now")
	}
}

// TestDriftRepaired: entries changed behind the enforcer's back (as root can, through the pinned
// maps) are written back by the node's drift repair, counted and logged, and a's policy holds
// again.
func TestDriftRepaired(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	n, c := testNodeWith(t, Options{DriftInterval: 50 * time.Millisecond, Log: func(line string) {
		mu.Lock()
		logged = append(logged, line)
		mu.Unlock()
	}})
	b, err := policy.LoadBytes("a-from-b.yaml", []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: app}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 8080, protocol: TCP}]
`), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	a := policy.EndpointKey{Namespace: "app", Name: "a"}
	id := n.enf.EndpointID(a)
	identB, _ := n.enf.State().Identity(policy.EndpointKey{Namespace: "app", Name: "b"})
	policyMap, endpoints := pinnedMap(t, n, "policy"), pinnedMap(t, n, "endpoints")
	var key bpf.TcPolicyKey
	var val, want bpf.TcPolicyValue
	found := false
	for it := policyMap.Iterate(); it.Next(&key, &val); {
		if key.EpId == id && key.Identity == uint32(identB.ID) {
			found, want = true, val
			break
		}
	}
	if !found {
		t.Fatalf("no policy entry of a (endpoint %d) for b (identity %d)", id, identB.ID)
	}
	ifindex := uint32(n.Pod("app/a").Ifindex)
	var wantInfo bpf.TcEndpointInfo
	if err := endpoints.Lookup(ifindex, &wantInfo); err != nil {
		t.Fatal(err)
	}
	if got := n.enf.DriftRepairs(); got != 0 {
		t.Fatalf("%d entries repaired before any tampering", got)
	}
	// b's entry now says deny, and a enforces nothing: c could reach it.
	cleared := wantInfo
	cleared.Flags = 0
	if err := policyMap.Put(key, bpf.TcPolicyValue{Verdict: uint8(policy.VerdictDeny)}); err != nil {
		t.Fatal(err)
	}
	if err := endpoints.Put(ifindex, cleared); err != nil {
		t.Fatal(err)
	}

	wantLogs := []string{
		fmt.Sprintf("drift repaired: pod app/a, policy map, endpoint %d, ingress identity %d TCP 8080: was deny rule 0, wrote allow rule %d", id, identB.ID, want.RuleId),
		fmt.Sprintf("drift repaired: pod app/a, endpoints map, endpoint %d, ifindex %d: was ", id, ifindex),
	}
	repaired := func() []string {
		var got bpf.TcPolicyValue
		var info bpf.TcEndpointInfo
		var missing []string
		if err := policyMap.Lookup(key, &got); err != nil || got != want {
			missing = append(missing, fmt.Sprintf("policy entry is %+v (err %v), want %+v", got, err, want))
		}
		if err := endpoints.Lookup(ifindex, &info); err != nil || info != wantInfo {
			missing = append(missing, fmt.Sprintf("endpoint entry is %+v (err %v), want %+v", info, err, wantInfo))
		}
		if got := n.enf.DriftRepairs(); got != 2 {
			missing = append(missing, fmt.Sprintf("%d entries counted as repaired, want 2", got))
		}
		mu.Lock()
		defer mu.Unlock()
		for _, w := range wantLogs {
			if !slices.ContainsFunc(logged, func(l string) bool { return strings.HasPrefix(l, w) }) {
				missing = append(missing, fmt.Sprintf("no log line %q in %q", w, logged))
			}
		}
		return missing
	}
	// Repair runs every 50 ms: 5 s is 100 periods, not a timing claim.
	for deadline := time.Now().Add(5 * time.Second); len(repaired()) > 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	for _, m := range repaired() {
		t.Error(m)
	}
	if err := n.Verify(); err != nil {
		t.Errorf("after repair: %v", err)
	}
	if !connects(t, n, "b", "a") {
		t.Error("after repair b cannot reach a")
	}
	if connects(t, n, "c", "a") {
		t.Error("after repair c reaches a")
	}
}

// pinnedMap opens one of the node's pinned maps, as any root process can.
func pinnedMap(t *testing.T, n *Node, name string) *ebpf.Map {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(n.pinPath(), name), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestClaimRemovesStalePods: a process killed before Stop leaves its pods (namespaces and host
// veths named after its run id). The next process to claim that id deletes them: no live process
// but the claimer makes pods under it.
func TestClaimRemovesStalePods(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	id, release, err := ClaimRunID()
	if err != nil {
		t.Fatal(err)
	}
	stale, err := MakePod("dead/pod", id, 99)
	if err != nil {
		release()
		t.Fatal(err)
	}
	t.Cleanup(func() { stale.Delete() })
	// And an external host, with the pod's rule to it.
	staleExt, err := podnet.CreateRouted("dead/external", fmt.Sprintf("np%d-x0", id), fmt.Sprintf("np%dx0", id),
		netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::1"), externalTable(id))
	if err != nil {
		release()
		t.Fatal(err)
	}
	t.Cleanup(func() { staleExt.Delete() })
	if err := (&Node{id: id}).routeToExternals(stale); err != nil {
		release()
		t.Fatal(err)
	}
	t.Cleanup(func() { removeExternalRules(id) })
	// Its owner dies: the id's pid is one of a process that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		release()
		t.Fatal(err)
	}
	if err := os.WriteFile(fmt.Sprintf("%s/%d/pid", idDir, id), []byte(fmt.Sprint(dead.Process.Pid)), 0o644); err != nil {
		release()
		t.Fatal(err)
	}
	again, release2, err := ClaimRunID()
	if err != nil {
		t.Fatal(err)
	}
	defer release2()
	if again != id {
		// This process's ids start at its own; only a claim racing this one could take it.
		t.Fatalf("claimed run id %d, not the dead owner's %d", again, id)
	}
	if _, err := os.Stat("/run/netns/" + stale.Netns); !os.IsNotExist(err) {
		t.Errorf("the stale pod's namespace %s stays: %v", stale.Netns, err)
	}
	if _, err := netlink.LinkByName(stale.HostIfname); err == nil {
		t.Errorf("the stale pod's veth %s stays", stale.HostIfname)
	}
	if _, err := os.Stat("/run/netns/" + staleExt.Netns); !os.IsNotExist(err) {
		t.Errorf("the stale external host's namespace %s stays: %v", staleExt.Netns, err)
	}
	if _, err := netlink.LinkByName(staleExt.HostIfname); err == nil {
		t.Errorf("the stale external host's veth %s stays", staleExt.HostIfname)
	}
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Table == externalTable(id) {
			t.Errorf("the stale pod's rule to the external hosts stays: %v", r)
		}
	}
}
