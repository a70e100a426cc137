package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// The node's own addresses (on lo), which a query leaves from when the server does not keep the
// pod's, and the mark of the upstream sockets.
var (
	nodeV4 = netip.MustParseAddr("10.250.255.1")
	nodeV6 = netip.MustParseAddr("fd00:250::ff:1")
)

const testMark = 0x2a

// node is the test's network namespace (TestMain gives the process one of its own) made into a
// node: a client pod and a DNS server pod in namespaces of their own, joined by veths as podnet
// wires pods, and a proxy that gets the pod's port-53 packets as the datapath hands them over.
// The datapath's bpf_sk_assign is stood in for by nftables TPROXY, which assigns the packet to
// the listener the same way, unchanged; the answers to the proxy's upstream sockets (addressed to
// the pod) are delivered to them by the socket match and a policy route, as the datapath does for
// the proxy's return traffic.
type node struct {
	pod, server *podnet.Pod
	dns         *testServer
	proxy       *Proxy
	ev          *events
}

// newNode builds the node; it and everything in it go when the test ends.
func newNode(t *testing.T, opts Options) *node {
	t.Helper()
	testenv.RequireRoot(t)
	if os.Getenv(netnsEnv) == "" {
		t.Fatal("the transparent tests run in the test's own network namespace (TestMain)")
	}
	testenv.RequireCommand(t, "nft", "nftables")
	testenv.RequireCommand(t, "ip", "iproute2")
	if err := podnet.PrepareHost(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"/proc/sys/net/ipv4/conf/all/rp_filter", "/proc/sys/net/ipv4/conf/default/rp_filter"} {
		if err := os.WriteFile(f, []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{nodeV4, nodeV6} {
		if err := netlink.AddrReplace(lo, &netlink.Addr{IPNet: podnet.HostPrefix(a), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatalf("node address %s: %v", a, err)
		}
	}
	// The host veths answer ARP for the pods' gateway (proxy ARP) only when the node has a route to
	// it through another interface: the host's default route on a real node.
	gw := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: podnet.HostPrefix(podnet.GatewayV4), Scope: netlink.SCOPE_HOST}
	if err := netlink.RouteReplace(gw); err != nil {
		t.Fatalf("route to the pods' gateway: %v", err)
	}
	n := &node{ev: &events{}}
	removeStaleNetns(t)
	prefix := fmt.Sprintf("netpact-dnsproxy-%d", os.Getpid())
	for _, p := range []struct {
		pod          **podnet.Pod
		name, ifname string
		v4, v6       netip.Addr
	}{
		{&n.pod, "client", "dnsp-client", clientV4, clientV6},
		{&n.server, "coredns", "dnsp-coredns", dnsV4, dnsV6},
	} {
		pod, err := podnet.CreatePod(p.name, prefix+"-"+p.name, p.ifname, p.v4, p.v6)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := pod.Delete(); err != nil {
				t.Errorf("delete pod %s: %v", pod.Name, err)
			}
		})
		*p.pod = pod
	}
	n.dns = startServer(t, n.server.Do, netip.AddrPortFrom(dnsV4, 53), netip.AddrPortFrom(dnsV6, 53))

	st := testState(t)
	opts.Mark = testMark
	opts.OnQuery = n.ev.add
	opts.Decide = func(src, dst netip.AddrPort, proto policy.Proto) (policy.Decision, bool) {
		return st.Decide(src.Addr(), dst.Addr(), proto, dst.Port()), true
	}
	p, err := Listen(0, opts)
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, p)
	n.proxy = p
	n.redirect(t)
	return n
}

// removeStaleNetns removes the pods' namespaces a test binary left when it died before its
// cleanups ran (a panic): those whose process is gone.
func removeStaleNetns(t *testing.T) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	stale := regexp.MustCompile(`^netpact-dnsproxy-(\d+)-`)
	for _, e := range entries {
		m := stale.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "delete", e.Name()).CombinedOutput(); err != nil {
			t.Logf("remove the stale namespace %s: %v: %s", e.Name(), err, out)
		}
	}
}

