// Package dnsproxy is the node's transparent DNS proxy, with the semantics of Cilium's. The
// datapath hands it the UDP and TCP port-53 packets of the pods whose egress policy carries DNS
// rules (bpf_sk_assign to its listeners on 127.0.0.1 and ::1, the packets unchanged: addressed to
// the server the pod asked, from the pod's address). Each query is judged on the pod's policy
// (policy.Decision.MatchDNS). One the rules refuse gets REFUSED, or NXDOMAIN with
// Options.Reject. One they allow goes on to the server the pod asked, over the protocol the pod
// used, from the pod's own address when the server keeps it (Options.KeepSource); the addresses
// of the answer go to Options.Learn (toFQDNs) before the answer goes back to the pod, from the
// server's address.
//
// What a pod gets back, as in Cilium's newest releases (pkg/fqdn/dnsproxy):
//
//	a name no DNS rule allows           Options.Reject (REFUSED by default), no answers
//	too many queries in flight          SERVFAIL at once (dnsproxy-concurrency-limit, grace 0)
//	no policy yet; original destination
//	unreadable; an upstream error other
//	than a timeout; an answer whose
//	records leave the CNAME chain; Learn
//	failed                              SERVFAIL
//	no answer within UpstreamTimeout    nothing: the client retries
//	not a DNS query (Cilium #12241)     nothing, ever: the payload is only reported
//	otherwise                           the server's answer, the query's ID restored, compressed
//	                                    when over 512 bytes or the client's EDNS0 size; a
//	                                    truncated (TC) answer as it is, and the client's retry
//	                                    over TCP is proxied over TCP
//
// Messages are read and built with github.com/miekg/dns, the library Cilium's proxy is built
// on: it packs and unpacks whole messages with name compression, makes an error reply from a
// query (SetRcode), truncates, and gives an answer's records as types, which following a CNAME
// chain needs. golang.org/x/net/dns/dnsmessage is a lower-level parser only.
package dnsproxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/policy"
)

// Options configure a proxy. A zero field takes its default.
type Options struct {
	// Decide returns the policy's decision for the pod's flow to the server (original addresses)
	// and protocol; false when no policy is computed yet (then SERVFAIL).
	Decide func(src, dst netip.AddrPort, proto policy.Proto) (policy.Decision, bool)
	// Learn gets the addresses an allowed answer gave for the query name (the lower-cased FQDN
	// with its trailing dot) and their TTL (the lowest of the whole CNAME chain), before the
	// answer is released to the pod; an error makes the answer SERVFAIL. It is called only for
	// answers that hold addresses.
	Learn func(src netip.AddrPort, qname string, addrs []netip.Addr, ttl time.Duration) error
	// OnQuery receives every judged query, and every payload the proxy did not answer.
	OnQuery func(Query)
	// Mark is the SO_MARK of the upstream sockets that keep the pod's address.
	Mark uint32
	// KeepSource reports whether a query to the server dst goes from the pod's address (a
	// server in the cluster judges the pod), or from the node's (outside the cluster, where the
	// node masquerades). nil: always the pod's.
	KeepSource func(dst netip.Addr) bool
	// Reject is the rcode of a query policy denies: dns.RcodeRefused (default) or
	// dns.RcodeNameError (Cilium's tofqdns-dns-reject-response-code=nameError, for stub
	// resolvers such as musl's that take REFUSED as final while walking a search list).
	Reject int
	// PerSource bounds the queries in flight from one pod address, DefaultPerSource; Total the
	// node's, DefaultTotal. One more gets SERVFAIL at once, and is reported.
	PerSource, Total int
	// UpstreamTimeout bounds the wait for the server's answer, DefaultUpstreamTimeout (Cilium's
	// ProxyForwardTimeout). On timeout the pod gets no answer, and its resolver retries.
	UpstreamTimeout time.Duration
	// TCPIdleTimeout closes a pod's TCP connection that has no query in flight and sends none
	// for this long, and bounds how long one query's bytes, or a reply's write, may take;
	// DefaultTCPIdleTimeout.
	TCPIdleTimeout time.Duration
	// ConnsPerSource bounds the TCP connections one pod address has open to the proxy,
	// DefaultConnsPerSource; one more is reset at once, and reported.
	ConnsPerSource int
}

// Defaults of Options.
const (
	DefaultPerSource       = 100
	DefaultTotal           = 10000
	DefaultUpstreamTimeout = 10 * time.Second
	DefaultTCPIdleTimeout  = 10 * time.Second
	DefaultConnsPerSource  = 100
)

// Bounds of messages. A query is a question and an OPT record: MaxQuerySize leaves room for
// EDNS options and padding, and a TCP frame announcing more is not read. Upstream, a UDP query
// asks for answers of at most MaxUDPAnswer bytes (a larger EDNS0 size is lowered), so that
// each shared upstream socket reads into a buffer of that size; a larger answer comes
// truncated, and the client retries over TCP.
const (
	MaxQuerySize = 4096
	MaxUDPAnswer = 4096
)

// NoAnswer is Query.Rcode when the proxy sent nothing back.
const NoAnswer = -1

// Query is a query the proxy judged, or a payload it took for none, for the flow stream.
type Query struct {
	// Src is the pod's address; Dst the server it asked (the original destination).
	Src, Dst netip.AddrPort
	Proto    policy.Proto
	// Name is the question's name, lower case with its trailing dot; Type its type.
	Name string
	Type uint16
	// Rcode is the rcode of the reply the pod got, NoAnswer when it got none.
	Rcode int
	// Answers are the addresses the reply gave for Name (A and AAAA records along the CNAME
	// chain), TTL the lowest TTL of the chain.
	Answers []netip.Addr
	TTL     time.Duration
	Verdict policy.DNSVerdict
	// Refused says why the proxy answered SERVFAIL, or nothing; empty when the policy decided
	// (see Verdict) or the server answered.
	Refused string
	Latency time.Duration
}

