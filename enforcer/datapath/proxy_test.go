package datapath

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

const l7Policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET}]
`

// TestEndpointAddrsFollowEndpoints: endpoint_addrs holds each endpoint's addresses, and a
// restarted datapath that adopts the pins deletes those of an endpoint it removes (they come from
// the adopted endpoint entries, not from memory of the process that wrote them). Only a pod with
// a proxy entry carries the L7 flags that turn on the redirect's lookups.
func TestEndpointAddrsFollowEndpoints(t *testing.T) {
	n := newTrafficNode(t)
	pin := filepath.Join(DefaultPinPath+"-test", fmt.Sprintf("addrs-%d", os.Getpid()))
	os.RemoveAll(pin)
	d, err := Open(Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	n.apply(t, d, l7Policy)
	a := n.pods["a"]
	lookup := func(d *Datapath, name string) (uint32, bool) {
		p := n.pods[name]
		var ifindex uint32
		err := d.objs.EndpointAddrs.Lookup(bpf.TcEndpointAddrKey{Family: familyV4, Addr: addr16(p.IPv4)}, &ifindex)
		return ifindex, err == nil
	}
	for _, name := range []string{"a", "b", "c"} {
		if got, ok := lookup(d, name); !ok || got != uint32(n.pods[name].Ifindex) {
			t.Errorf("endpoint_addrs[%s] = %d (%v), want %d", name, got, ok, n.pods[name].Ifindex)
		}
	}
	flags := func(d *Datapath, name string) uint32 {
		var info bpf.TcEndpointInfo
		if err := d.objs.Endpoints.Lookup(uint32(n.pods[name].Ifindex), &info); err != nil {
			t.Fatal(err)
		}
		return info.Flags
	}
	if f := flags(d, "a"); f&flagHasL7 == 0 || f&flagHasL7Ingress == 0 {
		t.Errorf("pod a (an ingress HTTP rule) has flags %#x, want the L7 and L7-ingress flags", f)
	}
	if f := flags(d, "b"); f&(flagHasL7|flagHasL7Ingress) != 0 {
		t.Errorf("pod b (no L7 rule) has flags %#x, want no L7 flag", f)
	}
	d.Close()

	d2, err := Open(Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Teardown() })
	if err := d2.RemoveEndpoint(Endpoint{Ifindex: a.Ifindex, Ifname: a.HostIfname, ID: 1}); err != nil {
		t.Fatal(err)
	}
	if _, ok := lookup(d2, "a"); ok {
		t.Error("a removed endpoint's address is still in endpoint_addrs after a restart")
	}
	if _, ok := lookup(d2, "b"); !ok {
		t.Error("another endpoint's address went with it")
	}
}

const uplinkPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET}]
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
`

// TestUplinkHandsOnlyL7FlowsToTheProxy runs tc_from_uplink on frames from outside the node: it
// passes untouched everything but a new TCP flow that a local pod's ingress L7 rule governs (the
// pod's own program judges the rest), and fails closed on those when no proxy or no listener is
// there, with the reason counted.
func TestUplinkHandsOnlyL7FlowsToTheProxy(t *testing.T) {
	d, _, _ := unitSetup(t, uplinkPolicy)
	uplink := testLink(t, fmt.Sprintf("npu%d", os.Getpid()%100000))
	count := func(r Reason) uint64 {
		cs, err := d.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return cs[r].Packets
	}
	world := "192.0.2.7"
	for _, c := range []struct {
		name string
		p    pkt
		want uint32
	}{
		{"UDP", pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoUDP, sport: 5000, dport: 8080}, tcOK},
		{"TCP SYN to a port without L7 rules", pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 5000, dport: 9090, syn: true}, tcOK},
		{"TCP SYN to an address of no local pod", pkt{src: world, dst: "10.0.0.99", proto: policy.ProtoTCP, sport: 5000, dport: 8080, syn: true}, tcOK},
		{"TCP ACK of no flow of the proxy (tc_to_pod drops it)", pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 5000, dport: 8080, ack: true}, tcOK},
	} {
		if got := runProg(t, d.objs.TcFromUplink, uplink, c.p.build(t)); got != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, got, c.want)
		}
	}
	syn := pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 5001, dport: 8080, syn: true}
	before := count(ReasonDropNoProxy)
	if got := runProg(t, d.objs.TcFromUplink, uplink, syn.build(t)); got != tcShot {
		t.Errorf("SYN to the L7 port with no proxy: verdict %d, want dropped", got)
	}
	if count(ReasonDropNoProxy) != before+1 {
		t.Errorf("SYN to the L7 port with no proxy: not counted as %q", ReasonDropNoProxy)
	}
	// A port but no listener on it (nothing listens on 127.0.0.1:1 here).
	if err := d.SetProxyPort(ParserHTTP, 1); err != nil {
		t.Fatal(err)
	}
	before = count(ReasonDropProxyDown)
	if got := runProg(t, d.objs.TcFromUplink, uplink, syn.build(t)); got != tcShot {
		t.Errorf("SYN to the L7 port with the proxy's listener down: verdict %d, want dropped", got)
	}
	if count(ReasonDropProxyDown) != before+1 {
		t.Errorf("SYN to the L7 port with the proxy's listener down: not counted as %q", ReasonDropProxyDown)
	}
}

