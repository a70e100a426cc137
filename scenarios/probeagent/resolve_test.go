package probeagent

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

func TestCandidatesFollowNdotsAndSearch(t *testing.T) {
	pod := PodResolvConf(netip.MustParseAddr("10.96.0.10"), "prod")
	for name, want := range map[string][]string{
		"api.stripe.com": {"api.stripe.com.prod.svc.cluster.local.", "api.stripe.com.svc.cluster.local.",
			"api.stripe.com.cluster.local.", "api.stripe.com."},
		"api.stripe.com.": {"api.stripe.com."},
		"a.b.c.d.e.f":     {"a.b.c.d.e.f.", "a.b.c.d.e.f.prod.svc.cluster.local.", "a.b.c.d.e.f.svc.cluster.local.", "a.b.c.d.e.f.cluster.local."},
	} {
		if got := pod.Candidates(name); !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	conf := ParseResolvConf([]byte("# kubelet\nsearch prod.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5 edns0\n"))
	if !slices.Equal(conf.Nameservers, pod.Nameservers) || !slices.Equal(conf.Search, pod.Search) || conf.Ndots != 5 {
		t.Errorf("parsed %+v, want %+v", conf, pod)
	}
	if c := ParseResolvConf([]byte("nameserver ::1\n")); c.Ndots != 1 || c.Nameservers[0] != "[::1]:53" {
		t.Errorf("parsed %+v, want ndots 1 and [::1]:53", c)
	}
}

// nameserver is a DNS server on the loopback, over UDP and TCP on one port: api.stripe.com. has
// an address (TTL 7), big.example. too but only over TCP (its UDP answer is truncated),
// refused.example. is REFUSED, every other name NXDOMAIN.
func nameserver(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(); ln.Close() })
	answer := func(q []byte, tcp bool) []byte {
		var p dnsmessage.Parser
		h, err := p.Start(q)
		if err != nil {
			return nil
		}
		question, _ := p.Question()
		resp := dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError}
		var addrs [][4]byte
		switch question.Name.String() {
		case "api.stripe.com.":
			resp.RCode, addrs = dnsmessage.RCodeSuccess, [][4]byte{{198, 51, 100, 1}}
		case "big.example.":
			resp.RCode, resp.Truncated = dnsmessage.RCodeSuccess, !tcp
			if tcp {
				addrs = [][4]byte{{198, 51, 100, 2}, {198, 51, 100, 3}}
			}
		case "refused.example.":
			resp.RCode = dnsmessage.RCodeRefused
		}
		b := dnsmessage.NewBuilder(nil, resp)
		b.StartQuestions()
		b.Question(question)
		b.StartAnswers()
		for i, a := range addrs {
			b.AResource(dnsmessage.ResourceHeader{Name: question.Name, Class: dnsmessage.ClassINET, TTL: uint32(7 + i)},
				dnsmessage.AResource{A: a})
		}
		out, _ := b.Finish()
		return out
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(answer(buf[:n], false), from)
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var size [2]byte
			if _, err := io.ReadFull(c, size[:]); err == nil {
				q := make([]byte, binary.BigEndian.Uint16(size[:]))
				if _, err := io.ReadFull(c, q); err == nil {
					out := answer(q, true)
					c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...))
				}
			}
			c.Close()
		}
	}()
	return pc.LocalAddr().String()
}

// TestResolveReportsTheRCode: a lookup reports the answer's rcode exactly (the name as written's
// when no search name had addresses), falls back to TCP for a truncated answer, and tells a
// resolver that does not answer from one that is not there.
func TestResolveReportsTheRCode(t *testing.T) {
	conf := ResolvConf{Nameservers: []string{nameserver(t)}, Search: []string{"prod.svc.cluster.local", "svc.cluster.local"}, Ndots: 5}
	dial := (&net.Dialer{}).DialContext
	resolve := func(conf ResolvConf, name string) (Answer, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return Resolve(ctx, conf, name, dial)
	}
	for _, c := range []struct {
		name                string
		lookup, exact, conn string
		addrs               []netip.Addr
		ttl                 uint32
	}{
		{"api.stripe.com", "allow", "allow", "", []netip.Addr{netip.MustParseAddr("198.51.100.1")}, 7},
		{"big.example", "allow", "allow", "", []netip.Addr{netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("198.51.100.3")}, 7},
		{"nowhere.example", "allow", DNSNXDomain, DNSNXDomain, nil, 0},
		{"refused.example", DNSRefused, DNSRefused, DNSRefused, nil, 0},
	} {
		a, err := resolve(conf, c.name)
		if err != nil || !slices.Equal(a.Addrs, c.addrs) || a.TTL != c.ttl {
			t.Errorf("%s: %+v, %v; want %v, TTL %d", c.name, a, err, c.addrs, c.ttl)
		}
		if o := LookupOutcome(a, err, false); o != c.lookup {
			t.Errorf("%s: lookup %s, want %s", c.name, o, c.lookup)
		}
		if o := LookupOutcome(a, err, true); o != c.exact {
			t.Errorf("%s: exact lookup %s, want %s", c.name, o, c.exact)
		}
		if addr, o := ConnectTarget(a, err); o != c.conn || (o == "" && addr != c.addrs[0]) {
			t.Errorf("%s: connect target %s %q, want %q", c.name, addr, o, c.conn)
		}
	}

	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	conf.Nameservers = []string{silent.LocalAddr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	a, err := Resolve(ctx, conf, "api.stripe.com", dial)
	if o := LookupOutcome(a, err, true); o != "timeout" {
		t.Errorf("a resolver that does not answer: lookup %s (%v), want timeout", o, err)
	}
	if _, o := ConnectTarget(a, err); o != DNSTimeout {
		t.Errorf("a resolver that does not answer: connect %s, want %s", o, DNSTimeout)
	}
	silent.Close() // nothing listens there now: the kernel answers port unreachable
	a, err = resolve(conf, "api.stripe.com")
	if o := LookupOutcome(a, err, true); o != "refused" {
		t.Errorf("no resolver: lookup %s (%v), want refused", o, err)
	}
	if _, o := ConnectTarget(a, err); o != DNSUnreachable {
		t.Errorf("no resolver: connect %s, want %s", o, DNSUnreachable)
	}
}
