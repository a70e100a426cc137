package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/netpact/netpact/policy"
)

// Edges of the per-packet rules that let traffic past policy in review: echo replies tracked
// without their identifier, the unspecified address as a source, IPv6 later fragments parsed
// as headers, a response mark anyone could set, and a tcx program ahead of netpact's.

// TestEchoRepliesMatchTheirIdentifier: b's echo request to a (allowed) lets a answer that
// request, with its identifier, and nothing else: a's egress allows no ICMP.
func TestEchoRepliesMatchTheirIdentifier(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	in := func(p pkt) uint32 { return runProg(t, d.objs.TcToPod, ep.Ifindex, p.build(t)) }
	out := func(p pkt) uint32 { return runProg(t, d.objs.TcFromPod, ep.Ifindex, p.build(t)) }
	if v := in(pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoICMP, icmpType: 8, icmpID: 7}); v != tcOK {
		t.Fatalf("echo request: %d", v)
	}
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoICMP, icmpType: 0, icmpID: 7}); v != tcOK {
		t.Errorf("the reply with the request's identifier was dropped: %d", v)
	}
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoICMP, icmpType: 0, icmpID: 9}); v != tcShot {
		t.Errorf("an echo reply with another identifier passed as a reply: %d", v)
	}
}

// TestUnspecifiedSourceOfAMissingFamily: an endpoint without an IPv6 address has none; "::" is
// not its address (nor 0.0.0.0 for one without IPv4).
func TestUnspecifiedSourceOfAMissingFamily(t *testing.T) {
	d := openTest(t, Options{})
	st := compileYAML(t, unitCluster(), unitPolicies)
	key := policy.EndpointKey{Namespace: "app", Name: "c"}
	es, _ := st.Endpoint(key)
	ident, _ := st.Identity(key)
	if err := d.SetIPCache(st.IPCache("node-1")); err != nil {
		t.Fatal(err)
	}
	v4only := testLink(t, fmt.Sprintf("npu%d", os.Getpid()%100000))
	v6only := testLink(t, fmt.Sprintf("npv%d", os.Getpid()%100000))
	for _, ep := range []Endpoint{
		{Ifindex: v4only, Ifname: "v4only", ID: 3, Identity: ident.ID, IPv4: netip.MustParseAddr("10.0.0.3")},
		{Ifindex: v6only, Ifname: "v6only", ID: 4, Identity: ident.ID, IPv6: netip.MustParseAddr("fd00::3")},
	} {
		if err := d.UpsertEndpoint(ep, es); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := d.Counters()
	if v := runProg(t, d.objs.TcFromPod, v4only, pkt{src: "::", dst: "fd00::2", proto: policy.ProtoUDP, sport: 1, dport: 53}.build(t)); v != tcShot {
		t.Errorf("an IPv4-only pod sent from ::: %d", v)
	}
	if v := runProg(t, d.objs.TcFromPod, v6only, pkt{src: "0.0.0.0", dst: "10.0.0.2", proto: policy.ProtoUDP, sport: 1, dport: 53}.build(t)); v != tcShot {
		t.Errorf("an IPv6-only pod sent from 0.0.0.0: %d", v)
	}
	after, _ := d.Counters()
	if got := after[ReasonDropSpoof].Packets - before[ReasonDropSpoof].Packets; got != 2 {
		t.Errorf("%d spoofed-source drops, want 2", got)
	}
}

// ipv6Fragment builds an IPv6 fragment from 10.0.0.2's IPv6 peer to a: a fragment header whose
// next header is 60 (destination options), then body.
func ipv6Fragment(id uint32, offset8 uint16, more bool, body []byte) []byte {
	frame := make([]byte, 14, 14+40+8+len(body))
	copy(frame[0:6], []byte{2, 0, 0, 0, 0, 2})
	copy(frame[6:12], []byte{2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(frame[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(8+len(body)))
	ip[6], ip[7] = 44, 64
	src, dst := netip.MustParseAddr("fd00::2").As16(), netip.MustParseAddr("fd00::1").As16()
	copy(ip[8:24], src[:])
	copy(ip[24:40], dst[:])
	fh := make([]byte, 8)
	fh[0] = 60
	offmf := offset8 << 3
	if more {
		offmf |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], offmf)
	binary.BigEndian.PutUint32(fh[4:], id)
	frame = append(frame, ip...)
	frame = append(frame, fh...)
	return append(frame, body...)
}

// TestIPv6LaterFragmentIsNotParsedAsHeaders: the first fragment carries destination options and
// UDP to a's allowed port 53; the later fragment's bytes happen to look like more destination
// options. They are data: the fragment passes on the first fragment's record.
func TestIPv6LaterFragmentIsNotParsedAsHeaders(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	destOpts := []byte{17, 0, 1, 4, 0, 0, 0, 0} // next header UDP, PadN
	udp := []byte{0x9c, 0x40, 0, 53, 0, 40, 0, 0}
	first := ipv6Fragment(0x1234, 0, true, append(append(append([]byte{}, destOpts...), udp...), make([]byte, 8)...))
	looksLikeHeaders := []byte{60, 0, 1, 4, 0, 0, 0, 0, 60, 0, 1, 4, 0, 0, 0, 0}
	later := ipv6Fragment(0x1234, 3, false, looksLikeHeaders)
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, first); v != tcOK {
		t.Fatalf("first fragment: %d", v)
	}
	before, _ := d.Counters()
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, later); v != tcOK {
		t.Errorf("later fragment whose data looks like headers: %d", v)
	}
	after, _ := d.Counters()
	if after[ReasonDropMalformed].Packets != before[ReasonDropMalformed].Packets {
		t.Error("the later fragment was parsed as headers and called malformed")
	}
	// A later fragment of a datagram whose first fragment was denied (port 54) has no record.
	udpDenied := []byte{0x9c, 0x40, 0, 54, 0, 40, 0, 0}
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, ipv6Fragment(0x99, 0, true, append(append(append([]byte{}, destOpts...), udpDenied...), make([]byte, 8)...))); v != tcShot {
		t.Errorf("denied first fragment: %d", v)
	}
	if v := runProg(t, d.objs.TcToPod, ep.Ifindex, ipv6Fragment(0x99, 3, false, looksLikeHeaders)); v != tcShot {
		t.Errorf("later fragment of a denied datagram: %d", v)
	}
}