// skLookupCtx is struct bpf_sk_lookup as BPF_PROG_TEST_RUN takes it.
type skLookupCtx struct {
	Cookie     uint64
	Family     uint32
	Protocol   uint32
	RemoteIP4  [4]byte
	RemoteIP6  [16]byte
	RemotePort uint16 // network byte order
	_          uint16
	LocalIP4   [4]byte
	LocalIP6   [16]byte
	LocalPort  uint32
	Ifindex    uint32
	_          uint32
}

// TestProxySynSharePerPod: a SYN tc hands to the proxy past a TIME_WAIT socket leaves an entry
// for proxy_lookup; the entries were one LRU for the node, so another pod's SYNs (or other nodes')
// could evict a pod's before the kernel's lookup took it, and its connection went unjudged to no
// listener. Each pod now has its own share: a's entry outlives 10,000 of b's and of other nodes'.
// proxy_lookup, run on a's tuple, still finds it (and, with no proxy listening here, drops the
// SYN: fail closed), where a missing entry would pass it on.
func TestProxySynSharePerPod(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	n.apply(t, d, "")
	if err := d.attachLookup(); err != nil {
		t.Fatal(err)
	}
	key := proxySynKey
	value := func() []byte { return proxySynValue(ParserHTTP) }
	share := func(pod string) *ebpf.Map {
		var id ebpf.MapID
		if err := d.objs.ProxySynsPod.Lookup(uint32(n.pods[pod].Ifindex), &id); err != nil {
			t.Fatalf("no proxy SYN share for %s: %v", pod, err)
		}
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	a, b, c := n.pods["a"], n.pods["b"], n.pods["c"]
	// a's SYN to c:8080 from port 40000, as tc would write it: into a's share.
	if err := share("a").Put(key(a.IPv4, 40000, c.IPv4, 8080), value()); err != nil {
		t.Fatal(err)
	}
	bShare := share("b")
	for i := range 10000 {
		port := uint16(20000 + i%40000)
		if err := bShare.Put(key(b.IPv4, port, c.IPv4, uint16(8080+i/40000)), value()); err != nil {
			t.Fatal(err)
		}
		other := netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 250)})
		if err := d.objs.ProxySyns.Put(key(other, port, c.IPv4, 8080), value()); err != nil {
			t.Fatal(err)
		}
	}
	run := func(src netip.Addr, sport uint16) uint32 {
		ret, _ := runLookup(t, d, src, sport, c.IPv4, 8080)
		return ret
	}
	if ret := run(a.IPv4, 40000); ret != 0 {
		t.Errorf("a's SYN after 20,000 entries of others: proxy_lookup returned %d (passed on: its entry was evicted), want 0 (found, dropped with no listener)", ret)
	}
	if ret := run(a.IPv4, 40001); ret != 1 {
		t.Errorf("a SYN with no entry: proxy_lookup returned %d, want 1 (the kernel's own lookup)", ret)
	}
}

