//go:build linux

package scenarios

import (
	"net/netip"
	"testing"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/policy"
)

// TestWitnessTakesOnlyTheProbesOwnDrop: a drop ends a probe only when it is of one of the probe's
// own sockets. Another protocol on the same port number, another destination (the L7 proxy's
// onward connection can carry the pod's address and a host-chosen port), another pod, and a
// packet another pod forged with the probe's address (dropped as spoofed) are not the probe's.
// A drop at a backend of the service frontend the socket connected to is.
func TestWitnessTakesOnlyTheProbesOwnDrop(t *testing.T) {
	from := &podnet.Pod{IPv4: netip.MustParseAddr("10.250.1.1"), IPv6: netip.MustParseAddr("fd00:250:1::1")}
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	backend := netip.MustParseAddrPort("10.250.1.2:8080")
	other := netip.MustParseAddrPort("10.250.1.3:80")
	socks := &probeSockets{ports: map[probePort]netip.AddrPort{}}
	socks.add(policy.ProtoTCP, 40000, vip)
	socks.add(policy.ProtoTCP, 40001, other)
	backends := map[netip.AddrPort][]netip.AddrPort{vip: {backend}}
	drop := func(src netip.Addr, proto policy.Proto, sport uint16, dst netip.AddrPort, r datapath.Reason) datapath.Flow {
		return datapath.Flow{Src: src, Proto: proto, SrcPort: sport, Dst: dst.Addr(), DstPort: dst.Port(), Reason: r}
	}
	for _, c := range []struct {
		name string
		f    datapath.Flow
		want bool
	}{
		{"its socket, at the frontend", drop(from.IPv4, policy.ProtoTCP, 40000, vip, datapath.ReasonDropDeny), true},
		{"its socket, at a backend", drop(from.IPv4, policy.ProtoTCP, 40000, backend, datapath.ReasonDropDefaultDeny), true},
		{"its second socket", drop(from.IPv4, policy.ProtoTCP, 40001, other, datapath.ReasonDropDefaultDeny), true},
		{"the same port, UDP", drop(from.IPv4, policy.ProtoUDP, 40000, vip, datapath.ReasonDropDeny), false},
		{"the same port, another destination", drop(from.IPv4, policy.ProtoTCP, 40000, other, datapath.ReasonDropDeny), false},
		{"the same port, the backend's other port", drop(from.IPv4, policy.ProtoTCP, 40000, netip.AddrPortFrom(backend.Addr(), 9090), datapath.ReasonDropDeny), false},
		{"another pod's socket", drop(netip.MustParseAddr("10.250.1.9"), policy.ProtoTCP, 40000, vip, datapath.ReasonDropDeny), false},
		{"a forgery of its address", drop(from.IPv4, policy.ProtoTCP, 40000, vip, datapath.ReasonDropSpoof), false},
		{"a port it never opened", drop(from.IPv4, policy.ProtoTCP, 40002, vip, datapath.ReasonDropDeny), false},
	} {
		if got := witnesses(c.f, from, socks, backends); got != c.want {
			t.Errorf("%s: witnesses %v, want %v", c.name, got, c.want)
		}
	}
}
