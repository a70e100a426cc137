package dnsproxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestNonDNSPayload: what is not a DNS query with one question (garbage, a response, two
// questions or none, another opcode) is never answered (Cilium #12241: answering every payload
// on the port flooded a TFTP client with errors), and each is reported; the server never sees
// one. Over TCP too, and a frame longer than a query may be closes the connection.
func TestNonDNSPayload(t *testing.T) {
	p, srv, ev := startLoopback(t, Options{})
	query := func(edit func(*dns.Msg)) []byte {
		m := new(dns.Msg).SetQuestion(nameA, dns.TypeA)
		edit(m)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	payloads := []struct {
		name string
		b    []byte
		why  string
	}{
		{"a TFTP read request", append([]byte{0, 1}, "file.bin\x00octet\x00"...), "not a DNS message"},
		{"a response", query(func(m *dns.Msg) { m.Response = true }), "a DNS response"},
		{"two questions", query(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), "2 questions"},
		{"no question", query(func(m *dns.Msg) { m.Question = nil }), "0 questions"},
		{"a NOTIFY", query(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), "a DNS NOTIFY message"},
	}
	for _, network := range []string{"udp", "tcp"} {
		c, err := net.Dial(network, proxyAddr(p))
		if err != nil {
			t.Fatal(err)
		}
		for _, pl := range payloads {
			b := pl.b
			if network == "tcp" {
				b = append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
			}
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			ev.wait(t, network+" "+pl.name, func(q Query) bool {
				return strings.EqualFold(q.Proto.String(), network) && strings.Contains(q.Refused, pl.why) && q.Rcode == NoAnswer
			})
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := c.Read(make([]byte, 512)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: read %d bytes, %v: want nothing", network, n, err)
		}
		c.Close()
	}
	if got := srv.queries(nameA); len(got) != 0 {
		t.Errorf("the server saw %v", got)
	}

	// A TCP frame longer than a query may be: not read, the connection closed.
	c, err := net.Dial("tcp", proxyAddr(p))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(binary.BigEndian.AppendUint16(nil, MaxQuerySize+1))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after an oversized frame: %v, want the connection closed", err)
	}
	ev.wait(t, "for the oversized frame", func(q Query) bool { return strings.Contains(q.Refused, "more than the 4096 a query may have") })
}
