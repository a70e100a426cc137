package localnode

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

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
	n.mu.Lock()
	closed := 0
	for _, f := range n.flows {
		if f.Reason == datapath.ReasonDropFailClosed {
			closed++
		}
	}
	n.mu.Unlock()
	if closed == 0 {
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
	// The dead run's proxy left its routing rule and table.
	if err := proxyRoutes(7).Ensure(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxyRoutes(7).Remove() })
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
