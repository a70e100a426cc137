package datapath

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

const (
	tcOK   = 0 // TC_ACT_OK
	tcShot = 2 // TC_ACT_SHOT
)

// pkt describes a test frame; build turns it into bytes with gopacket.
type pkt struct {
	src, dst     string
	proto        policy.Proto
	sport, dport uint16
	icmpType     uint8
	syn, ack     bool
	fragID       uint32
	fragMF       bool
	fragOffset   uint16 // in 8-byte units
	ipOptions    bool
	payload      int
	hopLimit     uint8  // IPv4 TTL or IPv6 hop limit; 64 when zero
	icmpID       uint16 // echo identifier; 1 when zero
}

func (p pkt) build(t testing.TB) []byte {
	t.Helper()
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	var ls []gopacket.SerializableLayer
	var netLayer gopacket.NetworkLayer
	ipProto := layers.IPProtocol(p.proto)
	hops := p.hopLimit
	if hops == 0 {
		hops = 64
	}
	if src.Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: hops, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Protocol: ipProto, Id: uint16(p.fragID)}
		if p.fragMF {
			ip.Flags = layers.IPv4MoreFragments
		}
		ip.FragOffset = p.fragOffset
		if p.ipOptions {
			ip.Options = []layers.IPv4Option{{OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}} // record route
		}
		ls = append(ls, eth, ip)
		netLayer = ip
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: hops, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), NextHeader: ipProto}
		ls = append(ls, eth, ip)
		netLayer = ip
		if p.fragMF || p.fragOffset > 0 {
			ip.NextHeader = layers.IPProtocolIPv6Fragment
			ls = append(ls, &layers.IPv6Fragment{NextHeader: ipProto, FragmentOffset: p.fragOffset, MoreFragments: p.fragMF, Identification: p.fragID})
		}
	}
	if p.fragOffset > 0 {
		ls = append(ls, gopacket.Payload(make([]byte, 16+p.payload)))
		return serialize(t, ls)
	}
	switch p.proto {
	case policy.ProtoTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), SYN: p.syn, ACK: p.ack, Window: 1000}
		tcp.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, tcp)
	case policy.ProtoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		udp.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, udp)
	case policy.ProtoSCTP:
		ls = append(ls, &layers.SCTP{SrcPort: layers.SCTPPort(p.sport), DstPort: layers.SCTPPort(p.dport)},
			&layers.SCTPInit{SCTPChunk: layers.SCTPChunk{Type: layers.SCTPChunkTypeInit, Length: 20}, InitiateTag: 1, AdvertisedReceiverWindowCredit: 1000, OutboundStreams: 1, InboundStreams: 1, InitialTSN: 1})
	case policy.ProtoICMP:
		id := p.icmpID
		if id == 0 {
			id = 1
		}
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.icmpType, 0), Id: id, Seq: 1})
	case policy.ProtoICMPv6:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(p.icmpType, 0)}
		icmp.SetNetworkLayerForChecksum(netLayer)
		ls = append(ls, icmp)
	}
	ls = append(ls, gopacket.Payload(make([]byte, p.payload)))
	return serialize(t, ls)
}

func serialize(t testing.TB, ls []gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("build frame: %v", err)
	}
	return buf.Bytes()
}

// runProg runs a program once on a frame as if it arrived on ifindex, returning the tc verdict.
// This is the one helper every prog.Run test goes through.
func runProg(t testing.TB, prog *ebpf.Program, ifindex int, frame []byte) uint32 {
	t.Helper()
	// __sk_buff up to and including ifindex; the kernel wants the other fields zero.
	ctx := make([]uint32, 11)
	ctx[10] = uint32(ifindex)
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: ctx})
	if err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	return ret
}

// testLink creates a veth pair for the test and removes it afterwards: the kernel only accepts
// an ifindex in a test run that names a real device (this kernel has no dummy driver).
func testLink(t testing.TB, name string) int {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	netlink.LinkDel(veth)
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(l) })
	return l.Attrs().Index
}

