package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/policy"
)

// servfail asks the proxy for name and wants SERVFAIL with the query's ID and question, and an
// event whose Refused says why.
func servfail(t *testing.T, p *Proxy, ev *events, network, name, why string) {
	t.Helper()
	q, r, err := ask(network, proxyAddr(p), name, dns.TypeA, 0)
	if err != nil {
		t.Fatalf("%s %s: %v", network, name, err)
	}
	if r.Rcode != dns.RcodeServerFailure || r.Id != q.Id || len(r.Question) != 1 || r.Question[0] != q.Question[0] || len(r.Answer) != 0 {
		t.Errorf("%s %s: got\n%v\nwant SERVFAIL with the query's ID and question", network, name, r)
	}
	e := ev.wait(t, "for "+network+" "+name, func(q Query) bool { return q.Name == name && q.Proto.String() == strings.ToUpper(network) })
	if e.Rcode != dns.RcodeServerFailure || !strings.Contains(e.Refused, why) || len(e.Answers) != 0 {
		t.Errorf("%s %s: event %+v, want SERVFAIL because %q", network, name, e, why)
	}
}

// TestNoPolicyYet: before the pod's policy is computed (Decide false, or no Decide), SERVFAIL,
// never REFUSED, which musl takes as final.
func TestNoPolicyYet(t *testing.T) {
	notYet := func(_, _ netip.AddrPort, _ policy.Proto) (policy.Decision, bool) { return policy.Decision{}, false }
	p, srv, ev := startLoopback(t, Options{Decide: notYet})
	for _, network := range []string{"udp", "tcp"} {
		servfail(t, p, ev, network, nameA, "no policy is computed yet")
	}
	if got := srv.queries(nameA); len(got) != 0 {
		t.Errorf("the server saw queries without a policy: %v", got)
	}
	// No Decide at all is the same.
	bare := startPlain(t, Options{OnQuery: ev.add}, srv.addr)
	servfail(t, bare, ev, "udp", nameA, "no policy is computed yet")
}

// TestOriginalDestinationUnreadable: a datagram without its original destination (the listener
// stops asking for it here) gets SERVFAIL.
func TestOriginalDestinationUnreadable(t *testing.T) {
	p, srv, ev := startLoopback(t, Options{})
	raw, err := p.PacketConns()[0].SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 0) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	servfail(t, p, ev, "udp", nameA, "the original destination is unreadable")
	if got := srv.queries(nameA); len(got) != 0 {
		t.Errorf("the server saw a query whose destination was unknown: %v", got)
	}
}

// TestUpstreamError: a server that refuses the query's packets (ICMP port unreachable for UDP, a
// reset for TCP) gives SERVFAIL, not silence: only a timeout goes unanswered.
func TestUpstreamError(t *testing.T) {
	// A port nobody listens on, in both protocols.
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(l.LocalAddr().String())
	l.Close()
	ev := &events{}
	p := startPlain(t, Options{Decide: decideAsClient(testState(t)), OnQuery: ev.add}, closed)
	servfail(t, p, ev, "udp", nameA, "connection refused")
	servfail(t, p, ev, "tcp", nameA, "connection refused")
}

// TestLearnError: when the answer's addresses cannot be learned, the pod gets SERVFAIL: an
// answer released before the datapath knows its addresses would have the pod's first connection
// dropped.
func TestLearnError(t *testing.T) {
	learn := func(netip.AddrPort, string, []netip.Addr, time.Duration) error { return errors.New("ipcache full") }
	p, _, ev := startLoopback(t, Options{Learn: learn})
	servfail(t, p, ev, "udp", nameA, "learn the addresses of a.example.com.: ipcache full")
}

// TestUnexpectedName: an answer with a record the CNAME chain from the query name does not lead
// to is refused with SERVFAIL, and nothing of it is learned.
func TestUnexpectedName(t *testing.T) {
	var learned atomic.Bool
	learn := func(netip.AddrPort, string, []netip.Addr, time.Duration) error { learned.Store(true); return nil }
	p, _, ev := startLoopback(t, Options{Learn: learn})
	servfail(t, p, ev, "udp", nameBad, "unexpected name other.example.com.")
	if learned.Load() {
		t.Error("the addresses of an unexpected name were learned")
	}
}