func (o *Options) setDefaults() error {
	switch o.Reject {
	case 0:
		o.Reject = dns.RcodeRefused
	case dns.RcodeRefused, dns.RcodeNameError:
	default:
		return fmt.Errorf("reject rcode %s: use REFUSED (%d) or NXDOMAIN (%d)", dns.RcodeToString[o.Reject], dns.RcodeRefused, dns.RcodeNameError)
	}
	// A negative bound or timeout is taken as zero: the default.
	o.PerSource = cmp.Or(max(o.PerSource, 0), DefaultPerSource)
	o.Total = cmp.Or(max(o.Total, 0), DefaultTotal)
	o.ConnsPerSource = cmp.Or(max(o.ConnsPerSource, 0), DefaultConnsPerSource)
	o.UpstreamTimeout = cmp.Or(max(o.UpstreamTimeout, 0), DefaultUpstreamTimeout)
	o.TCPIdleTimeout = cmp.Or(max(o.TCPIdleTimeout, 0), DefaultTCPIdleTimeout)
	return nil
}

// Proxy is a running DNS proxy.
type Proxy struct {
	opts    Options
	ls      *tproxy.Listeners
	replies *tproxy.Replier // nil in plain mode
	// redirect, set by the package's tests only, runs the proxy without IP_TRANSPARENT: a
	// message's destination (the listener's own address) stands for the original destination
	// redirect returns, upstream sockets use the node's address, and replies go out of the
	// listener.
	redirect func(netip.AddrPort) netip.AddrPort
	// ctx ends with Close: every query in flight then ends without an answer.
	ctx    context.Context
	cancel context.CancelFunc
	// queries counts the queries in flight, conns the TCP connections, by pod address.
	queries, conns *tproxy.Budget
	wg             sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	tcp       map[net.Conn]struct{}
	upstreams map[upstreamKey]*upstream
}

// Listen starts the proxy on UDP and TCP 127.0.0.1:port and [::1]:port with IP_TRANSPARENT
// (port 0: one the kernel picks, the same for all four), and opens the raw sockets its UDP
// replies go out of (tproxy.Replier): CAP_NET_ADMIN and CAP_NET_RAW. Port returns the port.
func Listen(port uint16, opts Options) (*Proxy, error) {
	return listen(port, opts, nil)
}

func listen(port uint16, opts Options, redirect func(netip.AddrPort) netip.AddrPort) (*Proxy, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("DNS proxy: %w", err)
	}
	var replies *tproxy.Replier
	if redirect == nil {
		r, err := tproxy.NewReplier(opts.Mark)
		if err != nil {
			return nil, fmt.Errorf("DNS proxy: %w", err)
		}
		replies = r
	}
	ls, err := tproxy.Listen("the DNS proxy", port, true, redirect != nil)
	if err != nil {
		if replies != nil {
			replies.Close()
		}
		return nil, err
	}
	p := &Proxy{opts: opts, ls: ls, replies: replies, redirect: redirect,
		queries: tproxy.NewBudget(int64(opts.PerSource), int64(opts.Total)),
		// Connections are bounded by source only: a pod's idle connections end after
		// TCPIdleTimeout.
		conns: tproxy.NewBudget(int64(opts.ConnsPerSource), 1<<62),
		tcp:   map[net.Conn]struct{}{}, upstreams: map[upstreamKey]*upstream{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for _, l := range ls.UDP {
		p.wg.Add(1)
		go p.serveUDP(l)
	}
	for _, l := range ls.TCP {
		p.wg.Add(1)
		go p.acceptTCP(l)
	}
	return p, nil
}

// Port is the port the proxy listens on.
func (p *Proxy) Port() uint16 { return p.ls.Port }

// Listeners are the proxy's TCP listening sockets, PacketConns its UDP ones, on 127.0.0.1 and
// ::1 (for the datapath's socket lookup; they stay the proxy's).
func (p *Proxy) Listeners() []net.Listener   { return slices.Clone(p.ls.TCP) }
func (p *Proxy) PacketConns() []*net.UDPConn { return slices.Clone(p.ls.UDP) }

// Close stops listening, ends every query in flight without an answer, closes every connection
// and returns once all the proxy's goroutines have. Closing again does nothing.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	conns := make([]net.Conn, 0, len(p.tcp))
	for c := range p.tcp {
		conns = append(conns, c)
	}
	ups := make([]*upstream, 0, len(p.upstreams))
	for _, u := range p.upstreams {
		ups = append(ups, u)
	}
	p.mu.Unlock()
	p.cancel()
	err := p.ls.Close()
	for _, c := range conns {
		c.Close()
	}
	for _, u := range ups {
		u.close()
	}
	p.wg.Wait()
	if p.replies != nil {
		err = errors.Join(err, p.replies.Close())
	}
	return err
}

var errClosing = errors.New("the DNS proxy is closing")

// original is a message's original destination, or why the proxy does not take it: a message to
// the listener itself, which the datapath never hands over (a pod's flow keeps the server's
// address), would make the proxy ask itself, again and again.
func (p *Proxy) original(dst netip.AddrPort) (netip.AddrPort, string) {
	switch {
	case !dst.IsValid():
		return dst, ""
	case p.redirect != nil:
		return p.redirect(dst), ""
	case dst.Addr().IsLoopback():
		return dst, "a message to the proxy's own listener, not one the datapath handed it: no answer"
	}
	return dst, ""
}

func (p *Proxy) report(q Query) {
	if p.opts.OnQuery != nil {
		p.opts.OnQuery(q)
	}
}
