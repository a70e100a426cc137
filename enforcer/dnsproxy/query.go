package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/netpact/netpact/policy"
)

// client is where a query's reply goes: the pod's UDP address or its TCP connection.
type client interface {
	// reply sends a message to the pod, from the address it sent its query to.
	reply(b []byte) error
	// done says the query is over, answered or not.
	done()
}

// query is a DNS query a pod sent, as the proxy took it.
type query struct {
	src, dst netip.AddrPort // dst: the original destination, invalid when unreadable
	proto    policy.Proto
	raw      []byte
	req      *dns.Msg
	start    time.Time
	tcp      *tcpConn // the connection it came on, nil over UDP
}

// take is the one way into the proxy for a message from a pod, over UDP or TCP: not a DNS query,
// it is reported and never answered (Cilium #12241: a proxy that answered every payload on its
// port flooded a TFTP client with errors); over the bounds of queries in flight, it gets SERVFAIL
// at once; otherwise it is answered on a goroutine of its own. c.done is called once, when the
// query is over.
func (p *Proxy) take(src, dst netip.AddrPort, proto policy.Proto, raw []byte, tc *tcpConn, c client) {
	q := &query{src: src, proto: proto, raw: raw, start: time.Now(), tcp: tc}
	dst, why := p.original(dst)
	q.dst = dst
	if why == "" {
		q.req, why = parseQuery(raw)
	}
	if why != "" {
		p.report(Query{Src: src, Dst: dst, Proto: proto, Rcode: NoAnswer, Refused: why, Latency: time.Since(q.start)})
		c.done()
		return
	}
	if !p.queries.Take(src.Addr(), 1) {
		held, total := p.queries.Held(src.Addr())
		ev := q.event()
		b := p.fail(q, &ev, fmt.Sprintf("too many queries in flight: the source has %d (most %d), the node %d (most %d)",
			held, p.opts.PerSource, total, p.opts.Total))
		p.send(q, c, b, ev)
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer p.queries.Give(src.Addr(), 1)
		ev := q.event()
		b := p.answer(q, &ev)
		p.send(q, c, b, ev)
	}()
}

// send sends a query's reply (none when b is nil), then reports the query and ends it.
func (p *Proxy) send(q *query, c client, b []byte, ev Query) {
	if b != nil {
		if err := c.reply(b); err != nil {
			ev.Rcode, ev.Refused = NoAnswer, fmt.Sprintf("reply not sent: %v", err)
		}
	}
	ev.Latency = time.Since(q.start)
	p.report(ev)
	c.done()
}

// parseQuery reads a message from a pod; what is not a query with one question is not one the
// proxy answers, and the reason says so.
func parseQuery(raw []byte) (*dns.Msg, string) {
	m := new(dns.Msg)
	if err := m.Unpack(raw); err != nil {
		return nil, fmt.Sprintf("not a DNS message (%v): no answer", err)
	}
	switch {
	case m.Response:
		return nil, "a DNS response, not a query: no answer"
	case m.Opcode != dns.OpcodeQuery:
		return nil, fmt.Sprintf("a DNS %s message, not a query: no answer", dns.OpcodeToString[m.Opcode])
	case len(m.Question) != 1:
		return nil, fmt.Sprintf("a DNS query with %d questions, not 1: no answer", len(m.Question))
	}
	return m, ""
}

func (q *query) event() Query {
	qs := q.req.Question[0]
	return Query{Src: q.src, Dst: q.dst, Proto: q.proto, Name: policy.FQDN(qs.Name), Type: qs.Qtype, Rcode: NoAnswer,
		Verdict: policy.DNSVerdict{Index: -1}}
}