// redirect installs the TPROXY rules and the policy routes: the pod's packets to port 53 go to
// the proxy's listeners, and packets for a transparent socket of the node (the proxy's upstream
// sockets, bound to the pod's address) are delivered to it instead of being routed to the pod.
// The output chain counts the upstream packets that carry the proxy's mark.
func (n *node) redirect(t *testing.T) {
	t.Helper()
	var rules strings.Builder
	for _, f := range []struct{ family, listener string }{{"ip", "127.0.0.1"}, {"ip6", "[::1]"}} {
		fmt.Fprintf(&rules, `table %[1]s dnsproxytest {
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		iifname %[2]q meta l4proto { tcp, udp } th dport 53 tproxy to %[3]s:%[4]d meta mark set 1 accept
		meta l4proto { tcp, udp } socket transparent 1 meta mark set 1 accept
	}
	chain out {
		type filter hook output priority mangle; policy accept;
		meta mark %[5]d th dport 53 counter
	}
}
`, f.family, n.pod.HostIfname, f.listener, n.proxy.Port(), testMark)
	}
	run(t, strings.NewReader(rules.String()), "nft", "-f", "-")
	t.Cleanup(func() {
		exec.Command("nft", "delete", "table", "ip", "dnsproxytest").Run()
		exec.Command("nft", "delete", "table", "ip6", "dnsproxytest").Run()
	})
	for _, v := range []string{"-4", "-6"} {
		run(t, nil, "ip", v, "rule", "add", "fwmark", "1", "lookup", "100")
		t.Cleanup(func() { exec.Command("ip", v, "rule", "del", "fwmark", "1", "lookup", "100").Run() })
		dst := "0.0.0.0/0"
		if v == "-6" {
			dst = "::/0"
		}
		run(t, nil, "ip", v, "route", "replace", "local", dst, "dev", "lo", "table", "100")
	}
}

