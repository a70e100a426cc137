package dnsproxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// sendSlow sends queries for nameSlow from addr's side over UDP and waits until the server has
// seen want of them in all: they are in flight.
func sendSlow(t *testing.T, p *Proxy, srv *testServer, host string, n, want int) {
	t.Helper()
	for range n {
		c, err := net.Dial("udp", net.JoinHostPort(host, itoa(p.Port())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		b, _ := new(dns.Msg).SetQuestion(nameSlow, dns.TypeA).Pack()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(3 * time.Second); len(srv.queries(nameSlow)) < want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server saw %d slow queries, want %d", len(srv.queries(nameSlow)), want)
		}
	}
}

func itoa(port uint16) string { return strconv.Itoa(int(port)) }

// TestQueriesInFlightBound: a pod with PerSource queries in flight gets SERVFAIL at once for
// one more, while another pod's go on; the node's Total bounds all pods together.
func TestQueriesInFlightBound(t *testing.T) {
	t.Run("per source", func(t *testing.T) {
		p, srv, ev := startLoopback(t, Options{PerSource: 2, UpstreamTimeout: 5 * time.Second})
		sendSlow(t, p, srv, "127.0.0.1", 2, 2)
		servfail(t, p, ev, "udp", nameA, "too many queries in flight: the source has 2 (most 2)")
		if _, r, err := ask("udp", net.JoinHostPort("::1", itoa(p.Port())), nameA, dns.TypeA, 0); err != nil || r.Rcode != dns.RcodeSuccess {
			t.Errorf("another source: %v %v, want an answer", r, err)
		}
	})
	t.Run("total", func(t *testing.T) {
		p, srv, ev := startLoopback(t, Options{PerSource: 10, Total: 2, UpstreamTimeout: 5 * time.Second})
		sendSlow(t, p, srv, "127.0.0.1", 1, 1)
		sendSlow(t, p, srv, "::1", 1, 2)
		servfail(t, p, ev, "tcp", nameA, "the node 2 (most 2)")
	})
}

// TestTCPIdleTimeout: a TCP connection that sends nothing, or half a query, is closed after
// TCPIdleTimeout; one waiting for an answer is not idle.
func TestTCPIdleTimeout(t *testing.T) {
	p, _, ev := startLoopback(t, Options{TCPIdleTimeout: 200 * time.Millisecond, UpstreamTimeout: 600 * time.Millisecond})
	closedAfter := func(what string, send []byte) {
		c, err := net.Dial("tcp", proxyAddr(p))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(send)
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if took := time.Since(start); err != io.EOF || took < 150*time.Millisecond || took > 2*time.Second {
			t.Errorf("%s: read %v after %s, want the connection closed after about 200ms", what, err, took)
		}
	}
	closedAfter("idle", nil)
	closedAfter("half a query", append(binary.BigEndian.AppendUint16(nil, 30), 1, 2, 3, 4, 5))

	// Busy: a query waits 600ms for the server (then goes unanswered); the connection stays open
	// and serves the next query.
	_, co := dialTCP(t, proxyAddr(p))
	co.WriteMsg(new(dns.Msg).SetQuestion(nameSlow, dns.TypeA))
	time.Sleep(450 * time.Millisecond)
	co.WriteMsg(new(dns.Msg).SetQuestion(nameA, dns.TypeA))
	if r, err := co.ReadMsg(); err != nil || r.Question[0].Name != nameA || r.Rcode != dns.RcodeSuccess {
		t.Errorf("a connection with a query in flight: %v %v, want it open and the next query answered", r, err)
	}
	ev.named(t, nameSlow)
}

// TestTCPConnsPerSource: a pod with ConnsPerSource connections open gets the next one reset,
// reported; another pod's connections go on.
func TestTCPConnsPerSource(t *testing.T) {
	p, _, ev := startLoopback(t, Options{ConnsPerSource: 2})
	for range 2 {
		_, co := dialTCP(t, proxyAddr(p))
		co.WriteMsg(new(dns.Msg).SetQuestion(nameA, dns.TypeA))
		if _, err := co.ReadMsg(); err != nil {
			t.Fatal(err)
		}
	}
	// The reset may come before the dial returns.
	c, err := net.Dial("tcp", proxyAddr(p))
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a third connection: %v, want it reset", err)
	}
	ev.wait(t, "for the reset", func(q Query) bool {
		return strings.Contains(q.Refused, "connection reset: the source has 2 TCP connections open")
	})
	if _, r, err := ask("tcp", net.JoinHostPort("::1", itoa(p.Port())), nameA, dns.TypeA, 0); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Errorf("another source: %v %v, want an answer", r, err)
	}
}

// TestCloseEndsQueriesInFlight: Close does not wait for the server: queries in flight over UDP
// and TCP end unanswered at once; but it waits for the proxy's goroutines, here for the reports
// of those queries, which take a while (and closeProxy checks that none is left).
func TestCloseEndsQueriesInFlight(t *testing.T) {
	ev := &events{}
	slowReport := func(q Query) {
		if q.Name == nameSlow {
			time.Sleep(100 * time.Millisecond)
		}
		ev.add(q)
	}
	p, srv, _ := startLoopback(t, Options{OnQuery: slowReport})
	sendSlow(t, p, srv, "127.0.0.1", 2, 2)
	_, co := dialTCP(t, proxyAddr(p))
	co.WriteMsg(new(dns.Msg).SetQuestion(nameSlow, dns.TypeA))
	for deadline := time.Now().Add(3 * time.Second); len(srv.queries(nameSlow)) < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the TCP query did not reach the server")
		}
	}
	start := time.Now()
	closeProxy(t, p)
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %s with queries in flight (UpstreamTimeout %s)", took, DefaultUpstreamTimeout)
	}
	ev.mu.Lock()
	reported := slices.Clone(ev.qs)
	ev.mu.Unlock()
	if len(reported) != 3 {
		t.Fatalf("when Close returned, %d of the 3 queries in flight were reported:\n%s", len(reported), formatEvents(reported))
	}
	for _, e := range reported {
		if e.Rcode != NoAnswer || !strings.Contains(e.Refused, "closing") {
			t.Errorf("a query in flight at Close: %+v", e)
		}
	}
}
