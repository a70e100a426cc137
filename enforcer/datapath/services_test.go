package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/policy"
)

// The egress policy of the services test: c may reach a on 8080 (TCP and UDP), nothing else.
const servicesPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: c}}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8080", protocol: UDP}]}]
`

// TestServiceTranslation drives real sockets of a pod through ClusterIPs translated by the
// socket programs on this process's cgroup: egress policy sees the backend (a allowed, b
// denied by the same rule), a frontend without backends refuses at once, UDP answers come from
// the ClusterIP asked (unconnected sendto/recvfrom and connected sockets' getpeername), IPv6.
func TestServiceTranslation(t *testing.T) {
	n := newTrafficNode(t)
	var d *Datapath
	pin, cg := openWithSockets(t, "services", &d)
	var err error
	n.serve(t, "a", 8080)
	n.serve(t, "b", 8080)
	n.apply(t, d, servicesPolicy)
	id := byte(os.Getpid() % 200)
	vipA := netip.AddrFrom4([4]byte{10, 254, id, 1})
	vipB := netip.AddrFrom4([4]byte{10, 254, id, 2})
	vipNone := netip.AddrFrom4([4]byte{10, 254, id, 3})
	vipA6 := netip.MustParseAddr(fmt.Sprintf("fd00:254:%x::1", id))
	a, b := n.pods["a"], n.pods["b"]
	svcs := []Service{
		{Name: "app/a", Frontend: netip.AddrPortFrom(vipA, 80), Proto: policy.ProtoTCP, Backends: []netip.AddrPort{netip.AddrPortFrom(a.IPv4, 8080)}},
		{Name: "app/a", Frontend: netip.AddrPortFrom(vipA, 80), Proto: policy.ProtoUDP, Backends: []netip.AddrPort{netip.AddrPortFrom(a.IPv4, 8080)}},
		{Name: "app/a", Frontend: netip.AddrPortFrom(vipA6, 80), Proto: policy.ProtoTCP, Backends: []netip.AddrPort{netip.AddrPortFrom(a.IPv6, 8080)}},
		{Name: "app/b", Frontend: netip.AddrPortFrom(vipB, 80), Proto: policy.ProtoTCP, Backends: []netip.AddrPort{netip.AddrPortFrom(b.IPv4, 8080)}},
		{Name: "app/none", Frontend: netip.AddrPortFrom(vipNone, 80), Proto: policy.ProtoTCP},
	}
	if err := d.SetServices(svcs); err != nil {
		t.Fatal(err)
	}
	fr, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	expect(t, "c -> service a (TCP, backend allowed)", true, func() error { return n.tcpProbeAddr("c", vipA, 80) })
	expect(t, "c -> service a over IPv6", true, func() error { return n.tcpProbeAddr("c", vipA6, 80) })
	expect(t, "c -> service b (backend denied by egress policy)", false, func() error { return n.tcpProbeAddr("c", vipB, 80) })
	expect(t, "c -> b directly on 8080 (denied)", false, func() error { return n.tcpProbeAddr("c", b.IPv4, 8080) })

	// Flow events name the Service and the backend: the allowed one and the denied one.
	wants := []string{
		fmt.Sprintf("%s via app/a %s:80/TCP forwarded: allowed by policy", a.IPv4, vipA),
		fmt.Sprintf("%s via app/b %s:80/TCP dropped: default deny, no rule", b.IPv4, vipB),
	}
	named := map[string]bool{}
	for deadline := time.Now().Add(2 * time.Second); !named[wants[0]] || !named[wants[1]]; {
		f, err := fr.Read(deadline)
		if err != nil {
			t.Fatalf("flow events naming the Service and the backend: want %q, got %v, then %v", wants, named, err)
		}
		if f.Direction == policy.Egress && f.Service != 0 {
			named[fmt.Sprintf("%s via %s %s", f.Dst, d.ServiceName(f.Service), f.Reason)] = true
		}
	}

	// A raw frame to a ClusterIP (a pod with CAP_NET_RAW) skips the socket programs: kube-proxy
	// would DNAT it after tc to a backend policy never judged. Dropped, and said why.
	podMAC, hostMAC := n.macs(t, "c")
	n.sendFrames(t, "c", udpFrame(t, podMAC, hostMAC, n.pods["c"].IPv4, vipA, 80, []byte("raw-to-vip")))
	for deadline := time.Now().Add(2 * time.Second); ; {
		f, err := fr.Read(deadline)
		if err != nil {
			t.Fatalf("no flow event for a raw datagram to the ClusterIP: %v", err)
		}
		if f.Dst == vipA && f.DstPort == 80 && f.Proto == policy.ProtoUDP {
			if f.Reason != ReasonDropUntranslated {
				t.Errorf("raw datagram to the ClusterIP: %s, want %s", f.Reason, ReasonDropUntranslated)
			}
			break
		}
	}

	start := time.Now()
	err = n.tcpProbeTimeout("c", vipNone, 80, 3*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) || time.Since(start) > time.Second {
		t.Errorf("c -> service without backends: want connection refused at once, got %v after %v", err, time.Since(start))
	}

	// Unconnected UDP (sendto/recvfrom, as a resolver may do): the answer's source is the ClusterIP.
	var pc net.PacketConn
	if err := n.pods["c"].Do(func() error { pc, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := pc.WriteTo([]byte("ping"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(vipA, 80))); err != nil {
		t.Fatalf("udp sendto the ClusterIP: %v", err)
	}
	buf := make([]byte, 16)
	k, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "ping" {
		t.Fatalf("udp answer through the ClusterIP: %q, %v", buf[:k], err)
	}
	if got := from.(*net.UDPAddr).AddrPort(); got != netip.AddrPortFrom(vipA, 80) {
		t.Errorf("udp answer came from %s, want the ClusterIP %s:80", got, vipA)
	}
	// Connected UDP: the peer is the ClusterIP (getpeername) and the answer arrives.
	var uc net.Conn
	if err := n.pods["c"].Do(func() error { uc, err = net.Dial("udp4", netip.AddrPortFrom(vipA, 80).String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if got := uc.RemoteAddr().(*net.UDPAddr).AddrPort(); got != netip.AddrPortFrom(vipA, 80) {
		t.Errorf("connected udp peer is %s, want the ClusterIP", got)
	}
	uc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := uc.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if k, err := uc.Read(buf); err != nil || string(buf[:k]) != "ping" {
		t.Errorf("connected udp answer through the ClusterIP: %q, %v", buf[:k], err)
	}

	// The backend goes: refused; it comes back with b added: both reachable through policy's eyes.
	svcs[0].Backends = nil
	if err := d.SetServices(svcs); err != nil {
		t.Fatal(err)
	}
	if err := n.tcpProbe("c", "a", 8080); err != nil {
		t.Errorf("c -> a directly: %v", err)
	}
	if err := n.tcpProbeAddr("c", vipA, 80); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("c -> service a after its backends went: want refused, got %v", err)
	}
	// Restart: a new process adopts the frontends (same ids) and the cgroup links.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if d, err = Open(Options{PinPath: pin, Cgroup: cg}); err != nil {
		t.Fatal(err)
	}
	if len(d.services) != len(svcs) {
		t.Errorf("after restart %d frontends adopted, want %d", len(d.services), len(svcs))
	}
	expect(t, "c -> service a over IPv6 after restart", true, func() error { return n.tcpProbeAddr("c", vipA6, 80) })
	if err := d.SetServices(nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"services", "backends"} {
		if f, _ := d.Fill(); f[name].Entries != 0 {
			t.Errorf("after SetServices(nil) %s holds %d entries", name, f[name].Entries)
		}
	}
	expect(t, "c -> service a over IPv6 once no services", false, func() error { return n.tcpProbeAddr("c", vipA6, 80) })
}

// TestReverseTranslationSharePerPod: reverse translations were one LRU for the node, so a pod
// that connects many sockets to a Service (each socket an entry, kept after it closes) evicted
// another pod's: that pod's resolver then read its answer from the backend's address, not the
// ClusterIP it asked, and dropped it. Each pod now has its own share: b connects twice as many
// sockets as the node-wide map holds, and c's pending answer still comes from the ClusterIP.
func TestReverseTranslationSharePerPod(t *testing.T) {
	n := newTrafficNode(t)
	var d *Datapath
	openWithSockets(t, "revnat", &d)
	var err error
	n.serve(t, "a", 8080)
	n.apply(t, d, servicesPolicy)
	id := byte(os.Getpid() % 200)
	vip := netip.AddrFrom4([4]byte{10, 254, id, 9})
	a := n.pods["a"]
	if err := d.SetServices([]Service{{Name: "app/a", Frontend: netip.AddrPortFrom(vip, 53), Proto: policy.ProtoUDP,
		Backends: []netip.AddrPort{netip.AddrPortFrom(a.IPv4, 8080)}}}); err != nil {
		t.Fatal(err)
	}
	// c asks (sendto, unconnected, as a resolver may); the answer waits in its socket.
	var pc net.PacketConn
	if err := n.pods["c"].Do(func() error { pc, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("query"), net.UDPAddrFromAddrPort(netip.AddrPortFrom(vip, 53))); err != nil {
		t.Fatal(err)
	}
	// b connects (no datagram sent) and closes a socket to the Service, over and over.
	flood := 2 * int(d.objs.sock.SockRevnat.MaxEntries())
	sa := &unix.SockaddrInet4{Port: 53, Addr: vip.As4()}
	if err := n.pods["b"].Do(func() error {
		for range flood {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = unix.Connect(fd, sa)
			unix.Close(fd)
			if err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("b's sockets: %v", err)
	}
	pc.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	k, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "query" {
		t.Fatalf("c's answer: %q, %v", buf[:k], err)
	}
	if got := from.(*net.UDPAddr).AddrPort(); got != netip.AddrPortFrom(vip, 53) {
		t.Errorf("after b connected %d sockets, c's answer came from %s, not the ClusterIP %s:53 it asked", flood, got, vip)
	}
}

// openWithSockets opens a datapath with the socket programs on this process's cgroup (the test's
// pods are its threads), pinned apart under name, into *d; whatever *d is when the test ends (a
// test may reopen it) is torn down.
func openWithSockets(t *testing.T, name string, d **Datapath) (pin, cg string) {
	t.Helper()
	cg, err := OwnCgroup()
	if err != nil {
		t.Fatal(err)
	}
	pin = fmt.Sprintf("%s-test/%s-%d", DefaultPinPath, name, os.Getpid())
	os.RemoveAll(pin)
	if *d, err = Open(Options{PinPath: pin, Cgroup: cg}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := (*d).Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return pin, cg
}