func run(t *testing.T, stdin *strings.Reader, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// marked is the number of upstream packets the proxy's mark was on.
func (n *node) marked(t *testing.T) int {
	t.Helper()
	total := 0
	for _, family := range []string{"ip", "ip6"} {
		out, err := exec.Command("nft", "list", "chain", family, "dnsproxytest", "out").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v: %s", err, out)
		}
		m := regexp.MustCompile(`counter packets (\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no counter in %s", out)
		}
		c, _ := strconv.Atoi(string(m[1]))
		total += c
	}
	return total
}

// podAsk sends a query from the pod to the server it knows (the proxy is invisible to it): a
// socket connected to the server, which takes answers from the server's address only.
func (n *node) podAsk(t *testing.T, network string, server netip.Addr, name string, qtype uint16) (*dns.Msg, netip.AddrPort) {
	t.Helper()
	var r *dns.Msg
	var local netip.AddrPort
	err := n.pod.Do(func() error {
		c, err := net.DialTimeout(network, netip.AddrPortFrom(server, 53).String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		local = netip.MustParseAddrPort(c.LocalAddr().String())
		co := &dns.Conn{Conn: c, UDPSize: 65535}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if err := co.WriteMsg(new(dns.Msg).SetQuestion(name, qtype)); err != nil {
			return err
		}
		r, err = co.ReadMsg()
		return err
	})
	if err != nil {
		n.ev.mu.Lock()
		reported := formatEvents(n.ev.qs)
		n.ev.mu.Unlock()
		t.Fatalf("pod asks %s over %s for %s: %v\nthe proxy reported:\n%sthe server saw %+v", server, network, name, err, reported, n.dns.queries(name))
	}
	return r, local
}

// whoami is the source address the server saw, from its TXT answer.
func whoami(t *testing.T, r *dns.Msg) netip.AddrPort {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("whoami: %v", r)
	}
	return netip.MustParseAddrPort(r.Answer[0].(*dns.TXT).Txt[0])
}

// TestTransparent: a pod's queries to its server, over UDP and TCP, IPv4 and IPv6, reach the
// proxy unchanged; the answers come back from the server's address (a connected UDP socket would
// take nothing else), even while a socket of the node holds that address and port (as
// node-local-dns does); the server sees the pod's own address (and over UDP its port), the
// upstream packets carry the proxy's mark, and the events name the original addresses. A
// denied name gets REFUSED from the server's address too.
func TestTransparent(t *testing.T) {
	n := newNode(t, Options{})
	for _, a := range []netip.Addr{dnsV4, dnsV6} {
		holdPort(t, netip.AddrPortFrom(a, 53))
	}
	for _, tc := range []struct {
		network        string
		client, server netip.Addr
	}{
		{"udp", clientV4, dnsV4}, {"tcp", clientV4, dnsV4}, {"udp", clientV6, dnsV6}, {"tcp", clientV6, dnsV6},
	} {
		r, local := n.podAsk(t, tc.network, tc.server, nameWhoami, dns.TypeTXT)
		from := whoami(t, r)
		if from.Addr() != tc.client || (tc.network == "udp" && from != local) {
			t.Errorf("%s from %s: the server saw %s, want the pod's address (and, over UDP, port)", tc.network, local, from)
		}
		e := n.ev.wait(t, "for "+tc.network+" "+local.String(), func(q Query) bool { return q.Src == local })
		if e.Dst != netip.AddrPortFrom(tc.server, 53) || !strings.EqualFold(e.Proto.String(), tc.network) || e.Rcode != dns.RcodeSuccess {
			t.Errorf("event %+v: want %s to %s:53 answered", e, tc.network, tc.server)
		}
		r, _ = n.podAsk(t, tc.network, tc.server, nameDenied, dns.TypeA)
		if r.Rcode != dns.RcodeRefused {
			t.Errorf("%s %s: %v, want REFUSED", tc.network, nameDenied, r)
		}
	}
	if got := n.marked(t); got < 4 {
		t.Errorf("%d upstream packets carried the mark %#x, want at least 4 (one query each)", got, testMark)
	}
}

// holdPort binds a UDP socket of the node to addr (not the node's own: IP_TRANSPARENT) without
// SO_REUSEADDR, until the test ends.
func holdPort(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	lc := net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error { return tproxy.Control(network, c, 0) }}
	pc, err := lc.ListenPacket(context.Background(), "udp", addr.String())
	if err != nil {
		t.Fatalf("hold %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
}

// TestTransparentLargeAnswer: an answer larger than the link's MTU reaches the pod over UDP
// (fragmented), IPv4 and IPv6.
func TestTransparentLargeAnswer(t *testing.T) {
	n := newNode(t, Options{})
	for _, server := range []netip.Addr{dnsV4, dnsV6} {
		var r *dns.Msg
		err := n.pod.Do(func() error {
			var err error
			_, r, err = ask("udp", netip.AddrPortFrom(server, 53).String(), nameMany, dns.TypeA, 4096)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", server, err)
		}
		r.Compress = true // as it came
		if r.Truncated || len(r.Answer) != manyRecords || r.Len() <= 1500 {
			t.Errorf("%s: truncated %v, %d records, %d bytes: want all %d records, more than the MTU", server, r.Truncated, len(r.Answer), r.Len(), manyRecords)
		}
	}
}

// TestTransparentNodeSource: a server that does not keep the pod's address (outside the
// cluster) gets the query from the node's.
func TestTransparentNodeSource(t *testing.T) {
	n := newNode(t, Options{KeepSource: func(netip.Addr) bool { return false }})
	for _, tc := range []struct {
		network      string
		server, node netip.Addr
	}{{"udp", dnsV4, nodeV4}, {"tcp", dnsV4, nodeV4}, {"udp", dnsV6, nodeV6}} {
		r, _ := n.podAsk(t, tc.network, tc.server, nameWhoami, dns.TypeTXT)
		if from := whoami(t, r); from.Addr() != tc.node {
			t.Errorf("%s: the server saw %s, want the node's %s", tc.network, from, tc.node)
		}
	}
}

// TestTransparentTruncatedThenTCP: a truncated UDP answer reaches the pod as it is, and its retry
// over TCP goes through the TCP listener to the server over TCP, whole.
func TestTransparentTruncatedThenTCP(t *testing.T) {
	n := newNode(t, Options{})
	r, _ := n.podAsk(t, "udp", dnsV4, nameMany, dns.TypeA)
	if !r.Truncated || len(r.Answer) >= manyRecords {
		t.Fatalf("over UDP: truncated %v with %d records, want the server's truncated answer", r.Truncated, len(r.Answer))
	}
	r, _ = n.podAsk(t, "tcp", dnsV4, nameMany, dns.TypeA)
	if r.Truncated || len(r.Answer) != manyRecords {
		t.Fatalf("over TCP: truncated %v with %d records, want all %d", r.Truncated, len(r.Answer), manyRecords)
	}
	if got := n.dns.queries(nameMany); len(got) != 2 || got[0].tcp || !got[1].tcp || got[1].from.Addr() != clientV4 {
		t.Errorf("the server saw %+v: want a UDP query, then a TCP one from the pod", got)
	}
}

// TestTransparentParallelFromOnePort: musl's A and AAAA at once from one pod port go upstream
// from that very port through one socket (two sockets bound to it would split the answers), and
// each comes back to the pod from the server.
func TestTransparentParallelFromOnePort(t *testing.T) {
	n := newNode(t, Options{})
	var c net.Conn
	err := n.pod.Do(func() error {
		var err error
		c, err = net.Dial("udp", netip.AddrPortFrom(dnsV4, 53).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &dns.Conn{Conn: c, UDPSize: 65535}
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		if err := co.WriteMsg(new(dns.Msg).SetQuestion(namePair, qt)); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	got := map[uint16]bool{}
	for range 2 {
		r, err := co.ReadMsg()
		if err != nil {
			t.Fatalf("answers so far %v: %v", got, err)
		}
		if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != r.Question[0].Qtype {
			t.Errorf("answer %v", r)
		}
		got[r.Question[0].Qtype] = true
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	for _, s := range n.dns.queries(namePair) {
		if s.from != local {
			t.Errorf("the server saw a query from %s, want the pod's %s", s.from, local)
		}
	}
}