// answer is a query's steps: judge, forward, read the answer, learn its addresses, restore
// the query's ID. It returns the reply (nil: none) and fills ev.
func (p *Proxy) answer(q *query, ev *Query) []byte {
	if !q.dst.IsValid() {
		return p.fail(q, ev, "the original destination is unreadable")
	}
	var d policy.Decision
	ok := false
	if p.opts.Decide != nil {
		d, ok = p.opts.Decide(q.src, q.dst, q.proto)
	}
	if !ok {
		return p.fail(q, ev, "no policy is computed yet")
	}
	ev.Verdict = d.MatchDNS(ev.Name)
	if !ev.Verdict.Allowed {
		ev.Rcode = p.opts.Reject
		return p.pack(q, ev, new(dns.Msg).SetRcode(q.req, p.opts.Reject))
	}
	resp, err := p.forward(q)
	switch {
	case p.ctx.Err() != nil:
		ev.Refused = errClosing.Error() + ": no answer"
		return nil
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		ev.Refused = fmt.Sprintf("no answer from %s within %s: none sent, the client retries", q.dst, p.opts.UpstreamTimeout)
		return nil
	case err != nil:
		return p.fail(q, ev, err.Error())
	}
	addrs, ttl, err := chain(ev.Name, resp)
	if err != nil {
		return p.fail(q, ev, err.Error())
	}
	if len(addrs) > 0 && p.opts.Learn != nil {
		if err := p.opts.Learn(q.src, ev.Name, addrs, ttl); err != nil {
			return p.fail(q, ev, fmt.Sprintf("learn the addresses of %s: %v", ev.Name, err))
		}
	}
	ev.Rcode, ev.Answers, ev.TTL = resp.Rcode, addrs, ttl
	resp.Id = q.req.Id
	resp.Compress = compress(q.req, resp)
	return p.pack(q, ev, resp)
}

// fail is the SERVFAIL of a query the proxy could not answer, for the reason why.
func (p *Proxy) fail(q *query, ev *Query, why string) []byte {
	ev.Rcode, ev.Refused, ev.Answers, ev.TTL = dns.RcodeServerFailure, why, nil, 0
	return p.pack(q, ev, new(dns.Msg).SetRcode(q.req, dns.RcodeServerFailure))
}

func (p *Proxy) pack(q *query, ev *Query, m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		if m.Rcode == dns.RcodeServerFailure {
			ev.Rcode, ev.Refused = NoAnswer, fmt.Sprintf("%s; pack the SERVFAIL: %v", ev.Refused, err)
			return nil
		}
		return p.fail(q, ev, fmt.Sprintf("pack the reply: %v", err))
	}
	return b
}

// compress says whether a reply goes compressed: when it is larger than 512 bytes or than the
// client's EDNS0 size uncompressed (Cilium's tofqdns-enable-dns-compression, on by default,
// after #9755: answers of more than 24 A records timed out uncompressed).
func compress(req, resp *dns.Msg) bool {
	resp.Compress = false
	n := resp.Len()
	if opt := req.IsEdns0(); opt != nil && n > int(opt.UDPSize()) {
		return true
	}
	return n > dns.MinMsgSize
}

// chain reads an answer as Cilium's proxy does (ExtractMsgDetails): each record of the answer
// section is named by the query name, or by the target of the last CNAME before it; the
// addresses of its A and AAAA records are the query name's, and their TTL is the lowest of the
// chain, CNAMEs included.
func chain(qname string, m *dns.Msg) ([]netip.Addr, time.Duration, error) {
	want := qname
	ttl := uint32(math.MaxUint32)
	var addrs []netip.Addr
	for _, rr := range m.Answer {
		h := rr.Header()
		if !strings.EqualFold(h.Name, want) {
			return nil, 0, fmt.Errorf("unexpected name %s in the answer for %s (the chain is at %s)", h.Name, qname, want)
		}
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				addrs = append(addrs, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA.To16()); ok {
				addrs = append(addrs, a)
			}
		case *dns.CNAME:
			want = rr.Target
		default:
			continue
		}
		ttl = min(ttl, h.Ttl)
	}
	if ttl == math.MaxUint32 {
		ttl = 0
	}
	return addrs, time.Duration(ttl) * time.Second, nil
}
