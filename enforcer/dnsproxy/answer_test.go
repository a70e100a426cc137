package dnsproxy

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// learned records what Learn got.
type learned struct {
	mu    sync.Mutex
	calls []learnCall
}

type learnCall struct {
	src   netip.AddrPort
	qname string
	addrs []netip.Addr
	ttl   time.Duration
}

func (l *learned) learn(src netip.AddrPort, qname string, addrs []netip.Addr, ttl time.Duration) error {
	l.mu.Lock()
	l.calls = append(l.calls, learnCall{src, qname, slices.Clone(addrs), ttl})
	l.mu.Unlock()
	return nil
}

func (l *learned) of(qname string) []learnCall {
	return matching(&l.mu, &l.calls, func(c learnCall) bool { return c.qname == qname })
}

// TestAnswerCNAMEChain: an allowed answer comes back whole with the query's ID; the addresses at
// the end of its CNAME chain are learned for the query name (lower case, trailing dot) with the
// lowest TTL of the chain, before the pod gets them.
func TestAnswerCNAMEChain(t *testing.T) {
	var l learned
	p, srv, ev := startLoopback(t, Options{Learn: l.learn})
	for _, network := range []string{"udp", "tcp"} {
		q, r, err := ask(network, proxyAddr(p), "WWW.Example.com.", dns.TypeA, 0)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if r.Rcode != dns.RcodeSuccess || r.Id != q.Id || len(r.Answer) != 4 || r.Question[0] != q.Question[0] {
			t.Fatalf("%s: got\n%v\nwant the server's 4 records with ID %d", network, r, q.Id)
		}
		if got := srv.queries(nameChain); len(got) == 0 || got[len(got)-1].tcp != (network == "tcp") {
			t.Errorf("%s: the server saw %v: the query must keep its protocol", network, got)
		}
	}
	calls := l.of(nameChain)
	if len(calls) != 2 {
		t.Fatalf("Learn called %d times for %s, want 2 (once a query): %+v", len(calls), nameChain, l.calls)
	}
	for _, c := range calls {
		if !slices.Equal(c.addrs, chainAddrs) || c.ttl != chainTTL || !c.src.Addr().IsLoopback() {
			t.Errorf("learned %+v, want %v with TTL %s from the client", c, chainAddrs, chainTTL)
		}
	}
	e := ev.named(t, nameChain)
	if e.Rcode != dns.RcodeSuccess || !slices.Equal(e.Answers, chainAddrs) || e.TTL != chainTTL || !e.Verdict.Allowed || e.Verdict.Index != 0 || e.Refused != "" {
		t.Errorf("event %+v", e)
	}
	// An answer without addresses passes as it is, and nothing is learned.
	if _, r, err := ask("udp", proxyAddr(p), nameNX, dns.TypeA, 0); err != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("NXDOMAIN from the server: %v %v", r, err)
	}
	if calls := l.of(nameNX); len(calls) != 0 {
		t.Errorf("learned %+v from an NXDOMAIN", calls)
	}
}

// TestAnswerCompression: an answer over 512 bytes uncompressed goes compressed (Cilium #9755:
// uncompressed, answers of more than about 24 A records did not fit); a small one as it is.
func TestAnswerCompression(t *testing.T) {
	p, _, _ := startLoopback(t, Options{})
	for _, tc := range []struct {
		name       string
		compressed bool
	}{{nameBig, true}, {nameA, false}} {
		m := new(dns.Msg).SetQuestion(tc.name, dns.TypeA)
		m.SetEdns0(4096, false)
		raw := exchangeRaw(t, "udp", proxyAddr(p), m)
		r := new(dns.Msg)
		if err := r.Unpack(raw); err != nil {
			t.Fatal(err)
		}
		r.Compress = false
		plain := r.Len()
		if r.Truncated || (len(raw) < plain) != tc.compressed {
			t.Errorf("%s: %d bytes on the wire, %d uncompressed, truncated %v: want compressed %v", tc.name, len(raw), plain, r.Truncated, tc.compressed)
		}
	}
}