// openTest opens a datapath pinned in a directory of its own.
func openTest(t testing.TB, opts Options) *Datapath {
	t.Helper()
	testenv.RequireBPF(t)
	if opts.PinPath == "" {
		opts.PinPath = filepath.Join(DefaultPinPath+"-test", fmt.Sprintf("%s-%d", sanitize(t.Name()), os.Getpid()))
	}
	os.RemoveAll(opts.PinPath)
	d, err := Open(opts)
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return d
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

const unitPolicies = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports:
      - {port: "80", protocol: TCP}
      - {port: "8000", endPort: 8010, protocol: TCP}
      - {port: "5000", protocol: SCTP}
      - {port: "53", protocol: UDP}
  - fromEndpoints: [{matchLabels: {app: b}}]
    icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]
  - fromEndpoints: [{matchLabels: {app: c}}]
  - toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`

func unitCluster() *policy.Cluster {
	a := netip.MustParseAddr
	return &policy.Cluster{
		Nodes:      []policy.Node{{Name: "node-1", IPs: []netip.Addr{a("192.168.100.1")}}},
		Namespaces: []policy.Namespace{{Name: "app"}},
		Endpoints: []policy.Endpoint{
			{Namespace: "app", Name: "a", Labels: map[string]string{"app": "a"}, Node: "node-1", IPs: []netip.Addr{a("10.0.0.1"), a("fd00::1")}},
			{Namespace: "app", Name: "b", Labels: map[string]string{"app": "b"}, Node: "node-1", IPs: []netip.Addr{a("10.0.0.2"), a("fd00::2")}},
			{Namespace: "app", Name: "c", Labels: map[string]string{"app": "c"}, Node: "node-1", IPs: []netip.Addr{a("10.0.0.3"), a("fd00::3")}},
		},
	}
}

func compileYAML(t testing.TB, c *policy.Cluster, yaml string) *policy.State {
	t.Helper()
	b, err := policy.LoadBytes("test.yaml", []byte(yaml), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := policy.Compile(c, b, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// unitSetup programs pod a on a dummy device with the unit policies.
func unitSetup(t *testing.T, yaml string) (*Datapath, *policy.State, Endpoint) {
	d := openTest(t, Options{})
	ifindex := testLink(t, fmt.Sprintf("npt%d", os.Getpid()%100000))
	st := compileYAML(t, unitCluster(), yaml)
	ep := programA(t, d, st, ifindex)
	return d, st, ep
}

func programA(t testing.TB, d *Datapath, st *policy.State, ifindex int) Endpoint {
	t.Helper()
	key := policy.EndpointKey{Namespace: "app", Name: "a"}
	es, _ := st.Endpoint(key)
	ident, _ := st.Identity(key)
	ep := Endpoint{Ifindex: ifindex, Ifname: "a", ID: 1, Identity: ident.ID,
		IPv4: netip.MustParseAddr("10.0.0.1"), IPv6: netip.MustParseAddr("fd00::1")}
	if err := d.SetIPCache(st.IPCache("node-1")); err != nil {
		t.Fatal(err)
	}
	if err := d.UpsertEndpoint(ep, es); err != nil {
		t.Fatal(err)
	}
	return ep
}

type verdictCase struct {
	name   string
	dir    policy.Direction
	p      pkt
	want   uint32
	reason Reason
}

func TestProgramVerdicts(t *testing.T) {
	d, st, ep := unitSetup(t, unitPolicies)
	tcp, udp, sctp, icmp, icmp6 := policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP, policy.ProtoICMP, policy.ProtoICMPv6
	cases := []verdictCase{
		{"allowed", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40000, dport: 80, syn: true}, tcOK, ReasonForwardPolicy},
		{"default-denied port", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40000, dport: 81, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"default-denied peer", policy.Ingress, pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: tcp, sport: 40000, dport: 80, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"range below", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40001, dport: 7999, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"range first", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40001, dport: 8000, syn: true}, tcOK, ReasonForwardPolicy},
		{"range last", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40001, dport: 8010, syn: true}, tcOK, ReasonForwardPolicy},
		{"range above", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40001, dport: 8011, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"sctp allowed", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: sctp, sport: 40002, dport: 5000}, tcOK, ReasonForwardPolicy},
		{"sctp allow is not tcp", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40002, dport: 5000, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"udp allowed", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: udp, sport: 40003, dport: 53}, tcOK, ReasonForwardPolicy},
		{"icmp echo by icmps rule", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: icmp, icmpType: 8}, tcOK, ReasonForwardPolicy},
		{"icmp timestamp not listed", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: icmp, icmpType: 13}, tcShot, ReasonDropDefaultDeny},
		{"icmp follows L3-only allow", policy.Ingress, pkt{src: "10.0.0.3", dst: "10.0.0.1", proto: icmp, icmpType: 13}, tcOK, ReasonForwardPolicy},
		{"wildcard proto for L3-only peer", policy.Ingress, pkt{src: "10.0.0.3", dst: "10.0.0.1", proto: udp, sport: 1, dport: 7777}, tcOK, ReasonForwardPolicy},
		{"deny beats allow", policy.Ingress, pkt{src: "10.0.0.3", dst: "10.0.0.1", proto: tcp, sport: 40004, dport: 22, syn: true}, tcShot, ReasonDropDeny},
		{"wildcard peer", policy.Ingress, pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: tcp, sport: 40005, dport: 9090, syn: true}, tcOK, ReasonForwardPolicy},
		{"local host allowed", policy.Ingress, pkt{src: "192.168.100.1", dst: "10.0.0.1", proto: tcp, sport: 40006, dport: 12345, syn: true}, tcOK, ReasonForwardPolicy},
		{"ipv6 allowed", policy.Ingress, pkt{src: "fd00::2", dst: "fd00::1", proto: tcp, sport: 40007, dport: 80, syn: true}, tcOK, ReasonForwardPolicy},
		{"ipv6 denied", policy.Ingress, pkt{src: "fd00::2", dst: "fd00::1", proto: tcp, sport: 40007, dport: 81, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"icmpv6 echo", policy.Ingress, pkt{src: "fd00::2", dst: "fd00::1", proto: icmp6, icmpType: 128}, tcOK, ReasonForwardPolicy},
		{"neighbour solicitation to the pod", policy.Ingress, pkt{src: "fe80::2", dst: "fd00::1", proto: icmp6, icmpType: 135, hopLimit: 255}, tcOK, ReasonForwardND},
		{"neighbour solicitation not hop limit 255", policy.Ingress, pkt{src: "fe80::2", dst: "fd00::1", proto: icmp6, icmpType: 135}, tcShot, ReasonDropDefaultDeny},
		{"neighbour advertisement from the pod", policy.Egress, pkt{src: "fd00::1", dst: "fe80::1", proto: icmp6, icmpType: 136, hopLimit: 255}, tcOK, ReasonForwardND},
		{"neighbour solicitation to a global address", policy.Egress, pkt{src: "fd00::1", dst: "fd00::2", proto: icmp6, icmpType: 135, hopLimit: 255}, tcShot, ReasonDropDefaultDeny},
		{"duplicate address detection from ::", policy.Egress, pkt{src: "::", dst: "ff02::1:ff00:1", proto: icmp6, icmpType: 135, hopLimit: 255}, tcOK, ReasonForwardND},
		{"MLDv2 report", policy.Egress, pkt{src: "fe80::7", dst: "ff02::16", proto: icmp6, icmpType: 143, hopLimit: 1}, tcOK, ReasonForwardND},
		{"ipv4 options", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40008, dport: 80, syn: true, ipOptions: true}, tcOK, ReasonForwardPolicy},
		{"ipv4 options denied", policy.Ingress, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 40008, dport: 81, syn: true, ipOptions: true}, tcShot, ReasonDropDefaultDeny},
		{"egress allowed", policy.Egress, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: tcp, sport: 40009, dport: 443, syn: true}, tcOK, ReasonForwardPolicy},
		{"egress denied", policy.Egress, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: tcp, sport: 40009, dport: 444, syn: true}, tcShot, ReasonDropDefaultDeny},
		{"egress to world denied", policy.Egress, pkt{src: "10.0.0.1", dst: "8.8.8.8", proto: udp, sport: 40010, dport: 53}, tcShot, ReasonDropDefaultDeny},
		{"spoofed source", policy.Egress, pkt{src: "10.0.0.99", dst: "10.0.0.2", proto: tcp, sport: 40011, dport: 443, syn: true}, tcShot, ReasonDropSpoof},
		{"spoofed ipv6 source", policy.Egress, pkt{src: "fd00::99", dst: "fd00::2", proto: tcp, sport: 40011, dport: 443, syn: true}, tcShot, ReasonDropSpoof},
		// Drops the engine does not judge (their flow events are not read) stay last.
		{"link-local source off the link", policy.Egress, pkt{src: "fe80::7", dst: "fd00::2", proto: icmp6, icmpType: 135, hopLimit: 255}, tcShot, ReasonDropSpoof},
		{"advertisement from :: refused", policy.Egress, pkt{src: "::", dst: "ff02::1", proto: icmp6, icmpType: 136, hopLimit: 255}, tcShot, ReasonDropSpoof},
		{"MLD report not hop limit 1", policy.Egress, pkt{src: "fe80::7", dst: "ff02::16", proto: icmp6, icmpType: 143, hopLimit: 2}, tcShot, ReasonDropSpoof},
	}
	flows, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	for _, tc := range cases {
		before, _ := d.Counters()
		prog := d.objs.TcToPod
		if tc.dir == policy.Egress {
			prog = d.objs.TcFromPod
		}
		got := runProg(t, prog, ep.Ifindex, tc.p.build(t))
		after, _ := d.Counters()
		if got != tc.want {
			t.Errorf("%s: verdict %d, want %d", tc.name, got, tc.want)
		}
		if after[tc.reason].Packets != before[tc.reason].Packets+1 {
			t.Errorf("%s: counter %q did not move (%d -> %d)", tc.name, tc.reason, before[tc.reason].Packets, after[tc.reason].Packets)
		}
		// The engine must agree with the datapath, rule included.
		if tc.reason == ReasonForwardPolicy || tc.reason == ReasonDropDefaultDeny || tc.reason == ReasonDropDeny {
			dec := st.Decide(netip.MustParseAddr(tc.p.src), netip.MustParseAddr(tc.p.dst), tc.p.proto, portOf(tc.p))
			engineAllows := dec.Outcome == policy.OutcomeAllowed
			if engineAllows != (got == tcOK) {
				t.Errorf("%s: engine says %s (%s), datapath %d", tc.name, dec.Outcome, dec.Reason(), got)
			}
			f := readFlow(t, flows)
			if f.Reason != tc.reason {
				t.Errorf("%s: flow event reason %q, want %q", tc.name, f.Reason, tc.reason)
			}
			wantRule := policy.RuleNone
			if dec.Rule != nil {
				wantRule = dec.Rule.ID
			}
			if f.Rule != wantRule {
				t.Errorf("%s: flow event rule %d, engine's deciding rule %d (%s)", tc.name, f.Rule, wantRule, dec.Rule)
			}
		}
	}
}

func portOf(p pkt) uint16 {
	if p.proto == policy.ProtoICMP || p.proto == policy.ProtoICMPv6 {
		return uint16(p.icmpType)
	}
	return p.dport
}

func readFlow(t testing.TB, r *FlowReader) Flow {
	t.Helper()
	f, err := r.Read(time.Now().Add(2 * time.Second))
	if err != nil {
		t.Fatalf("read flow event: %v", err)
	}
	return f
}

func TestConntrackRepliesAndRevocation(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	in := func(p pkt) uint32 { return runProg(t, d.objs.TcToPod, ep.Ifindex, p.build(t)) }
	out := func(p pkt) uint32 { return runProg(t, d.objs.TcFromPod, ep.Ifindex, p.build(t)) }

	// b opens a connection to a:80; a's egress allows nothing towards b:40100, but the reply
	// passes by conntrack.
	if v := in(pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 40100, dport: 80, syn: true}); v != tcOK {
		t.Fatalf("SYN: %d", v)
	}
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 80, dport: 40100, syn: true, ack: true}); v != tcOK {
		t.Fatalf("SYN-ACK reply dropped: %d", v)
	}
	// Without the flow, the same packet from a is not a reply and egress denies it.
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 80, dport: 40101, syn: true, ack: true}); v != tcShot {
		t.Fatalf("untracked packet passed: %d", v)
	}
	// Related ICMP: an error about the flow from b passes back into a's reply path.
	// Echo reply to a's echo request to b: a's egress does not allow ICMP, so it is dropped;
	// b's echo to a is allowed and a's reply passes by conntrack.
	if v := in(pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoICMP, icmpType: 8}); v != tcOK {
		t.Fatalf("echo request: %d", v)
	}
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoICMP, icmpType: 0}); v != tcOK {
		t.Fatalf("echo reply dropped: %d", v)
	}

	// Revoke: the policy no longer allows port 80. The next packet of the open connection in its
	// original direction is dropped, and so are its replies after that.
	st2 := compileYAML(t, unitCluster(), `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`)
	programA(t, d, st2, ep.Ifindex)
	if v := in(pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 40100, dport: 80, ack: true}); v != tcShot {
		t.Fatalf("established flow not cut after revoke: %d", v)
	}
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 80, dport: 40100, ack: true}); v != tcShot {
		t.Fatalf("reply of a cut flow passed: %d", v)
	}
}

func TestFragments(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	in := func(p pkt) uint32 { return runProg(t, d.objs.TcToPod, ep.Ifindex, p.build(t)) }
	for _, fam := range []struct{ name, b, a string }{{"ipv4", "10.0.0.2", "10.0.0.1"}, {"ipv6", "fd00::2", "fd00::1"}} {
		t.Run(fam.name, func(t *testing.T) {
			first := pkt{src: fam.b, dst: fam.a, proto: policy.ProtoUDP, sport: 40200, dport: 53, fragID: 7, fragMF: true, payload: 64}
			if v := in(first); v != tcOK {
				t.Fatalf("first fragment of an allowed flow: %d", v)
			}
			later := pkt{src: fam.b, dst: fam.a, proto: policy.ProtoUDP, fragID: 7, fragOffset: 10}
			if v := in(later); v != tcOK {
				t.Fatalf("later fragment of an allowed flow: %d", v)
			}
			denied := pkt{src: fam.b, dst: fam.a, proto: policy.ProtoUDP, sport: 40200, dport: 54, fragID: 8, fragMF: true, payload: 64}
			if v := in(denied); v != tcShot {
				t.Fatalf("first fragment of a denied flow: %d", v)
			}
			before, _ := d.Counters()
			if v := in(pkt{src: fam.b, dst: fam.a, proto: policy.ProtoUDP, fragID: 8, fragOffset: 10}); v != tcShot {
				t.Fatalf("later fragment of a denied flow: %d", v)
			}
			if v := in(pkt{src: fam.b, dst: fam.a, proto: policy.ProtoUDP, fragID: 99, fragOffset: 10}); v != tcShot {
				t.Fatalf("later fragment without a first: %d", v)
			}
			after, _ := d.Counters()
			if got := after[ReasonDropFragNoFirst].Packets - before[ReasonDropFragNoFirst].Packets; got != 2 {
				t.Errorf("fragment drops counted %d, want 2", got)
			}
		})
	}
}

func TestNotAnEndpointAndMalformed(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	other := testLink(t, fmt.Sprintf("npo%d", os.Getpid()%100000))
	frame := pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 1, dport: 80, syn: true}.build(t)
	before, _ := d.Counters()
	if v := runProg(t, d.objs.TcToPod, other, frame); v != tcShot {
		t.Errorf("packet on a non-endpoint interface: %d", v)
	}
	// The kernel needs at least an Ethernet header (and refuses an IPv4 ethertype with nothing
	// after it): a bare header of another type is neither IP nor ARP and is dropped; an IPv4
	// header cut short is malformed.
	bare := append([]byte(nil), frame[:14]...)
	bare[12], bare[13] = 0x88, 0xb5 // local experimental ethertype
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, bare); v != tcShot {
		t.Errorf("14-byte non-IP frame: %d", v)
	}
	// The kernel also wants a whole IPv4 header; a header claiming 60 bytes of options in a
	// 20-byte packet is as short as it can get past that.
	short := append([]byte(nil), frame[:14+20]...)
	short[14] = 0x4f
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, short); v != tcShot {
		t.Errorf("short packet: %d", v)
	}
	truncated := frame[:14+20+4] // IPv4 header, TCP header cut short
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, truncated); v != tcShot {
		t.Errorf("truncated TCP header: %d", v)
	}
	after, _ := d.Counters()
	if after[ReasonDropNotEndpoint].Packets != before[ReasonDropNotEndpoint].Packets+1 {
		t.Errorf("not-an-endpoint drop not counted")
	}
	if after[ReasonDropMalformed].Packets != before[ReasonDropMalformed].Packets+2 {
		t.Errorf("malformed drops not counted: %d", after[ReasonDropMalformed].Packets-before[ReasonDropMalformed].Packets)
	}
	// ARP over Ethernet/IPv4: from the pod only with its own sender address.
	arp := make([]byte, 42)
	arp[12], arp[13] = 0x08, 0x06
	copy(arp[14:22], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	copy(arp[28:32], []byte{10, 0, 0, 1})
	if v := runProg(t, d.objs.TcFromPod, ep.Ifindex, arp); v != tcOK {
		t.Errorf("the pod's ARP dropped: %d", v)
	}
	copy(arp[28:32], []byte{10, 0, 0, 2})
	if v := runProg(t, d.objs.TcFromPod, ep.Ifindex, arp); v != tcShot {
		t.Errorf("ARP with another pod's sender address: %d", v)
	}
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, arp); v != tcOK {
		t.Errorf("ARP towards the pod dropped: %d", v)
	}
}

func TestConvertRoundTrip(t *testing.T) {
	st := compileYAML(t, unitCluster(), unitPolicies)
	es, _ := st.Endpoint(policy.EndpointKey{Namespace: "app", Name: "a"})
	e, err := ToBPF(7, es)
	if err != nil {
		t.Fatal(err)
	}
	back := FromBPF(e)
	got := map[string]bool{}
	for _, de := range back {
		got[fmt.Sprintf("%s %s %s %d", de.Direction, de.Key, de.Verdict, de.Rule)] = true
	}
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		for k, v := range es.Dir(d).Entries {
			if !got[fmt.Sprintf("%s %s %s %d", d, k, v.Verdict, v.Rules[0])] {
				t.Errorf("%s %s %s rule %d lost in the round trip; got %v", d, k, v.Verdict, v.Rules[0], back)
			}
		}
	}
	if e.Flags != flagEnforceIngress|flagEnforceEgress {
		t.Errorf("flags %d", e.Flags)
	}
}

func TestFlattenAndBlocks(t *testing.T) {
	allow := func(r uint32) interval { return interval{val: valueOf(policy.VerdictAllow, r)} }
	a := allow(5)
	a.lo, a.hi = 10, 20
	deny := interval{lo: 15, hi: 30, val: valueOf(policy.VerdictDeny, 9)}
	out := flatten([]interval{a, deny})
	if len(out) != 2 || out[0].lo != 10 || out[0].hi != 14 || out[1].lo != 15 || out[1].hi != 30 || policy.Verdict(out[1].val.Verdict) != policy.VerdictDeny {
		t.Errorf("flatten: %+v", out)
	}
	blocks := portBlocks(8000, 8010)
	total := 0
	for _, b := range blocks {
		total += 1 << (16 - b[1])
	}
	if total != 11 {
		t.Errorf("blocks %v cover %d ports, want 11", blocks, total)
	}
	if b := portBlocks(0, 65535); len(b) != 1 || b[0][1] != 0 {
		t.Errorf("full range: %v", b)
	}
}

func valueOf(v policy.Verdict, rule uint32) bpf.TcPolicyValue {
	return bpf.TcPolicyValue{RuleId: rule, Verdict: uint8(v)}
}

// TestFlowEventsRateLimited floods drops and checks that events stay within the configured rate
// while the counters still see every packet.
func TestFlowEventsRateLimited(t *testing.T) {
	d := openTest(t, Options{EventsPerSecond: 5})
	ifindex := testLink(t, fmt.Sprintf("npr%d", os.Getpid()%100000))
	ep := programA(t, d, compileYAML(t, unitCluster(), unitPolicies), ifindex)
	flows, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	before, _ := d.Counters()
	frame := pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 1, dport: 80, syn: true}.build(t)
	start := time.Now()
	for i := 0; i < 200; i++ {
		runProg(t, d.objs.TcToPod, ep.Ifindex, frame)
	}
	elapsed := time.Since(start)
	after, _ := d.Counters()
	if got := after[ReasonDropDefaultDeny].Packets - before[ReasonDropDefaultDeny].Packets; got != 200 {
		t.Errorf("counted %d drops, want 200", got)
	}
	events := 0
	for {
		if _, err := flows.Read(time.Now().Add(300 * time.Millisecond)); err != nil {
			break
		}
		events++
	}
	// prog.Run may run on any CPU; each has its own bucket of 5 per second, full at the start
	// and refilled while the loop ran.
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	bound := cpus * 5 * (1 + int(math.Ceil(elapsed.Seconds())))
	if events == 0 || events > bound {
		t.Errorf("%d flow events for 200 drops at 5 per second on each of %d CPUs in %s (at most %d)", events, cpus, elapsed, bound)
	}
}

const ipBlockPolicies = `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: app}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.3/32]}}]
    ports: [{port: 80, protocol: TCP}, {port: 6000, endPort: 6003, protocol: UDP}]
  - from: [{ipBlock: {cidr: 8.8.0.0/16}}]
  egress:
  - to: [{ipBlock: {cidr: "fd00::/120"}}]
    ports: [{port: 443}]