// TestResponseMarkIsNotAConstant: a packet carrying the mark an older datapath used for its own
// ICMP responses is judged like any other; only the loader's random mark passes.
func TestResponseMarkIsNotAConstant(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	frame := pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 40000, dport: 81, syn: true}.build(t)
	run := func(mark uint32) uint32 {
		ctx := make([]uint32, 11)
		ctx[2], ctx[10] = mark, uint32(ep.Ifindex)
		ret, err := d.objs.TcToPod.Run(&ebpf.RunOptions{Data: frame, Context: ctx})
		if err != nil {
			t.Fatalf("prog.Run: %v", err)
		}
		return ret
	}
	if d.cfg.ResponseMark == 0 || d.cfg.ResponseMark == 0x6e700001 {
		t.Fatalf("response mark %#x", d.cfg.ResponseMark)
	}
	if v := run(0x6e700001); v != tcShot {
		t.Errorf("a packet with the old constant mark skipped policy: %d", v)
	}
	if v := run(d.cfg.ResponseMark); v != tcOK {
		t.Errorf("the datapath's own response mark did not pass: %d", v)
	}
}

// TestAttachedAheadOfOtherTCXPrograms: a tcx program already on the pod's veth that passes
// everything must not run before netpact's: netpact attaches at the head of the chain.
func TestAttachedAheadOfOtherTCXPrograms(t *testing.T) {
	n := newTrafficNode(t)
	a := n.pods["a"]
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}}) // TCX_PASS
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: a.Ifindex, Program: pass, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := openTest(t, Options{})
	n.apply(t, d, egressDeniedA)
	c := n.pods["c"]
	var ul net.PacketConn
	if err := c.Do(func() (err error) { ul, err = net.ListenPacket("udp4", ":7001"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	if err := a.Do(func() error {
		conn, err := net.Dial("udp4", net.JoinHostPort(c.IPv4.String(), "7001"))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("past netpact"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ul.SetReadDeadline(time.Now().Add(probeTimeout))
	buf := make([]byte, 64)
	if k, _, err := ul.ReadFrom(buf); err == nil {
		t.Errorf("a's datagram %q passed egress default deny: the other tcx program ran first", buf[:k])
	}
}

// TestRecoveredRepliesOnlyForAllowedFlows: with no conntrack entry at all, a mid-stream TCP
// packet from a passes only as the reply of a flow a's ingress allows (b to a:80); a revoked
// flow's entry is kept, so its packets are never taken for replies of an evicted one.
func TestRecoveredRepliesOnlyForAllowedFlows(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	out := func(p pkt) uint32 { return runProg(t, d.objs.TcFromPod, ep.Ifindex, p.build(t)) }
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 80, dport: 40200, ack: true}); v != tcOK {
		t.Errorf("a's mid-stream packet from port 80 (b may reach a:80): %d", v)
	}
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 81, dport: 40201, ack: true}); v != tcShot {
		t.Errorf("a's mid-stream packet from port 81 (nothing allows b to a:81): %d", v)
	}
	if v := out(pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 80, dport: 40202, syn: true}); v != tcShot {
		t.Errorf("a SYN is never a reply: %d", v)
	}
}