// proxySynKey is a struct proxy_syn_key: family, saddr, daddr, sport, dport (network order).
func proxySynKey(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) []byte {
	k := make([]byte, 40)
	binary.LittleEndian.PutUint32(k, family(src))
	s16, d16 := addr16(src), addr16(dst)
	copy(k[4:], s16[:])
	copy(k[20:], d16[:])
	binary.BigEndian.PutUint16(k[36:], sport)
	binary.BigEndian.PutUint16(k[38:], dport)
	return k
}

// proxySynValue is a struct proxy_syn (parser, pad, at) of a SYN tc delivered now.
func proxySynValue(p Parser) []byte {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	v := make([]byte, 16)
	binary.LittleEndian.PutUint32(v, uint32(p))
	binary.LittleEndian.PutUint64(v[8:], uint64(ts.Nano()))
	return v
}

// runLookup runs proxy_lookup on a TCP lookup from src:sport to dst:dport; it returns the verdict
// and the cookie of the socket it selected (0: none).
func runLookup(t testing.TB, d *Datapath, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) (uint32, uint64) {
	t.Helper()
	ctx := skLookupCtx{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, LocalPort: uint32(dport)}
	if src.Is4() {
		ctx.RemoteIP4, ctx.LocalIP4 = src.As4(), dst.As4()
	} else {
		ctx.Family, ctx.RemoteIP6, ctx.LocalIP6 = unix.AF_INET6, src.As16(), dst.As16()
	}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&ctx.RemotePort))[:], sport)
	var out skLookupCtx
	ret, err := d.objs.lookup.ProxyLookup.Run(&ebpf.RunOptions{Context: ctx, ContextOut: &out})
	if err != nil {
		t.Fatalf("run proxy_lookup: %v", err)
	}
	return ret, out.Cookie
}

// TestProxyListenersPerParser: SetProxyListeners gives each parser its own slots, so a second
// parser whose proxy takes TCP (DNS) gets the SYNs tc delivered for it past a TIME_WAIT socket,
// and the first (HTTP) keeps its own: proxy_lookup, run on a recorded tuple, selects the listener
// of the parser and family recorded, whichever parser's listeners were set last.
func TestProxyListenersPerParser(t *testing.T) {
	d := openTest(t, Options{})
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false) // a sockmap takes plain TCP sockets
	listeners := map[Parser][]net.Listener{}
	for _, p := range []Parser{ParserHTTP, ParserDNS} {
		for _, host := range []string{"127.0.0.1", "::1"} {
			l, err := lc.Listen(context.Background(), "tcp", net.JoinHostPort(host, "0"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			listeners[p] = append(listeners[p], l)
		}
		if err := d.SetProxyListeners(p, listeners[p]); err != nil {
			t.Fatalf("set the %s proxy's listeners: %v", p, err)
		}
	}
	cookie := func(l net.Listener) uint64 {
		rc, err := l.(*net.TCPListener).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var c uint64
		var gerr error
		if err := rc.Control(func(fd uintptr) { c, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return c
	}
	for i, c := range []struct {
		parser   Parser
		src, dst string
	}{
		{ParserHTTP, "192.0.2.1", "192.0.2.2"}, {ParserDNS, "192.0.2.1", "192.0.2.3"},
		{ParserHTTP, "2001:db8::1", "2001:db8::2"}, {ParserDNS, "2001:db8::1", "2001:db8::3"},
	} {
		src, dst, sport := netip.MustParseAddr(c.src), netip.MustParseAddr(c.dst), uint16(40000+i)
		// Not a pod of this node: tc records it in the shared map.
		if err := d.objs.ProxySyns.Put(proxySynKey(src, sport, dst, 53), proxySynValue(c.parser)); err != nil {
			t.Fatal(err)
		}
		l := listeners[c.parser][0]
		if src.Is6() {
			l = listeners[c.parser][1]
		}
		ret, got := runLookup(t, d, src, sport, dst, 53)
		if want := cookie(l); ret != 1 || got != want {
			t.Errorf("%s SYN from %s: proxy_lookup returned %d and socket %d, want 1 (pass) and the %s proxy's listener %s (%d)",
				c.parser, src, ret, got, c.parser, l.Addr(), want)
		}
	}
}