`

// TestEngineAndDatapathAgree sends random flows through the programs and compares, for every
// flow, the verdict class and the deciding rule (from the flow event) with the engine's Decide,
// for Cilium and Kubernetes (ipBlock) policies. Ports are drawn from every range edge of the
// compiled state (lo-1, lo, hi, hi+1) and from a few others.
func TestEngineAndDatapathAgree(t *testing.T) {
	for _, tc := range []struct{ name, yaml string }{{"cilium", unitPolicies}, {"ipblock", ipBlockPolicies}} {
		t.Run(tc.name, func(t *testing.T) {
			d := openTest(t, Options{EventsPerSecond: 1 << 30})
			ifindex := testLink(t, fmt.Sprintf("npt%d", os.Getpid()%100000))
			st := compileYAML(t, unitCluster(), tc.yaml)
			ep := programA(t, d, st, ifindex)
			es, _ := st.Endpoint(policy.EndpointKey{Namespace: "app", Name: "a"})
			flows, err := d.Flows()
			if err != nil {
				t.Fatal(err)
			}
			defer flows.Close()
			peers4 := []string{"10.0.0.2", "10.0.0.3", "8.8.8.8", "8.8.4.4", "9.9.9.9", "192.168.100.1", "10.0.0.200"}
			peers6 := []string{"fd00::2", "fd00::3", "2001:db8::1", "fd00::77"}
			protos := []policy.Proto{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP, policy.ProtoICMP}
			ports := []uint16{1, 22, 53, 443, 9090, 40000, 65535}
			for _, ds := range []*policy.DirectionState{&es.Ingress, &es.Egress} {
				for k := range ds.Entries {
					for _, p := range []int{int(k.PortLo) - 1, int(k.PortLo), int(k.PortHi), int(k.PortHi) + 1} {
						if p > 0 && p <= 65535 {
							ports = append(ports, uint16(p))
						}
					}
				}
			}
			rnd := uint32(12345)
			next := func(n int) int { rnd = rnd*1664525 + 1013904223; return int(rnd>>8) % n }
			classes := map[Reason]int{}
			for i := 0; i < 1500; i++ {
				v6 := next(3) == 0
				peer := peers4[next(len(peers4))]
				self := "10.0.0.1"
				proto := protos[next(len(protos))]
				if v6 {
					peer, self = peers6[next(len(peers6))], "fd00::1"
					if proto == policy.ProtoICMP {
						proto = policy.ProtoICMPv6
					}
				}
				p := pkt{proto: proto, sport: uint16(20000 + i), dport: ports[next(len(ports))], syn: true, icmpID: uint16(i + 1)}
				if proto == policy.ProtoICMP || proto == policy.ProtoICMPv6 {
					p.icmpType = []uint8{8, 13, 128}[next(3)]
					if proto == policy.ProtoICMP && p.icmpType == 128 {
						p.icmpType = 8
					}
				}
				dir := policy.Ingress
				prog := d.objs.TcToPod
				p.src, p.dst = peer, self
				if next(2) == 0 {
					dir, prog = policy.Egress, d.objs.TcFromPod
					p.src, p.dst = self, peer
				}
				// Every flow is new: a new allowed flow and every drop make one flow event.
				clearConntrack(t, d)
				got := runProg(t, prog, ep.Ifindex, p.build(t))
				f := readFlow(t, flows)
				dec := st.Decide(netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst), p.proto, portOf(p))
				side := dec.Ingress
				if dir == policy.Egress {
					side = dec.Egress
				}
				want, wantRule := ReasonForwardUnenforced, policy.RuleNone
				if side != nil {
					if side.Match.Entry != nil {
						wantRule = side.Match.Entry.Rules[0]
					}
					switch {
					case side.Outcome == policy.OutcomeAllowed && side.Match.Entry != nil:
						want = ReasonForwardPolicy
					case side.Outcome == policy.OutcomeDenied:
						want = ReasonDropDeny
					case side.Outcome == policy.OutcomeDefaultDenied:
						want = ReasonDropDefaultDeny
					case side.Outcome == policy.OutcomeL7:
						want = ReasonDropNoProxy
					}
				}
				wantVerdict := uint32(tcOK)
				if want.Dropped() {
					wantVerdict = tcShot
				}
				if got != wantVerdict || f.Reason != want || f.Rule != wantRule {
					t.Errorf("%s %s %s:%d -> %s:%d: engine %s rule %d, datapath verdict %d, %s rule %d",
						dir, proto, p.src, p.sport, p.dst, portOf(p), want, wantRule, got, f.Reason, f.Rule)
				}
				classes[want]++
			}
			for _, r := range []Reason{ReasonForwardPolicy, ReasonDropDefaultDeny} {
				if classes[r] == 0 {
					t.Errorf("no flow of class %q was drawn: %v", r, classes)
				}
			}
		})
	}
}

// clearConntrack removes every conntrack entry, so that the next packet is a new flow, and
// returns how many there were.
func clearConntrack(t testing.TB, d *Datapath) int {
	t.Helper()
	var k bpf.TcCtKey
	var v bpf.TcCtValue
	var keys []bpf.TcCtKey
	it := d.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for _, key := range keys {
		if err := d.objs.Conntrack.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Error(err) // not Fatal: also called from the traffic goroutine of a test
		}
	}
	return len(keys)
}

// TestRelatedICMPError checks that an ICMP error about a tracked flow passes by conntrack while
// one about an unknown flow is policy-checked (and here dropped).
func TestRelatedICMPError(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	// a opens a connection to b:443 (egress allowed).
	if v := runProg(t, d.objs.TcFromPod, ep.Ifindex, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 42000, dport: 443, syn: true}.build(t)); v != tcOK {
		t.Fatalf("SYN: %d", v)
	}
	icmpError := func(innerSport uint16) []byte {
		inner := pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: innerSport, dport: 443, syn: true}.build(t)[14:]
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: net.IP{10, 0, 0, 2}, DstIP: net.IP{10, 0, 0, 1}, Protocol: layers.IPProtocolICMPv4}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)} // port unreachable
		return serialize(t, []gopacket.SerializableLayer{eth, ip, icmp, gopacket.Payload(inner[:28])})
	}
	before, _ := d.Counters()
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, icmpError(42000)); v != tcOK {
		t.Errorf("ICMP error about a tracked flow dropped: %d", v)
	}
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, icmpError(42001)); v != tcShot {
		t.Errorf("ICMP error about an unknown flow passed: %d", v)
	}
	after, _ := d.Counters()
	if after[ReasonForwardRelated].Packets != before[ReasonForwardRelated].Packets+1 {
		t.Errorf("related counter did not move")
	}
}
