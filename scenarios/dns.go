package scenarios

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// zone is what the dns workload answers: a DNS name's addresses (a Service's,
// "backend.default.svc.cluster.local.", or an external host's), or that it does not exist; and
// the TTL of every record.
type zone struct {
	lookup func(name string) ([]netip.Addr, bool)
	ttl    uint32
}

// dnsAnswer is the reply to a query the server parsed, or nil when msg is not a DNS query.
// Known names get their A or AAAA records; unknown names NXDOMAIN: the local node's DNS knows
// only the scenario's Services and external hosts, as kube-dns of an offline cluster would.
func dnsAnswer(msg []byte, z zone) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true}
	addrs, ok := z.lookup(strings.ToLower(q.Name.String()))
	if !ok {
		resp.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), resp)
	b.EnableCompression()
	if b.StartQuestions() != nil || b.Question(q) != nil || b.StartAnswers() != nil {
		return nil
	}
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: z.ttl}
	for _, a := range addrs {
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			rh.Type = dnsmessage.TypeA
			if b.AResource(rh, dnsmessage.AResource{A: a.As4()}) != nil {
				return nil
			}
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			rh.Type = dnsmessage.TypeAAAA
			if b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()}) != nil {
				return nil
			}
		}
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// serveDNSPacket answers DNS queries on pc; a datagram that is not a query is echoed, so the
// matrix's plain UDP probe of the port is answered as by the other workloads.
func serveDNSPacket(pc net.PacketConn, z zone) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if out := dnsAnswer(buf[:n], z); out != nil {
			pc.WriteTo(out, from)
		} else {
			pc.WriteTo(buf[:n], from)
		}
	}
}

// serveDNSStream answers length-prefixed DNS queries on a TCP connection; one that does not
// start with a query is echoed (the matrix's TCP probe).
func serveDNSStream(c net.Conn, z zone) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReaderSize(c, 4096)
	for {
		head, err := br.Peek(2)
		if err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(head))
		var out []byte
		if n >= 12 && 2+n <= br.Size() {
			// A query arrives whole; what does not within a moment is not one.
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			msg, err := br.Peek(2 + n)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if err == nil {
				out = dnsAnswer(msg[2:], z)
			}
		}
		if out == nil {
			io.Copy(c, br) // not DNS: echo
			return
		}
		br.Discard(2 + n)
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)); err != nil {
			return
		}
	}
}