// TestEntriesThatStayAllowedNeverDrop: flipping a's policy between 8000-8010 and 8000-8015
// rewrites the port blocks that cover 8008 (8008-8009 in one, 8000-8015 in the other); a packet
// to 8008 running on another CPU all the while must never be dropped, which holds only when new
// entries are written before old ones are deleted.
func TestEntriesThatStayAllowedNeverDrop(t *testing.T) {
	policyFor := func(hi int) string {
		return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "8000", endPort: %d, protocol: TCP}]}]
`, hi)
	}
	d, st1, ep := unitSetup(t, policyFor(8010))
	st2 := compileYAML(t, unitCluster(), policyFor(8015))
	key := policy.EndpointKey{Namespace: "app", Name: "a"}
	es1, _ := st1.Endpoint(key)
	es2, _ := st2.Endpoint(key)
	frame := pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 40000, dport: 8008, syn: true}.build(t)
	// The traffic goroutine reports how many packets it sent and dropped, and the first failed
	// run: a run that errors judged nothing, so the test cannot pass on it.
	type traffic struct {
		runs, drops int
		err         error
	}
	stop, started := make(chan struct{}), make(chan struct{})
	done := make(chan traffic, 1)
	go func() {
		var tr traffic
		ctx := make([]uint32, 11)
		ctx[10] = uint32(ep.Ifindex)
		for {
			select {
			case <-stop:
				done <- tr
				return
			default:
			}
			// A new flow each time: conntrack must not hide the policy lookup.
			ret, err := d.objs.TcToPod.Run(&ebpf.RunOptions{Data: frame, Context: ctx, Repeat: 1})
			if err != nil {
				tr.err = fmt.Errorf("run %d of tc_to_pod: %w", tr.runs+1, err)
				done <- tr
				return
			}
			if tr.runs++; tr.runs == 1 {
				close(started)
			}
			if ret != tcOK {
				tr.drops++
			}
			clearConntrack(t, d)
		}
	}()
	// Swap only once packets flow, so the swaps are raced against traffic, not run before it.
	select {
	case <-started:
	case tr := <-done:
		t.Fatal(tr.err)
	}
	var upsertErr error
	for i := 0; i < 300 && upsertErr == nil; i++ {
		es := es1
		if i%2 == 0 {
			es = es2
		}
		upsertErr = d.UpsertEndpoint(ep, es)
	}
	close(stop)
	tr := <-done // before any Fatal: the goroutine reports through t
	if upsertErr != nil {
		t.Fatal(upsertErr)
	}
	if tr.err != nil {
		t.Fatal(tr.err)
	}
	if tr.drops > 0 {
		t.Errorf("a packet to 8008, allowed by both policies, was dropped %d of %d times while they were swapped", tr.drops, tr.runs)
	}
}
