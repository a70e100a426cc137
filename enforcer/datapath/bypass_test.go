package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/policy"
)

// Real frames from pod namespaces that tried to walk around policy: tagged and non-IP frames,
// ICMP errors that are not about a flow of the addresses they go between, and neighbour
// discovery that is not link-scoped.

// egressDeniedA puts pod a's egress in default deny (its only allow names a pod that does not
// exist) and leaves b and c without policy.
const egressDeniedA = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: nobody}}]
`

// inboundOnlyB lets a reach b on UDP 5353 and puts b's egress in default deny.
const inboundOnlyB = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: nobody}}]
`

// macs returns the MAC of eth0 in pod name and of its host veth.
func (n *trafficNode) macs(t *testing.T, name string) (pod, host net.HardwareAddr) {
	t.Helper()
	p := n.pods[name]
	if err := p.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		pod = l.Attrs().HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(p.HostIfname)
	if err != nil {
		t.Fatal(err)
	}
	return pod, l.Attrs().HardwareAddr
}

// sendFrames writes raw frames on eth0 of pod name through an AF_PACKET socket, as a pod with
// CAP_NET_RAW can.
func (n *trafficNode) sendFrames(t *testing.T, name string, frames ...[]byte) {
	t.Helper()
	err := n.pods[name].Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		addr := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Protocol: htons(unix.ETH_P_ALL)}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, addr); err != nil {
				return fmt.Errorf("send frame: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rawListener is a raw socket in a pod that collects every packet of one IP protocol it sees.
type rawListener struct {
	fd  int
	got chan []byte
}

func (n *trafficNode) listenRaw(t *testing.T, name string, family, proto int) *rawListener {
	t.Helper()
	r := &rawListener{got: make(chan []byte, 64)}
	if err := n.pods[name].Do(func() (err error) {
		r.fd, err = unix.Socket(family, unix.SOCK_RAW, proto)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	done := make(chan struct{})
	t.Cleanup(func() { close(done); unix.Close(r.fd) })
	go func() {
		buf := make([]byte, 65536)
		for {
			select {
			case <-done:
				return
			default:
			}
			k, _, err := unix.Recvfrom(r.fd, buf, 0)
			if err == nil {
				r.got <- bytes.Clone(buf[:k])
			}
		}
	}()
	return r
}

// saw reports whether a packet containing marker arrives within the probe timeout.
func (r *rawListener) saw(marker []byte) bool {
	deadline := time.After(probeTimeout)
	for {
		select {
		case b := <-r.got:
			if bytes.Contains(b, marker) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// udpDatagram builds eth(type) / IPv4 / UDP / payload from src to dst, with the given tags
// (outer first) in front of the IPv4 ethertype.
func udpFrame(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, port uint16, payload []byte, tags ...[2]uint16) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Protocol: layers.IPProtocolUDP}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(port)}
	udp.SetNetworkLayerForChecksum(ip)
	body := serialize(t, []gopacket.SerializableLayer{ip, udp, gopacket.Payload(payload)})
	frame := append(append([]byte{}, dstMAC...), srcMAC...)
	for _, tag := range tags { // tag = {TPID, VID}
		frame = binary.BigEndian.AppendUint16(frame, tag[0])
		frame = binary.BigEndian.AppendUint16(frame, tag[1])
	}
	frame = binary.BigEndian.AppendUint16(frame, 0x0800)
	return append(frame, body...)
}

// TestTaggedAndNonIPFramesDropped sends UDP to c inside VLAN tags from pod a, whose egress is
// in default deny: a double tag with VID 0 used to pass the program (not IP) and then be untagged
// and routed by the kernel. Every tagged frame, and every ethertype a pod does not need, is
// dropped and counted; the pod's own ARP still passes, another address's ARP does not.
func TestTaggedAndNonIPFramesDropped(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	n.apply(t, d, egressDeniedA)
	podMAC, hostMAC := n.macs(t, "a")
	a, c := n.pods["a"], n.pods["c"]
	var got []byte
	var ul net.PacketConn
	if err := c.Do(func() (err error) { ul, err = net.ListenPacket("udp4", ":7000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	received := func(marker []byte) bool {
		buf := make([]byte, 2048)
		ul.SetReadDeadline(time.Now().Add(probeTimeout))
		for {
			k, _, err := ul.ReadFrom(buf)
			if err != nil {
				return false
			}
			got = buf[:k]
			if bytes.Equal(got, marker) {
				return true
			}
		}
	}
	// Control: a's untagged datagram is dropped by policy, b's (no policy) arrives.
	n.sendFrames(t, "a", udpFrame(t, podMAC, hostMAC, a.IPv4, c.IPv4, 7000, []byte("untagged-a")))
	if received([]byte("untagged-a")) {
		t.Fatal("control: a's untagged datagram passed egress default deny")
	}
	bMAC, bHost := n.macs(t, "b")
	n.sendFrames(t, "b", udpFrame(t, bMAC, bHost, n.pods["b"].IPv4, c.IPv4, 7000, []byte("untagged-b")))
	if !received([]byte("untagged-b")) {
		t.Fatal("control: b's untagged datagram (no policy) did not arrive: the frames are not routed")
	}

	before, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tags [][2]uint16
	}{
		{"802.1Q VID 0", [][2]uint16{{0x8100, 0}}},
		{"802.1Q VID 5", [][2]uint16{{0x8100, 5}}},
		{"802.1Q VID 0 / 802.1Q VID 0", [][2]uint16{{0x8100, 0}, {0x8100, 0}}},
		{"802.1ad VID 0 / 802.1Q VID 0", [][2]uint16{{0x88a8, 0}, {0x8100, 0}}},
		{"802.1ad VID 7 / 802.1Q VID 0", [][2]uint16{{0x88a8, 7}, {0x8100, 0}}},
		{"802.1Q VID 0 / 802.1Q VID 9", [][2]uint16{{0x8100, 0}, {0x8100, 9}}},
	}
	for _, tc := range cases {
		// Spoofed as b and as a: neither policy nor anti-spoofing may be skipped.
		for _, src := range []netip.Addr{a.IPv4, n.pods["b"].IPv4} {
			marker := []byte(fmt.Sprintf("%s from %s", tc.name, src))
			n.sendFrames(t, "a", udpFrame(t, podMAC, hostMAC, src, c.IPv4, 7000, marker, tc.tags...))
			if received(marker) {
				t.Errorf("%s (source %s): a tagged datagram from a reached c past egress default deny", tc.name, src)
			}
		}
	}
	// Ethertypes a pod does not need, and ARP that claims another pod's address.
	other := append(append(append([]byte{}, hostMAC...), podMAC...), 0x88, 0xb5) // local experimental
	other = append(other, make([]byte, 46)...)
	arp := func(sender netip.Addr) []byte {
		l := []gopacket.SerializableLayer{
			&layers.Ethernet{SrcMAC: podMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
			&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
				Operation: layers.ARPRequest, SourceHwAddress: podMAC, SourceProtAddress: sender.AsSlice(),
				DstHwAddress: make([]byte, 6), DstProtAddress: []byte{169, 254, 1, 1}},
		}
		return serialize(t, l)
	}
	n.sendFrames(t, "a", other, arp(n.pods["b"].IPv4))
	n.sendFrames(t, "a", arp(a.IPv4))
	time.Sleep(50 * time.Millisecond)
	after, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	wantDropped := uint64(len(cases)*2 + 1)
	if got := after[ReasonDropEthertype].Packets - before[ReasonDropEthertype].Packets; got != wantDropped {
		t.Errorf("%d frames counted as dropped for their ethertype, want %d", got, wantDropped)
	}
	if after[ReasonDropSpoof].Packets == before[ReasonDropSpoof].Packets {
		t.Error("ARP with b's address as sender was not dropped as spoofed")
	}
	if after[ReasonForwardARP].Packets == before[ReasonForwardARP].Packets {
		t.Error("the pod's own ARP request was not forwarded")
	}
	// IPv4 through ARP still works for a pod without policy.
	n.serve(t, "c", 8080)
	expect(t, "b -> c tcp/8080", true, func() error { return n.tcpProbe("b", "c", 8080) })
}

// icmpErrorTo sends, from pod from, an ICMPv4 destination unreachable (port unreachable)
// quoting a UDP datagram quotedSrc:40000 -> quotedDst:port, to the address to, padded to size
// bytes of IP packet, with marker in the quoted payload.
func (n *trafficNode) icmpErrorTo(t *testing.T, from string, to, quotedSrc, quotedDst netip.Addr, port uint16, marker []byte, size int) {
	t.Helper()
	inner := &layers.IPv4{Version: 4, TTL: 64, SrcIP: quotedSrc.AsSlice(), DstIP: quotedDst.AsSlice(), Protocol: layers.IPProtocolUDP}
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(port)}
	udp.SetNetworkLayerForChecksum(inner)
	pad := max(0, size-20-8-20-8-len(marker))
	quoted := serialize(t, []gopacket.SerializableLayer{inner, udp, gopacket.Payload(append(append([]byte{}, marker...), make([]byte, pad)...))})
	icmp := serialize(t, []gopacket.SerializableLayer{&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted)})
	err := n.pods[from].Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, icmp, 0, &unix.SockaddrInet4{Addr: to.As4()})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRelatedICMPOnlyBetweenTheFlowsAddresses: b has an inbound flow from a and egress default
// deny. An ICMP error quoting that flow is related only when it goes back to the flow's source
// (from the flow's destination) and is small; sent to c, or large, it is judged by policy and
// dropped.
func TestRelatedICMPOnlyBetweenTheFlowsAddresses(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	n.serve(t, "b", 5353)
	n.apply(t, d, inboundOnlyB)
	a, b, c := n.pods["a"], n.pods["b"], n.pods["c"]
	atA := n.listenRaw(t, "a", unix.AF_INET, unix.IPPROTO_ICMP)
	atC := n.listenRaw(t, "c", unix.AF_INET, unix.IPPROTO_ICMP)
	// The flow a:40000 -> b:5353 (a's datagram from that port makes the conntrack entry).
	if err := a.Do(func() error {
		conn, err := net.DialUDP("udp4", &net.UDPAddr{Port: 40000}, &net.UDPAddr{IP: b.IPv4.AsSlice(), Port: 5353})
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("open"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)

	n.icmpErrorTo(t, "b", a.IPv4, a.IPv4, b.IPv4, 5353, []byte("related-to-a"), 100)
	if !atA.saw([]byte("related-to-a")) {
		t.Error("a small ICMP error back to the flow's source was not passed as related")
	}
	n.icmpErrorTo(t, "b", c.IPv4, a.IPv4, b.IPv4, 5353, []byte("related-to-c"), 100)
	if atC.saw([]byte("related-to-c")) {
		t.Error("an ICMP error quoting a->b reached c past b's egress default deny")
	}
	n.icmpErrorTo(t, "b", a.IPv4, a.IPv4, b.IPv4, 5353, []byte("large-to-a"), 1400)
	if atA.saw([]byte("large-to-a")) {
		t.Error("a 1400-byte ICMP error passed as related (the cap is 576 bytes)")
	}
	// Quoting a flow c never had, from b to c: not related either.
	n.icmpErrorTo(t, "b", c.IPv4, c.IPv4, b.IPv4, 5353, []byte("unrelated-to-c"), 100)
	if atC.saw([]byte("unrelated-to-c")) {
		t.Error("an ICMP error about no flow reached c")
	}
	counters, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if counters[ReasonForwardRelated].Packets == 0 {
		t.Error("no ICMP error was counted as related")
	}
}

// TestReasonNames: every reason the datapath counts has a name.
func TestReasonNames(t *testing.T) {
	for r := Reason(0); r < reasonMax; r++ {
		if reasonNames[r] == "" {
			t.Errorf("reason %d has no name in reasonNames", r)
		}
	}
}

// TestNeighbourDiscoveryOnlyLinkScoped: pod a (egress default deny) sends ICMPv6 neighbour
// solicitations and MLD reports to c's global address; they are not link-scoped, so policy
// judges them and drops them. IPv6 to the pods that policy allows still works (neighbour
// discovery with the gateway passes).
func TestNeighbourDiscoveryOnlyLinkScoped(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	n.apply(t, d, egressDeniedA)
	c := n.pods["c"]
	atC := n.listenRaw(t, "c", unix.AF_INET6, unix.IPPROTO_ICMPV6)
	send := func(typ uint8, hops int, marker []byte) {
		t.Helper()
		msg := append([]byte{typ, 0, 0, 0, 0, 0, 0, 0}, marker...)
		err := n.pods["a"].Do(func() error {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, hops); err != nil {
				return err
			}
			return unix.Sendto(fd, msg, 0, &unix.SockaddrInet6{Addr: c.IPv6.As16()})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []struct {
		typ  uint8
		hops int
	}{{135, 255}, {135, 64}, {136, 255}, {134, 255}, {143, 1}, {131, 1}, {130, 64}} {
		marker := []byte(fmt.Sprintf("nd type %d hop limit %d", m.typ, m.hops))
		send(m.typ, m.hops, marker)
		if atC.saw(marker) {
			t.Errorf("ICMPv6 type %d (hop limit %d) from a reached c's global address past egress default deny", m.typ, m.hops)
		}
	}
	// b has no policy: its IPv6 reaches c, neighbour discovery with the gateway included.
	n.serve(t, "c", 8080)
	expect(t, "b -> c tcp/8080 over IPv6", true, func() error { return n.tcpProbeAddr("b", c.IPv6, 8080) })
	counters, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if counters[ReasonForwardND].Packets == 0 {
		t.Error("no neighbour discovery was forwarded as link-scoped")
	}
}

// TestFragmentedReplies: a 3000-byte UDP answer is fragmented; its later fragments carry no
// ports and pass only when the first was recorded. Replies are recorded too, so a pod without
// policy, and one whose policy allows the request, get whole answers (large DNS answers).
func TestFragmentedReplies(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	b := n.pods["b"]
	var conns []net.PacketConn
	if err := b.Do(func() error {
		for _, network := range []string{"udp4", "udp6"} {
			c, err := net.ListenPacket(network, ":5400")
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		t.Cleanup(func() { c.Close() })
		go func() {
			buf := make([]byte, 65536)
			for {
				k, addr, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				c.WriteTo(buf[:k], addr)
			}
		}()
	}
	big := bytes.Repeat([]byte("fragment"), 375) // 3000 bytes
	exchange := func(to netip.Addr) error {
		var c net.Conn
		if err := n.pods["a"].Do(func() (err error) {
			c, err = net.Dial("udp", net.JoinHostPort(to.String(), "5400"))
			return err
		}); err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(probeTimeout))
		if _, err := c.Write(big); err != nil {
			return err
		}
		buf := make([]byte, 65536)
		k, err := c.Read(buf)
		if err != nil {
			return err
		}
		if !bytes.Equal(buf[:k], big) {
			return fmt.Errorf("answer of %d bytes, want %d", k, len(big))
		}
		return nil
	}
	for _, step := range []struct{ name, policy string }{
		{"no policy", ""},
		{"b allows a", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "5400", protocol: UDP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: nobody}}]
`},
	} {
		n.apply(t, d, step.policy)
		for _, to := range []netip.Addr{b.IPv4, b.IPv6} {
			expect(t, fmt.Sprintf("%s: a -> b %s, 3000-byte UDP answer", step.name, to), true, func() error { return exchange(to) })
		}
	}
}

// TestServerPushAfterConntrackEviction: the node's conntrack is one LRU, so a pod that opens
// many flows can evict another pod's entries. b holds a connection to a:8080 (a's ingress allows
// it, a's egress is default deny); its entries are evicted (removed here, as the LRU would);
// then a pushes data first. The push is the reply of a flow a's policy allows: it arrives, and
// is counted. A push on a port a's ingress does not allow would not be.
func TestServerPushAfterConntrackEviction(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	n.apply(t, d, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: nobody}}]
`)
	a, b := n.pods["a"], n.pods["b"]
	var ln net.Listener
	if err := a.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	var client net.Conn
	if err := b.Do(func() (err error) {
		client, err = net.DialTimeout("tcp", net.JoinHostPort(a.IPv4.String(), "8080"), probeTimeout)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	defer server.Close()
	push := func(what string) error {
		if _, err := server.Write([]byte(what + "\n")); err != nil {
			return err
		}
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		k, err := client.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:k]) != what+"\n" {
			return fmt.Errorf("read %q", buf[:k])
		}
		return nil
	}
	if err := push("before"); err != nil {
		t.Fatalf("push before the eviction: %v", err)
	}
	before, _ := d.Counters()
	// What the LRU does to the entries when another pod opens many flows.
	if clearConntrack(t, d) == 0 {
		t.Fatal("no conntrack entries to evict")
	}
	if err := push("after"); err != nil {
		t.Fatalf("a's push on its open connection after the eviction: %v", err)
	}
	after, _ := d.Counters()
	if after[ReasonForwardRecovered].Packets == before[ReasonForwardRecovered].Packets {
		t.Error("no reply was counted as recovered after the eviction")
	}
}

// TestUDPAnswerAfterConntrackEviction: a pod's conntrack entries can be evicted by another pod's
// flows (one LRU for the node). A UDP answer has no ACK to tell it from a new flow, so without
// its entry it met a's ingress default deny: a resolver waiting on its open flow lost the answer.
// An answer to a socket of a connected to the answer's sender is a reply of a flow a opened; it
// passes when a's egress policy allows that flow now, and is counted as recovered. The same
// datagram to a socket of a that is only bound, or from a peer a's egress does not allow, is
// still dropped.
func TestUDPAnswerAfterConntrackEviction(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	n.apply(t, d, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
`)
	a, b, c := n.pods["a"], n.pods["b"], n.pods["c"]
	listen := func(p *podnet.Pod, addr string) *net.UDPConn {
		var conn *net.UDPConn
		if err := p.Do(func() error {
			pc, err := net.ListenPacket("udp", addr)
			if err == nil {
				conn = pc.(*net.UDPConn)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	dial := func(p *podnet.Pod, to netip.AddrPort) *net.UDPConn {
		var conn *net.UDPConn
		if err := p.Do(func() (err error) {
			conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	read := func(conn *net.UDPConn) (string, netip.AddrPort, error) {
		conn.SetReadDeadline(time.Now().Add(probeTimeout))
		buf := make([]byte, 64)
		k, from, err := conn.ReadFromUDPAddrPort(buf)
		return string(buf[:k]), from, err
	}
	server := listen(b, ":5353")
	rogue := listen(c, ":5353")
	for _, fam := range []struct {
		name    string
		a, b, c netip.Addr
	}{{"IPv4", a.IPv4, b.IPv4, c.IPv4}, {"IPv6", a.IPv6, b.IPv6, c.IPv6}} {
		resolver := dial(a, netip.AddrPortFrom(fam.b, 5353))
		// ask sends a query on the resolver's open flow; b receives it and answers after evict.
		ask := func(q string, evict bool) error {
			if _, err := resolver.Write([]byte(q)); err != nil {
				return err
			}
			got, from, err := read(server)
			if err != nil || got != q {
				return fmt.Errorf("b did not receive %q: %q %v", q, got, err)
			}
			if evict && clearConntrack(t, d) == 0 {
				t.Fatal("no conntrack entries to evict")
			}
			if _, err := server.WriteToUDPAddrPort([]byte("answer "+q), from); err != nil {
				return err
			}
			got, _, err = read(resolver)
			if err != nil || got != "answer "+q {
				return fmt.Errorf("answer: %q %v", got, err)
			}
			return nil
		}
		if err := ask("before", false); err != nil {
			t.Fatalf("%s: the answer on a's open flow: %v", fam.name, err)
		}
		before, _ := d.Counters()
		if err := ask("after", true); err != nil {
			t.Errorf("%s: the answer on a's open flow after its conntrack entry was evicted: %v", fam.name, err)
		}
		after, _ := d.Counters()
		if after[ReasonForwardRecovered].Packets == before[ReasonForwardRecovered].Packets {
			t.Errorf("%s: no answer was counted as recovered after the eviction", fam.name)
		}

		// Not a way in: a datagram from b's port 5353 to a socket of a that is bound, not
		// connected, is a new flow a's ingress denies.
		bound := listen(a, net.JoinHostPort(fam.a.String(), "0"))
		if _, err := server.WriteToUDPAddrPort([]byte("unasked"), netip.MustParseAddrPort(bound.LocalAddr().String())); err != nil {
			t.Fatal(err)
		}
		if got, _, err := read(bound); err == nil {
			t.Errorf("%s: %q reached a's bound socket past its ingress policy", fam.name, got)
		}
		// Nor a connected socket towards a peer a's egress does not allow (c): its answer is not
		// the reply of an allowed flow.
		toC := dial(a, netip.AddrPortFrom(fam.c, 5353))
		if _, err := rogue.WriteToUDPAddrPort([]byte("from c"), netip.MustParseAddrPort(toC.LocalAddr().String())); err != nil {
			t.Fatal(err)
		}
		if got, _, err := read(toC); err == nil {
			t.Errorf("%s: %q from c reached a past its policy", fam.name, got)
		}
	}
}

// TestPruneOldSandboxInterface: a pod whose sandbox is made again keeps its endpoint id on a new
// veth. The old veth goes with the old sandbox; its endpoint entry and its own maps must go too,
// although the id is still kept, or every sandbox made again leaks them for the pod's life.
func TestPruneOldSandboxInterface(t *testing.T) {
	n := newTrafficNode(t)
	d := openTest(t, Options{})
	n.apply(t, d, "")
	a := n.pods["a"]
	id := os.Getpid() % 10000
	again, err := podnet.CreatePod("a-again", fmt.Sprintf("np-%d-a2", id), fmt.Sprintf("np%da2", id), a.IPv4, a.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Delete() })
	st := compileYAML(t, n.cluster, "")
	key := policy.EndpointKey{Namespace: "app", Name: "a"}
	es, _ := st.Endpoint(key)
	ident, _ := st.Identity(key)
	if err := d.UpsertEndpoint(Endpoint{Ifindex: again.Ifindex, Ifname: again.HostIfname, ID: 1, Identity: ident.ID,
		IPv4: again.IPv4, IPv6: again.IPv6, NetnsCookie: again.NetnsCookie}, es); err != nil {
		t.Fatal(err)
	}
	old := a.Ifindex
	if err := a.Delete(); err != nil { // the old sandbox goes, and its veth with it
		t.Fatal(err)
	}
	if err := d.Prune(map[uint32]bool{1: true, 2: true, 3: true}); err != nil {
		t.Fatal(err)
	}
	var info bpf.TcEndpointInfo
	if err := d.objs.Endpoints.Lookup(uint32(old), &info); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("the old sandbox's endpoint entry stays: %v", err)
	}
	var inner ebpf.MapID
	if err := d.objs.ProxySynsPod.Lookup(uint32(old), &inner); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("the old sandbox's proxy SYN map stays: %v", err)
	}
	if err := d.objs.Endpoints.Lookup(uint32(again.Ifindex), &info); err != nil || info.EpId != 1 {
		t.Errorf("the new sandbox's endpoint entry: %+v, %v", info, err)
	}
}
