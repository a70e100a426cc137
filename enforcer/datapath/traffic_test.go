package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// trafficPods are three pods on a node of network namespaces.
type trafficNode struct {
	pods    map[string]*podnet.Pod
	cluster *policy.Cluster
}

func newTrafficNode(t testing.TB) *trafficNode {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	if err := podnet.PrepareHost(); err != nil {
		t.Fatal(err)
	}
	n := &trafficNode{pods: map[string]*podnet.Pod{}, cluster: &policy.Cluster{
		Nodes:      []policy.Node{{Name: "node-1"}},
		Namespaces: []policy.Namespace{{Name: "app"}},
	}}
	for i, name := range []string{"a", "b", "c"} {
		p := createTestPod(t, name, i)
		n.pods[name] = p
		n.cluster.Endpoints = append(n.cluster.Endpoints, policy.Endpoint{Namespace: "app", Name: name, Node: "node-1",
			Labels: map[string]string{"app": name}, IPs: []netip.Addr{p.IPv4, p.IPv6}})
	}
	return n
}

// createTestPod makes the i-th pod of this test process (names and addresses from its pid), and
// deletes it when the test ends.
func createTestPod(t testing.TB, name string, i int) *podnet.Pod {
	t.Helper()
	id := os.Getpid() % 10000
	v4 := netip.AddrFrom4([4]byte{10, 200, byte(id % 200), byte(i + 1)})
	v6 := netip.MustParseAddr(fmt.Sprintf("fd00:200:%x::%d", id, i+1))
	p, err := podnet.CreatePod(name, fmt.Sprintf("np-%d-%s", id, name), fmt.Sprintf("np%d%s", id, name), v4, v6)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Delete() })
	return p
}

// apply compiles the policies for the node and programs every pod.
func (n *trafficNode) apply(t testing.TB, d *Datapath, yaml string) {
	t.Helper()
	st := compileYAML(t, n.cluster, yaml)
	if err := d.SetIPCache(st.IPCache("node-1")); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"a", "b", "c"} {
		p := n.pods[name]
		key := policy.EndpointKey{Namespace: "app", Name: name}
		es, _ := st.Endpoint(key)
		ident, _ := st.Identity(key)
		ep := Endpoint{Ifindex: p.Ifindex, Ifname: p.HostIfname, ID: uint32(i + 1), Identity: ident.ID, IPv4: p.IPv4, IPv6: p.IPv6,
			NetnsCookie: p.NetnsCookie}
		if err := d.UpsertEndpoint(ep, es); err != nil {
			t.Fatal(err)
		}
	}
}

// serve starts a TCP echo server and a UDP echo server on port in pod name.
func (n *trafficNode) serve(t *testing.T, name string, port int) {
	t.Helper()
	var tl net.Listener
	var ul net.PacketConn
	err := n.pods[name].Do(func() error {
		var err error
		if tl, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tl.Close(); ul.Close() })
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			k, addr, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			ul.WriteTo(buf[:k], addr)
		}
	}()
}

const probeTimeout = 700 * time.Millisecond

// tcpProbe opens a fresh connection from pod from to pod to and echoes one line.
func (n *trafficNode) tcpProbe(from, to string, port int) error {
	return n.tcpProbeAddr(from, n.pods[to].IPv4, port)
}

func (n *trafficNode) tcpProbeAddr(from string, to netip.Addr, port int) error {
	return n.tcpProbeTimeout(from, to, port, probeTimeout)
}

func (n *trafficNode) tcpProbeTimeout(from string, to netip.Addr, port int, timeout time.Duration) error {
	var c net.Conn
	err := n.pods[from].Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", net.JoinHostPort(to.String(), fmt.Sprint(port)), timeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c)
}

func echo(c net.Conn) error {
	c.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return fmt.Errorf("echo returned %q", line)
	}
	return nil
}