// exchangeRaw sends m and returns the reply's bytes.
func exchangeRaw(t *testing.T, network, addr string, m *dns.Msg) []byte {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &dns.Conn{Conn: c, UDPSize: 65535}
	if err := co.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, err := co.ReadMsgHeader(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUpstreamTimeout: a server that does not answer within UpstreamTimeout leaves the pod
// without an answer (its resolver retries), as Cilium's proxy does; the event says so.
func TestUpstreamTimeout(t *testing.T) {
	p, srv, ev := startLoopback(t, Options{UpstreamTimeout: 200 * time.Millisecond})
	for _, network := range []string{"udp", "tcp"} {
		m := new(dns.Msg).SetQuestion(nameSlow, dns.TypeA)
		c := &dns.Client{Net: network, Timeout: time.Second}
		start := time.Now()
		r, _, err := c.Exchange(m, proxyAddr(p))
		if err == nil || !isTimeout(err) {
			t.Errorf("%s: got %v, %v; want no answer (a timeout)", network, r, err)
		}
		if time.Since(start) < 900*time.Millisecond {
			t.Errorf("%s: the exchange ended after %s, before the client's timeout: something answered", network, time.Since(start))
		}
	}
	e := ev.named(t, nameSlow)
	if e.Rcode != NoAnswer || !strings.Contains(e.Refused, "within 200ms: none sent") {
		t.Errorf("event %+v: want no answer because of the timeout", e)
	}
	if got := srv.queries(nameSlow); len(got) != 2 {
		t.Errorf("the server saw %d queries, want 2 (one a protocol): %v", len(got), got)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestTruncatedThenTCP: a truncated UDP answer (TC) reaches the pod as it is; the pod's retry of
// the same query over TCP goes to the server over TCP and gets the whole answer (Cilium #31197).
func TestTruncatedThenTCP(t *testing.T) {
	var l learned
	p, srv, _ := startLoopback(t, Options{Learn: l.learn})
	_, r, err := ask("udp", proxyAddr(p), nameMany, dns.TypeA, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || len(r.Answer) >= manyRecords {
		t.Fatalf("over UDP: truncated %v with %d records, want the server's truncated answer", r.Truncated, len(r.Answer))
	}
	_, r, err = ask("tcp", proxyAddr(p), nameMany, dns.TypeA, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != manyRecords {
		t.Fatalf("over TCP: truncated %v with %d records, want all %d", r.Truncated, len(r.Answer), manyRecords)
	}
	got := srv.queries(nameMany)
	if len(got) != 2 || got[0].tcp || !got[1].tcp {
		t.Errorf("the server saw %+v, want one UDP query then one TCP", got)
	}
	if calls := l.of(nameMany); len(calls) != 2 || len(calls[1].addrs) != manyRecords {
		t.Errorf("learned %d times (%+v), want twice, the second with all %d addresses", len(calls), calls, manyRecords)
	}
}

// TestSharedUpstreamParallel: like musl, a pod sends A and AAAA queries at once from one port,
// here even with the same ID: both go to the server from one socket, and each answer comes back
// to its own query.
func TestSharedUpstreamParallel(t *testing.T) {
	p, srv, _ := startLoopback(t, Options{})
	c, err := net.Dial("udp", proxyAddr(p))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &dns.Conn{Conn: c, UDPSize: 65535}
	want := map[uint16]string{dns.TypeA: "192.0.2.1", dns.TypeAAAA: "2001:db8::1"}
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m := new(dns.Msg).SetQuestion(namePair, qt)
		m.Id = 4242
		if err := co.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	for range 2 {
		r, err := co.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		qt := r.Question[0].Qtype
		if r.Id != 4242 || len(r.Answer) != 1 || !strings.HasSuffix(r.Answer[0].String(), want[qt]) {
			t.Errorf("answer to %s: %v", dns.TypeToString[qt], r)
		}
		delete(want, qt)
	}
	if len(want) != 0 {
		t.Errorf("no answer to %v", want)
	}
	got := srv.queries(namePair)
	if len(got) != 2 || got[0].from != got[1].from {
		t.Errorf("the server saw %+v: want both queries from one socket", got)
	}
}
