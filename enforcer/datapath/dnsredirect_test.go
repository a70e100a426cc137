package datapath

// The DNS redirect on real traffic: a pod's queries (UDP and TCP) handed to the node's DNS proxy,
// and the answers to the proxy's upstream queries handed back to it, from a server pod of this
// node (its tc_from_pod) and of another node (the uplink's tc_from_uplink). A minimal
// transparent forwarder stands in for the proxy's transport (enforcer/dnsproxy): what it does
// with sockets is what the proxy has to do.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// dnsPolicy sends pod a's DNS to b (this node) and r (another node) through the DNS proxy.
const dnsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}, {matchLabels: {app: r}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns: [{matchPattern: "*"}]
`

// lateQuery starts a query whose upstream socket the forwarder closes before the server answers.
const lateQuery = "late:"

// TestDNSRedirect: pod a's DNS queries to b (a pod of this node) and r (a pod of another node,
// behind the uplink) reach the server through the forwarder, over UDP and TCP, IPv4 and IPv6, and
// the answers come back through it; with no proxy port or nothing listening on it, a query is
// dropped; an answer to an upstream socket the forwarder closed never reaches a, and neither does
// a datagram for a's flow that a node process sends without the proxy's mark.
func TestDNSRedirect(t *testing.T) {
	n := newTrafficNode(t)
	g := &dnsRig{n: n, remote: n.addRemotePod(t, "r", 8), d: openTest(t, Options{})}
	routeToProxy(t)
	n.apply(t, g.d, dnsPolicy)
	if err := g.d.AttachUplink(g.remote.HostIfname); err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			testenv.Missing(t, "tcx", "Linux 6.6 or later")
		}
		t.Fatal(err)
	}
	g.fwd = startDNSForwarder(t, g.d.ProxyMark())
	g.servers = map[string]*dnsServer{"b": serveDNS(t, n.pods["b"], g.fwd.closed), "r": serveDNS(t, g.remote, g.fwd.closed)}

	g.failsClosed(t)
	// As the node will do for the DNS proxy: its TCP listeners for the TIME_WAIT path, its port.
	if err := g.d.SetProxyListeners(ParserDNS, g.fwd.tcp); err != nil {
		t.Fatal(err)
	}
	if err := g.d.SetProxyPort(ParserDNS, g.fwd.port); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, srv := range []string{"b", "r"} {
			t.Run(fam+"/"+srv, func(t *testing.T) { g.throughForwarder(t, g.server(srv, fam == "ipv6"), srv) })
		}
	}
	for _, err := range g.fwd.errors() {
		t.Errorf("forwarder: %v", err)
	}
}

// dnsRig is TestDNSRedirect's node: the client a, the servers b (this node) and r (another
// node), and the forwarder standing in for the DNS proxy.
type dnsRig struct {
	n       *trafficNode
	remote  *podnet.Pod
	d       *Datapath
	fwd     *dnsForwarder
	servers map[string]*dnsServer
}

// server is the address and port 53 of server b or r.
func (g *dnsRig) server(name string, v6 bool) netip.AddrPort {
	p := g.remote
	if name == "b" {
		p = g.n.pods["b"]
	}
	if v6 {
		return netip.AddrPortFrom(p.IPv6, 53)
	}
	return netip.AddrPortFrom(p.IPv4, 53)
}

// failsClosed: with no port written, then a port nothing listens on (nothing listens on 1), a
// query is dropped, with the reason said, and the server sees none.
func (g *dnsRig) failsClosed(t *testing.T) {
	for _, c := range []struct {
		port   uint16
		reason Reason
	}{{0, ReasonDropNoProxy}, {1, ReasonDropProxyDown}} {
		if err := g.d.SetProxyPort(ParserDNS, c.port); err != nil {
			t.Fatal(err)
		}
		for _, v6 := range []bool{false, true} {
			dst := g.server("b", v6)
			before := count(t, g.d, c.reason)
			if ans, err := g.n.udpQuery("a", dst, "unproxied"); err == nil || !isTimeout(err) {
				t.Errorf("query to %s with proxy port %d: got %q, %v; want no answer", dst, c.port, ans, err)
			}
			if !waitCount(t, g.d, c.reason, before+1) {
				t.Errorf("query to %s with proxy port %d: not counted as %q", dst, c.port, c.reason)
			}
		}
	}
	if got := g.servers["b"].answered.Load(); got != 0 {
		t.Errorf("the server answered %d queries that no proxy took", got)
	}
}

// throughForwarder: on one socket of a connected to server srv at dst, a query is answered
// through the forwarder; a datagram from dst that a node process spoofs without the proxy's
// mark is dropped (and with the mark passes: the mark is what decides); an answer to an upstream
// socket the forwarder closed first is dropped. TCP to port 53 goes through the forwarder too.
func (g *dnsRig) throughForwarder(t *testing.T, dst netip.AddrPort, srv string) {
	c, err := g.n.dialUDP("a", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pod := c.LocalAddr().(*net.UDPAddr).AddrPort()

	q := fmt.Sprintf("query %s", dst)
	if ans, err := query(c, q); err != nil || ans != q {
		t.Fatalf("query through the forwarder: got %q, %v; want %q", ans, err, q)
	}
	if got, ok := g.fwd.forwarded(q); !ok || got.src != pod || got.dst != dst {
		t.Errorf("the forwarder saw %+v (seen: %v), want from %s to %s", got, ok, pod, dst)
	}

	before := count(t, g.d, ReasonDropProxyBypass)
	if err := sendFrom(dst, pod, 0, []byte("spoofed")); err != nil {
		t.Fatal(err)
	}
	if ans, err := read(c); err == nil || !isTimeout(err) {
		t.Errorf("an unmarked datagram from %s: got %q, %v; want dropped", dst, ans, err)
	}
	if !waitCount(t, g.d, ReasonDropProxyBypass, before+1) {
		t.Errorf("an unmarked datagram from %s: not counted as %q", dst, ReasonDropProxyBypass)
	}
	if err := sendFrom(dst, pod, g.d.ProxyMark(), []byte("marked")); err != nil {
		t.Fatal(err)
	}
	if ans, err := read(c); err != nil || ans != "marked" {
		t.Errorf("a datagram with the proxy's mark: got %q, %v", ans, err)
	}

	before, answered := count(t, g.d, ReasonDropProxyGone), g.servers[srv].answered.Load()
	if ans, err := query(c, lateQuery+q); err == nil || !isTimeout(err) {
		t.Errorf("an answer to a closed upstream socket: got %q, %v; want none", ans, err)
	}
	if got := g.servers[srv].answered.Load(); got != answered+1 {
		t.Errorf("the server answered %d queries, want %d: the test did not run", got, answered+1)
	}
	if !waitCount(t, g.d, ReasonDropProxyGone, before+1) {
		t.Errorf("an answer to a closed upstream socket: not counted as %q", ReasonDropProxyGone)
	}

	accepted := g.fwd.accepted.Load()
	expect(t, "tcp/53 through the forwarder", true, func() error { return g.n.tcpProbeAddr("a", dst.Addr(), 53) })
	if g.fwd.accepted.Load() == accepted {
		t.Errorf("tcp/53 got through without the forwarder")
	}
}

// addRemotePod adds a pod of another node (node-2) behind a veth of its own: a namespace routed
// like a pod, which this node's datapath does not program; its host veth stands in for the
// node's uplink.
func (n *trafficNode) addRemotePod(t *testing.T, name string, i int) *podnet.Pod {
	t.Helper()
	p := createTestPod(t, name, i)
	n.cluster.Nodes = append(n.cluster.Nodes, policy.Node{Name: "node-2"})
	n.cluster.Endpoints = append(n.cluster.Endpoints, policy.Endpoint{Namespace: "app", Name: name, Node: "node-2",
		Labels: map[string]string{"app": name}, IPs: []netip.Addr{p.IPv4, p.IPv6}})
	return p
}

// routeToProxy delivers what the datapath marks for the proxy to the node's sockets, in a
// routing table of this test process.
func routeToProxy(t *testing.T) {
	t.Helper()
	rt := proxy.Routes{Table: 20000 + os.Getpid()%10000, Priority: 9}
	if err := rt.Ensure(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rt.Remove(); err != nil {
			t.Error(err)
		}
	})
}

func count(t testing.TB, d *Datapath, r Reason) uint64 {
	t.Helper()
	cs, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return cs[r].Packets
}

// waitCount waits for reason r's counter to reach want: a server answers on its own time.
func waitCount(t testing.TB, d *Datapath, r Reason, want uint64) bool {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if count(t, d, r) >= want {
			return true
		}
	}
	return false
}

// dialUDP connects a UDP socket of pod from to dst, as resolvers do.
func (n *trafficNode) dialUDP(from string, dst netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := n.pods[from].Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	return c, err
}

// udpQuery sends q from a fresh socket of pod from and waits for the answer.
func (n *trafficNode) udpQuery(from string, dst netip.AddrPort, q string) (string, error) {
	c, err := n.dialUDP(from, dst)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return query(c, q)
}

func query(c *net.UDPConn, q string) (string, error) {
	if _, err := c.Write([]byte(q)); err != nil {
		return "", err
	}
	return read(c)
}

func read(c *net.UDPConn) (string, error) {
	c.SetReadDeadline(time.Now().Add(probeTimeout))
	buf := make([]byte, 1500)
	k, err := c.Read(buf)
	return string(buf[:k]), err
}

// dnsServer answers each datagram to port 53 of a pod with its own bytes (a query starting
// lateQuery only once the forwarder closed the upstream socket it came from), and echoes TCP.
type dnsServer struct {
	answered atomic.Int32
}

func serveDNS(t *testing.T, p *podnet.Pod, closed <-chan struct{}) *dnsServer {
	t.Helper()
	var uc net.PacketConn
	var tl net.Listener
	if err := p.Do(func() (err error) {
		if uc, err = net.ListenPacket("udp", ":53"); err != nil {
			return err
		}
		tl, err = net.Listen("tcp", ":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close(); tl.Close() })
	s := &dnsServer{}
	go func() {
		for {
			buf := make([]byte, 1500)
			k, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			go func() {
				if strings.HasPrefix(string(buf[:k]), lateQuery) {
					select {
					case <-closed:
					case <-time.After(2 * time.Second):
						return
					}
				}
				if _, err := uc.WriteTo(buf[:k], from); err == nil {
					s.answered.Add(1)
				}
			}()
		}
	}()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return s
}

// dnsForwarder stands in for the DNS proxy's transport, nothing more. It listens on UDP and TCP
// 127.0.0.1:port and [::1]:port (IP_TRANSPARENT; on UDP IP_RECVORIGDSTADDR: the datapath hands it
// a pod's datagram unchanged, still addressed to the server). Each datagram goes on from the
// pod's own address and port (a transparent socket bound to them, SO_REUSEADDR, SO_MARK = the
// datapath's ProxyMark, connected to the server), and the answer goes back to the pod from the
// server's address and port (sendFrom). A TCP connection is spliced to one from the pod's address.
type dnsForwarder struct {
	port     uint16
	mark     uint32
	tcp      []net.Listener
	closed   chan struct{} // a lateQuery's upstream socket was closed
	accepted atomic.Int32  // TCP connections

	mu   sync.Mutex
	seen map[string]forwardedQuery
	errs []error
}

type forwardedQuery struct{ src, dst netip.AddrPort }

func startDNSForwarder(t *testing.T, mark uint32) *dnsForwarder {
	t.Helper()
	f := &dnsForwarder{mark: mark, closed: make(chan struct{}), seen: map[string]forwardedQuery{}}
	var udp []*net.UDPConn
	var tcp []net.Listener
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if udp, tcp, err = listenForwarder(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	f.port, f.tcp = uint16(udp[0].LocalAddr().(*net.UDPAddr).Port), tcp
	var wg sync.WaitGroup
	for _, c := range udp {
		wg.Go(func() { f.serveUDP(c) })
	}
	for _, l := range tcp {
		wg.Go(func() { f.serveTCP(l) })
	}
	t.Cleanup(func() {
		for _, c := range udp {
			c.Close()
		}
		for _, l := range tcp {
			l.Close()
		}
		wg.Wait()
	})
	return f
}

// listenForwarder listens on one port free on UDP and TCP, 127.0.0.1 and ::1.
func listenForwarder() (udp []*net.UDPConn, tcp []net.Listener, err error) {
	defer func() {
		if err != nil {
			for _, c := range udp {
				c.Close()
			}
			for _, l := range tcp {
				l.Close()
			}
		}
	}()
	ulc := net.ListenConfig{Control: transparent(0, false, true)}
	tlc := net.ListenConfig{Control: transparent(0, false, false)}
	tlc.SetMultipathTCP(false) // the datapath's listener lookup takes plain TCP sockets
	port := "0"
	for _, host := range []string{"127.0.0.1", "::1"} {
		pc, err := ulc.ListenPacket(context.Background(), "udp", net.JoinHostPort(host, port))
		if err != nil {
			return udp, tcp, err
		}
		udp = append(udp, pc.(*net.UDPConn))
		port = fmt.Sprint(pc.LocalAddr().(*net.UDPAddr).Port)
		l, err := tlc.Listen(context.Background(), "tcp", net.JoinHostPort(host, port))
		if err != nil {
			return udp, tcp, err
		}
		tcp = append(tcp, l)
	}
	return udp, tcp, nil
}

// transparent sets IP_TRANSPARENT (IPV6_TRANSPARENT), and SO_MARK (when mark is not 0),
// SO_REUSEADDR and IP_RECVORIGDSTADDR (IPV6_RECVORIGDSTADDR) as asked.
func transparent(mark uint32, reuse, origDst bool) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		level, transparent, recvOrigDst := unix.SOL_IP, unix.IP_TRANSPARENT, unix.IP_RECVORIGDSTADDR
		if strings.HasSuffix(network, "6") {
			level, transparent, recvOrigDst = unix.SOL_IPV6, unix.IPV6_TRANSPARENT, unix.IPV6_RECVORIGDSTADDR
		}
		opts := [][3]int{{level, transparent, 1}}
		if mark != 0 {
			opts = append(opts, [3]int{unix.SOL_SOCKET, unix.SO_MARK, int(mark)})
		}
		if reuse {
			opts = append(opts, [3]int{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1})
		}
		if origDst {
			opts = append(opts, [3]int{level, recvOrigDst, 1})
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range opts {
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), o[0], o[1], o[2])
				}
			}
		})
		return errors.Join(err, serr)
	}
}

func (f *dnsForwarder) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, err)
}

func (f *dnsForwarder) errors() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.errs
}

// forwarded is what the forwarder saw of query q: its source and original destination.
func (f *dnsForwarder) forwarded(q string) (forwardedQuery, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fq, ok := f.seen[q]
	return fq, ok
}

func (f *dnsForwarder) serveUDP(c *net.UDPConn) {
	buf, oob := make([]byte, 1500), make([]byte, 128)
	for {
		k, oobn, _, src, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			return
		}
		dst, err := origDst(oob[:oobn])
		if err != nil {
			f.fail(fmt.Errorf("datagram from %s: %w", src, err))
			continue
		}
		q := string(buf[:k])
		f.mu.Lock()
		f.seen[q] = forwardedQuery{src: src, dst: dst}
		f.mu.Unlock()
		go f.forward(q, src, dst)
	}
}

// origDst reads the destination a datagram had before the datapath handed it over.
func origDst(oob []byte) (netip.AddrPort, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, err
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8: // sockaddr_in
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), binary.BigEndian.Uint16(m.Data[2:4])), nil
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= 24: // sockaddr_in6
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[8:24])), binary.BigEndian.Uint16(m.Data[2:4])), nil
		}
	}
	return netip.AddrPort{}, errors.New("no original destination (IP_RECVORIGDSTADDR)")
}

// forward sends q to dst from the pod's src and relays the answer.
func (f *dnsForwarder) forward(q string, src, dst netip.AddrPort) {
	dialer := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(src), Control: transparent(f.mark, true, false)}
	up, err := dialer.Dial("udp", dst.String())
	if err != nil {
		f.fail(fmt.Errorf("upstream socket from %s to %s: %w", src, dst, err))
		return
	}
	_, err = up.Write([]byte(q))
	if strings.HasPrefix(q, lateQuery) {
		up.Close()
		select {
		case f.closed <- struct{}{}:
		case <-time.After(2 * time.Second):
		}
		return
	}
	defer up.Close()
	if err != nil {
		f.fail(fmt.Errorf("query %s to %s: %w", src, dst, err))
		return
	}
	up.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	k, err := up.Read(buf)
	if err != nil {
		f.fail(fmt.Errorf("answer from %s to %s: %w", dst, src, err))
		return
	}
	if err := sendFrom(dst, src, f.mark, buf[:k]); err != nil {
		f.fail(err)
	}
}

// sendFrom sends b to a pod from the server's address and port, as the DNS proxy answers: from a
// socket bound to them (IP_TRANSPARENT, SO_REUSEADDR) with SO_MARK = mark. IP_PKTINFO cannot do
// it: it sets the source address, not the port, and the pod's socket is connected to the
// server's port 53.
func sendFrom(from, to netip.AddrPort, mark uint32, b []byte) error {
	lc := net.ListenConfig{Control: transparent(mark, true, false)}
	c, err := lc.ListenPacket(context.Background(), "udp", from.String())
	if err != nil {
		return fmt.Errorf("socket from %s: %w", from, err)
	}
	defer c.Close()
	if _, err := c.WriteTo(b, net.UDPAddrFromAddrPort(to)); err != nil {
		return fmt.Errorf("send from %s to %s: %w", from, to, err)
	}
	return nil
}

// serveTCP splices each connection the datapath hands over to one from the pod's address (port
// chosen by the kernel) to its original destination (the accepted socket's local address).
func (f *dnsForwarder) serveTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		go func() {
			defer c.Close()
			src, dst := c.RemoteAddr().(*net.TCPAddr), c.LocalAddr().(*net.TCPAddr)
			dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.IP}, Control: transparent(f.mark, false, false), Timeout: 2 * time.Second}
			up, err := dialer.Dial("tcp", dst.String())
			if err != nil {
				f.fail(fmt.Errorf("upstream connection from %s to %s: %w", src.IP, dst, err))
				return
			}
			defer up.Close()
			go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
			io.Copy(c, up)
		}()
	}
}