func (n *trafficNode) udpProbe(from, to string, port int) error {
	var c net.Conn
	err := n.pods[from].Do(func() error {
		var err error
		c, err = net.Dial("udp", net.JoinHostPort(n.pods[to].IPv4.String(), fmt.Sprint(port)))
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	_, err = c.Read(buf)
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// expect checks allowed (nil error) versus timed out, retrying once as the scenario runner does.
func expect(t *testing.T, what string, allowed bool, probe func() error) {
	t.Helper()
	err := probe()
	if (err == nil) != allowed {
		err = probe()
	}
	switch {
	case allowed && err != nil:
		t.Errorf("%s: want allowed, got %v", what, err)
	case !allowed && err == nil:
		t.Errorf("%s: want timed out, got through", what)
	case !allowed && !isTimeout(err):
		t.Errorf("%s: want a timeout, got %v", what, err)
	}
}

const trafficPolicyV1 = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "5353", protocol: UDP}]}]
`

const trafficPolicyV2 = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

func TestRealTraffic(t *testing.T) {
	for _, mode := range []struct {
		name   string
		legacy bool
	}{{"tcx", false}, {"tc", true}} {
		t.Run(mode.name, func(t *testing.T) { realTraffic(t, Options{ForceLegacyTC: mode.legacy}, mode.name) })
	}
}

func realTraffic(t *testing.T, opts Options, wantMode string) {
	n := newTrafficNode(t)
	d := openTest(t, opts)
	if d.Mode() != wantMode {
		t.Fatalf("attach mode %s, want %s", d.Mode(), wantMode)
	}
	n.serve(t, "a", 8080)
	n.serve(t, "a", 5353)
	n.apply(t, d, trafficPolicyV1)

	expect(t, "b -> a tcp/8080", true, func() error { return n.tcpProbe("b", "a", 8080) })
	expect(t, "c -> a tcp/8080", false, func() error { return n.tcpProbe("c", "a", 8080) })
	expect(t, "b -> a udp/5353", true, func() error { return n.udpProbe("b", "a", 5353) })
	expect(t, "c -> a udp/5353", false, func() error { return n.udpProbe("c", "a", 5353) })
	expect(t, "a -> b tcp/8080 (b has no policy, nothing listens: refused means it got there)", true, func() error {
		err := n.tcpProbe("a", "b", 8080)
		if err != nil && strings.Contains(err.Error(), "refused") {
			return nil // reached b: refused by its stack, not by policy
		}
		return err
	})

	// An open connection from b, then the policy changes: new connections follow the new policy
	// and the open one is cut.
	var open net.Conn
	if err := n.pods["b"].Do(func() error {
		var err error
		open, err = net.DialTimeout("tcp", net.JoinHostPort(n.pods["a"].IPv4.String(), "8080"), probeTimeout)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := echo(open); err != nil {
		t.Fatalf("open connection before the change: %v", err)
	}
	n.apply(t, d, trafficPolicyV2)
	expect(t, "after change: b -> a tcp/8080", false, func() error { return n.tcpProbe("b", "a", 8080) })
	expect(t, "after change: c -> a tcp/8080", true, func() error { return n.tcpProbe("c", "a", 8080) })
	if err := echo(open); err == nil {
		t.Errorf("open connection still works after its allow was revoked")
	}
	counters, _ := d.Counters()
	if counters[ReasonDropDefaultDeny].Packets == 0 || counters[ReasonForwardReply].Packets == 0 {
		t.Errorf("counters did not move: %v", counters)
	}
}

// TestSurvivesKillAndAdoptsOnRestart loads the datapath in a child process, kills it with
// SIGKILL, checks that enforcement is unchanged, then opens it again in this process and checks
// that the pinned state is adopted without changes.
func TestSurvivesKillAndAdoptsOnRestart(t *testing.T) {
	n := newTrafficNode(t)
	n.serve(t, "a", 8080)
	pinPath := filepath.Join(DefaultPinPath+"-test", fmt.Sprintf("restart-%d", os.Getpid()))
	os.RemoveAll(pinPath)
	t.Cleanup(func() { os.RemoveAll(pinPath) })

	cmd := exec.Command(os.Args[0])
	var pods []string
	for _, name := range []string{"a", "b", "c"} {
		p := n.pods[name]
		pods = append(pods, fmt.Sprintf("%s,%d,%s,%s,%s", name, p.Ifindex, p.HostIfname, p.IPv4, p.IPv6))
	}
	cmd.Env = append(os.Environ(), "NETPACT_HELPER=hold", "NETPACT_HELPER_PIN="+pinPath,
		"NETPACT_HELPER_PODS="+strings.Join(pods, ";"), "NETPACT_HELPER_POLICY="+trafficPolicyV1)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				return
			}
		}
		ready <- fmt.Errorf("helper exited before it was ready")
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("helper not ready")
	}
	expect(t, "helper running: b -> a", true, func() error { return n.tcpProbe("b", "a", 8080) })
	expect(t, "helper running: c -> a", false, func() error { return n.tcpProbe("c", "a", 8080) })
	linksBefore := pinnedLinks(t, filepath.Join(pinPath, "links"))
	if len(linksBefore) != 6 {
		t.Fatalf("the helper pinned %d links, want 6", len(linksBefore))
	}

	// Traffic through the kill and the restart: an established, allowed connection that echoes
	// all the time must never be cut, and new connections from c, which policy denies, must
	// never get through, not even for an instant.
	var open net.Conn
	if err := n.pods["b"].Do(func() (err error) {
		open, err = net.DialTimeout("tcp", net.JoinHostPort(n.pods["a"].IPv4.String(), "8080"), probeTimeout)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	stopLoop := make(chan struct{})
	loopDone := make(chan []string, 1)
	go func() {
		var bad []string
		echoes, attempts := 0, 0
		for {
			select {
			case <-stopLoop:
				if echoes == 0 || attempts == 0 {
					bad = append(bad, fmt.Sprintf("the loop ran %d echoes and %d denied attempts", echoes, attempts))
				}
				loopDone <- bad
				return
			default:
			}
			if err := echo(open); err != nil {
				bad = append(bad, fmt.Sprintf("the established b -> a connection was cut: %v", err))
				loopDone <- bad
				return
			}
			echoes++
			if err := n.tcpProbeTimeout("c", n.pods["a"].IPv4, 8080, 20*time.Millisecond); err == nil {
				bad = append(bad, "a new c -> a connection got through")
			}
			attempts++
		}
	}()

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	expect(t, "after kill -9: b -> a", true, func() error { return n.tcpProbe("b", "a", 8080) })
	expect(t, "after kill -9: c -> a", false, func() error { return n.tcpProbe("c", "a", 8080) })

	// Restart: adopt pins, swap programs on the pinned links, resync.
	d, err := Open(Options{PinPath: pinPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Teardown() })
	if got := len(d.attach.links); got != 6 {
		t.Errorf("adopted %d pinned links, want 6 (3 pods x 2 directions)", got)
	}
	before, rev := snapshotPolicy(t, d), d.cfg.PolicyRev
	n.apply(t, d, trafficPolicyV1)
	time.Sleep(200 * time.Millisecond) // the loop keeps going over the adoption and the first apply
	close(stopLoop)
	for _, msg := range <-loopDone {
		t.Error("through the restart: " + msg)
	}
	// The same links (no detach and attach again: no window without a program), each now
	// carrying this process's program for its direction.
	linksAfter := pinnedLinks(t, filepath.Join(pinPath, "links"))
	fromID, toID := progID(t, d.objs.TcFromPod), progID(t, d.objs.TcToPod)
	for name, before := range linksBefore {
		after, ok := linksAfter[name]
		want := fromID
		if strings.HasSuffix(name, suffixToPod) {
			want = toID
		}
		switch {
		case !ok:
			t.Errorf("link %s is gone after adoption", name)
		case after.link != before.link:
			t.Errorf("link %s was replaced (id %d -> %d): detached and attached again", name, before.link, after.link)
		case after.prog != want:
			t.Errorf("link %s carries program %d after adoption, want this process's %d (the dead process's was %d)", name, after.prog, want, before.prog)
		}
	}
	expect(t, "after restart: b -> a", true, func() error { return n.tcpProbe("b", "a", 8080) })
	expect(t, "after restart: c -> a", false, func() error { return n.tcpProbe("c", "a", 8080) })
	if after := snapshotPolicy(t, d); after != before {
		t.Errorf("applying the same policy after a restart changed the maps")
	}
	if d.cfg.PolicyRev != rev {
		t.Errorf("applying the same policy bumped the policy revision %d -> %d: every tracked flow would be checked again", rev, d.cfg.PolicyRev)
	}
	if fixed, err := d.Resync(); err != nil || len(fixed) != 0 {
		t.Errorf("resync after adoption fixed %v (err %v), want nothing", fixed, err)
	}
	// Drift: an entry removed behind netpact's back is repaired by resync.
	var k bpfPolicyKey
	var v bpfPolicyValue
	it := d.objs.Policy.Iterate()
	it.Next(&k, &v)
	d.objs.Policy.Delete(k)
	if fixed, err := d.Resync(); err != nil || len(fixed) != 1 {
		t.Errorf("resync repaired %v (err %v), want the one deleted entry", fixed, err)
	}
	if after := snapshotPolicy(t, d); after != before {
		t.Errorf("maps after repair differ from before")
	}
}

func snapshotPolicy(t testing.TB, d *Datapath) string {
	var k bpfPolicyKey
	var v bpfPolicyValue
	var lines []string
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		lines = append(lines, fmt.Sprintf("%+v=%+v", k, v))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(sortStrings(lines), "\n")
}

// pinnedLink is a pinned tcx link's id and the id of the program it carries.
type pinnedLink struct{ link, prog uint32 }

// pinnedLinks reads every link pinned in dir.
func pinnedLinks(t *testing.T, dir string) map[string]pinnedLink {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]pinnedLink{}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = pinnedLink{link: uint32(info.ID), prog: uint32(info.Program)}
	}
	return out
}

func progID(t *testing.T, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("the kernel gives no program id")
	}
	return uint32(id)
}

func TestMain(m *testing.M) {
	if os.Getenv("NETPACT_HELPER") == "hold" {
		holdDatapath()
		return
	}
	rc := m.Run()
	// Each test removes its own pin directory; the tests' common parent goes last (left in
	// place when another process's tests still pin there).
	_ = os.Remove(DefaultPinPath + "-test")
	os.Exit(rc)
}

// holdDatapath is the child process of TestSurvivesKillAndAdoptsOnRestart: it loads and
// programs the datapath, says "ready" and waits to be killed.
func holdDatapath() {
	t := &testing.T{}
	d, err := Open(Options{PinPath: os.Getenv("NETPACT_HELPER_PIN")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	n := &trafficNode{pods: map[string]*podnet.Pod{}, cluster: &policy.Cluster{Nodes: []policy.Node{{Name: "node-1"}}, Namespaces: []policy.Namespace{{Name: "app"}}}}
	for _, spec := range strings.Split(os.Getenv("NETPACT_HELPER_PODS"), ";") {
		f := strings.Split(spec, ",")
		var idx int
		fmt.Sscan(f[1], &idx)
		p := &podnet.Pod{Name: f[0], HostIfname: f[2], Ifindex: idx, IPv4: netip.MustParseAddr(f[3]), IPv6: netip.MustParseAddr(f[4])}
		n.pods[f[0]] = p
		n.cluster.Endpoints = append(n.cluster.Endpoints, policy.Endpoint{Namespace: "app", Name: f[0], Node: "node-1",
			Labels: map[string]string{"app": f[0]}, IPs: []netip.Addr{p.IPv4, p.IPv6}})
	}
	n.apply(t, d, os.Getenv("NETPACT_HELPER_POLICY"))
	if t.Failed() {
		os.Exit(1)
	}
	fmt.Println("ready")
	time.Sleep(time.Hour)
}

type (
	bpfPolicyKey   = bpf.TcPolicyKey
	bpfPolicyValue = bpf.TcPolicyValue
)

func sortStrings(s []string) []string { sort.Strings(s); return s }

func TestDenyResponseICMP(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{DenyResponseICMP: true})
	n.serve(t, "a", 8080)
	n.serve(t, "b", 8080)
	n.apply(t, d, trafficPolicyV1+`---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: c}}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
`)
	for _, tc := range []struct {
		what, from, to string
		v6             bool
	}{
		{"ingress drop at a", "c", "a", false}, // c's egress allows a; a's ingress drops c
		{"egress drop at c", "c", "b", false},  // c's egress drops towards b
		{"ipv6 ingress drop at a", "c", "a", true},
		{"ipv6 egress drop at c", "c", "b", true},
	} {
		// Linux reports ICMP "administratively prohibited" as EHOSTUNREACH for IPv4 and EACCES
		// for IPv6. An answer that arrives while connect() still holds the socket is kept as a
		// soft error until the SYN's retransmission (1 s) meets the next answer; a silent drop
		// would run into the 4 s dial timeout.
		start := time.Now()
		to, want := n.pods[tc.to].IPv4, syscall.EHOSTUNREACH
		if tc.v6 {
			to, want = n.pods[tc.to].IPv6, syscall.EACCES
		}
		err := n.tcpProbeTimeout(tc.from, to, 8080, 4*time.Second)
		took := time.Since(start)
		switch {
		case err == nil:
			t.Errorf("%s: connection went through", tc.what)
		case !errors.Is(err, want):
			t.Errorf("%s: want %v from the ICMP response, got %v after %s", tc.what, want, err, took)
		case took > 2500*time.Millisecond: // tells an answer (at once, or at the 1 s retransmission) from a silent drop (the 4 s dial timeout); not a speed claim
			t.Errorf("%s: the answer took %s", tc.what, took)
		}
	}
	expect(t, "b -> a still allowed", true, func() error { return n.tcpProbe("b", "a", 8080) })
}
