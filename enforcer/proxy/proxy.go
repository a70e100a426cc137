// Package proxy is the node's L7 proxy: the datapath hands it the TCP flows an L7 rule governs
// (bpf_sk_assign to its transparent listener), it judges each request with the policy engine's
// own matching (policy.Decision.MatchHTTP), answers what the rules refuse with Cilium's 403, and
// forwards the rest to the original destination from the original source address, marked so
// that the destination's datapath knows the proxy applied the rules.
//
// HTTP/1.1 (each request of a keep-alive connection judged) and HTTP/2 with prior knowledge
// (h2c, and so gRPC) share one listener: the connection's first bytes choose. An HTTP/1.1
// connection switches protocols only to WebSocket, and is then spliced, no longer judged; an h2c
// upgrade is forwarded as plain HTTP/1.1, any other refused (upgrade.go).
package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/policy"
)

// DefaultDeniedBody is the body of a denied request before the CRLF: Cilium's default
// (http-403-msg).
const DefaultDeniedBody = "Access denied"

// Request is a judged request, for the flow stream.
type Request struct {
	Src, Dst netip.AddrPort
	Protocol string // HTTP/1.1, HTTP/2
	Method   string
	Path     string // as judged: normalised, with the query
	Host     string
	// Status is the response's status code (the 403 for a denied request; 0 when no response
	// came back from the destination).
	Status  int
	Verdict policy.HTTPVerdict
	// Refused says why the proxy refused what the rules allow: an upgrade to a protocol it does
	// not switch to, a destination that switched protocols unasked. The event is then a drop.
	Refused string
	Latency time.Duration
}

// Options configure a proxy.
type Options struct {
	// Decide returns the policy's decision for a TCP flow (original addresses): the proxy judges
	// each request on it. nil, or a Decide that cannot decide (no policy yet), denies.
	Decide func(src, dst netip.AddrPort) (policy.Decision, bool)
	// Mark is the SO_MARK of the upstream sockets (the datapath's ProxyMark).
	Mark uint32
	// KeepSource reports whether a connection to dst keeps the client's address (a pod: its
	// node's datapath judges the original source against its ingress policy). Other destinations
	// (outside the cluster, where the node masquerades) are reached from the node's address. nil:
	// always keep it.
	KeepSource func(dst netip.Addr) bool
	// OnRequest receives every judged request.
	OnRequest func(Request)
	// DeniedBody replaces DefaultDeniedBody (CRLF appended unless it ends in one).
	DeniedBody string
	// Refuse, when it says why (not ""), keeps the proxy from connecting to a destination,
	// whatever the policy allows: a request for it gets a 403 that says so.
	Refuse func(dst netip.AddrPort) string
	Limits
}

// Limits bound what one source (a pod), and all of them together, can make the proxy hold: time,
// connections and buffered bytes. A zero field takes its default.
type Limits struct {
	// DialTimeout bounds connecting to the destination; 5 s.
	DialTimeout time.Duration
	// IdleTimeout closes a client connection idle this long between requests, or a request
	// body's read that waits this long; 5 min (Envoy's stream idle timeout).
	IdleTimeout time.Duration
	// HeaderTimeout bounds a request's line and headers from their first byte: a client cannot
	// hold a half-sent header for the idle timeout; 30 s. It ends with 408.
	HeaderTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the destination's response header after the
	// request was sent; 60 s. It ends with Envoy's 504 "upstream request timeout".
	ResponseHeaderTimeout time.Duration
	// MaxHeaderBytes bounds a request's line and headers, and a response's headers (HTTP/1.1
	// and HTTP/2); 60 KiB (Envoy's max_request_headers_kb). A request over it gets 431.
	MaxHeaderBytes int
	// MaxConnsPerSource bounds the connections one source address (a pod) has open through the
	// proxy at once, which the node's pods share; one more is reset at once, and an L7 event
	// says why. DefaultMaxConnsPerSource.
	MaxConnsPerSource int
	// BufferedPerSource and BufferedTotal bound the bytes the proxy holds for one source, and
	// for all of them: the unfinished request headers it reads, and the receive window of each
	// HTTP/2 connection (h2ConnWindow) for the connection's life. A connection that would pass
	// either is refused (HTTP/1.1: 503; HTTP/2: reset), and an L7 event says why. 64 MiB (256
	// HTTP/2 connections) and 512 MiB.
	BufferedPerSource, BufferedTotal int64
}

// Defaults of Limits.
const (
	DefaultMaxConnsPerSource     = 10000
	DefaultHeaderTimeout         = 30 * time.Second
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultMaxHeaderBytes        = 60 << 10
	DefaultBufferedPerSource     = 64 << 20
	DefaultBufferedTotal         = 512 << 20
)

// HTTP/2 bounds: the streams a client connection may have open at once, the largest frame it
// may send (the protocol's initial SETTINGS_MAX_FRAME_SIZE), and the request body bytes the proxy
// takes ahead of a destination that reads slowly, per connection and per stream.
const (
	h2MaxStreams   = 100
	h2MaxFrameSize = 16 << 10
	h2ConnWindow   = 256 << 10
	h2StreamWindow = 128 << 10
)

func (l *Limits) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&l.DialTimeout, 5*time.Second)
	def(&l.IdleTimeout, 5*time.Minute)
	def(&l.HeaderTimeout, DefaultHeaderTimeout)
	def(&l.ResponseHeaderTimeout, DefaultResponseHeaderTimeout)
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxConnsPerSource <= 0 {
		l.MaxConnsPerSource = DefaultMaxConnsPerSource
	}
	if l.BufferedPerSource <= 0 {
		l.BufferedPerSource = DefaultBufferedPerSource
	}
	if l.BufferedTotal <= 0 {
		l.BufferedTotal = DefaultBufferedTotal
	}
}

// Proxy is a running HTTP proxy.
type Proxy struct {
	opts      Options
	denied    []byte // the whole HTTP/1.1 403 after the date
	body      string
	listeners []net.Listener
	h2        *http.Server
	h2conns   *connQueue
	h2flows   sync.Map // net.Conn -> *h2Flow, closed with the connection
	port      uint16

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	perSrc map[netip.Addr]int // open connections by source address
	// buffered counts the bytes held for each source (Limits.BufferedPerSource).
	buffered *tproxy.Budget
	closed   bool
	wg       sync.WaitGroup
}

// Listen starts the proxy on 127.0.0.1:port and [::1]:port with IP_TRANSPARENT (port 0: one
// the kernel picks, the same for both families). Port returns it.
func Listen(port uint16, opts Options) (*Proxy, error) {
	ls, err := tproxy.Listen("the L7 proxy", port, false, false)
	if err != nil {
		return nil, err
	}
	p := newProxy(opts)
	p.listeners, p.port = ls.TCP, ls.Port
	for _, l := range p.listeners {
		p.wg.Add(1)
		go p.accept(l)
	}
	return p, nil
}

// newProxy is a proxy without listeners, its HTTP/2 server running: apart from Listen, the unit
// tests hand it connections (serveFlow), since IP_TRANSPARENT needs CAP_NET_ADMIN.
func newProxy(opts Options) *Proxy {
	opts.Limits.setDefaults()
	body := opts.DeniedBody
	if body == "" {
		body = DefaultDeniedBody
	}
	if !bytes.HasSuffix([]byte(body), []byte("\r\n")) {
		body += "\r\n"
	}
	p := &Proxy{opts: opts, body: body, conns: map[net.Conn]struct{}{}, perSrc: map[netip.Addr]int{},
		buffered: tproxy.NewBudget(opts.BufferedPerSource, opts.BufferedTotal)}
	p.h2conns = newConnQueue()
	p.h2 = &http.Server{Handler: http.HandlerFunc(p.serveH2), ConnContext: p.h2ConnContext, IdleTimeout: opts.IdleTimeout,
		ConnState: p.h2ConnState, MaxHeaderBytes: opts.MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: h2MaxStreams, MaxReadFrameSize: h2MaxFrameSize,
			MaxReceiveBufferPerConnection: h2ConnWindow, MaxReceiveBufferPerStream: h2StreamWindow}}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	p.h2.Protocols = &protos
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.h2.Serve(p.h2conns)
	}()
	return p
}

// Port is the port the proxy listens on.
func (p *Proxy) Port() uint16 { return p.port }

// Listeners are the proxy's listening sockets, on 127.0.0.1 and ::1 (for the datapath's
// listener lookup; they stay the proxy's).
func (p *Proxy) Listeners() []net.Listener { return slices.Clone(p.listeners) }

// Close stops listening and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	var errs []error
	for _, l := range p.listeners {
		errs = append(errs, l.Close())
	}
	p.h2conns.Close()
	errs = append(errs, p.h2.Close())
	p.wg.Wait()
	return errors.Join(errs...)
}

// track counts a new connection; closed when the proxy is closing, over when its source has the
// most connections it may.
func (p *Proxy) track(c net.Conn) (closed, over bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return true, false
	}
	src := tproxy.AddrPort(c.RemoteAddr()).Addr()
	if p.perSrc[src] >= p.opts.MaxConnsPerSource {
		return false, true
	}
	p.perSrc[src]++
	p.conns[c] = struct{}{}
	return false, false
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	if _, ok := p.conns[c]; ok {
		delete(p.conns, c)
		src := tproxy.AddrPort(c.RemoteAddr()).Addr()
		if p.perSrc[src]--; p.perSrc[src] <= 0 {
			delete(p.perSrc, src)
		}
	}
	p.mu.Unlock()
}

func (p *Proxy) accept(l net.Listener) {
	defer p.wg.Done()
	tproxy.Accept(l, func(c net.Conn) bool {
		closed, over := p.track(c)
		if closed {
			c.Close()
			return false
		}
		if over {
			// Reset at once (no TIME_WAIT, no read): the source's other connections go on. The
			// event is out before the reset, as for every refusal the client can see.
			p.report(Request{Src: tproxy.AddrPort(c.RemoteAddr()), Dst: tproxy.AddrPort(c.LocalAddr()), Verdict: policy.HTTPVerdict{Index: -1,
				Reason: fmt.Sprintf("connection reset: the source has %d connections open through the proxy, the most it may", p.opts.MaxConnsPerSource)}})
			tproxy.Reset(c)
			return true
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serveConn(c)
		}()
		return true
	})
}

// flow is one client connection: the original addresses the datapath kept.
type flow struct {
	src, dst netip.AddrPort
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// serveConn serves a connection the datapath handed over: its socket's addresses are the flow's
// original ones.
func (p *Proxy) serveConn(c net.Conn) {
	f := flow{src: tproxy.AddrPort(c.RemoteAddr()), dst: tproxy.AddrPort(c.LocalAddr())}
	if f.dst.Addr().IsLoopback() {
		// A connection to the listener itself, which the datapath never hands over (a pod's
		// flow keeps its original, non-loopback destination): forwarding it would make the
		// proxy connect to itself, again and again.
		// Reported before the close, which the caller may be waiting on.
		p.report(Request{Src: f.src, Dst: f.dst, Refused: "a connection to the proxy's own listener, not a flow the datapath handed it: closed",
			Verdict: policy.HTTPVerdict{Index: -1}})
		c.Close()
		p.untrack(c)
		return
	}
	p.serveFlow(c, f)
}

// serveFlow serves a connection of the flow f until it ends. The first bytes choose: the HTTP/2
// preface goes to the HTTP/2 server, everything else is HTTP/1.1.
func (p *Proxy) serveFlow(c net.Conn, f flow) {
	lr := &limitedReader{r: c, n: int64(p.opts.MaxHeaderBytes), c: c, bud: p.buffered, src: f.src.Addr(), counting: true}
	br := getReader(lr) // back to the pool after HTTP/1; an HTTP/2 connection keeps it
	c.SetReadDeadline(time.Now().Add(p.opts.IdleTimeout))
	isH2, err := sniffH2(br)
	if isH2 {
		c.SetReadDeadline(time.Time{})
		lr.release()
		lr.n = 1 << 62 // the HTTP/2 server bounds its frames and headers itself
		// The connection's receive window is held for its life: what a destination that reads
		// slowly leaves the proxy buffering.
		if !p.buffered.Take(f.src.Addr(), h2ConnWindow) {
			p.refuseOverBudget(c, f, "HTTP/2 connection")
			c.Close()
			p.untrack(c)
			putReader(br)
			return
		}
		// The HTTP/2 server owns the connection from here (it untracks it when closed).
		p.h2conns.Push(&peeked{Conn: c, r: br, f: f, reserved: h2ConnWindow})
		return
	}
	defer func() {
		lr.release()
		c.Close()
		p.untrack(c)
		putReader(br)
	}()
	if err != nil {
		if errors.Is(lr.err, errOverBudget) {
			p.refuseOverBudget(c, f, "request header")
		}
		return
	}
	// After a response that said connection: close, this side closes first, as a server does:
	// the TIME_WAIT is the node's, and the pod's port is free again at once. The pod's next
	// connection from that port meets the TIME_WAIT socket here; the datapath hands its SYN on
	// through the kernel's TIME_WAIT processing (datapath.SetProxyListeners).
	p.serveHTTP1(c, br, lr, f)
}

// sniffH2 reads until the bytes so far are the HTTP/2 preface or cannot become it (a client that
// sends less than 24 bytes and waits is HTTP/1).
func sniffH2(br *bufio.Reader) (bool, error) {
	for n := 1; ; n++ {
		b, err := br.Peek(n)
		if err != nil {
			return false, err
		}
		if b[n-1] != h2Preface[n-1] {
			return false, nil
		}
		if n == len(h2Preface) {
			return true, nil
		}
	}
}

// upstreamTarget makes u's request target (what HTTP/1.1 writes and HTTP/2 sends as :path) the
// judged one, byte for byte. The path goes as Opaque: as Path it would be escaped again (%20
// becoming %2520), and Path with RawPath re-escapes any byte Go would have escaped itself.
// A normalised path never starts with "//", which Opaque would take for an authority.
func upstreamTarget(u *url.URL, target string) {
	path, query, hasQuery := strings.Cut(target, "?")
	u.Opaque, u.Path, u.RawPath, u.RawQuery = path, "", "", query
	u.ForceQuery = hasQuery && query == ""
}

// judge decides a request on the flow with the policy as it is now.
func (p *Proxy) judge(f flow, r policy.HTTPRequest) policy.HTTPVerdict {
	if p.opts.Refuse != nil {
		if why := p.opts.Refuse(f.dst); why != "" {
			return policy.HTTPVerdict{Index: -1, Reason: why}
		}
	}
	if p.opts.Decide == nil {
		return policy.HTTPVerdict{Index: -1, Reason: "the proxy has no policy"}
	}
	d, ok := p.opts.Decide(f.src, f.dst)
	if !ok {
		return policy.HTTPVerdict{Index: -1, Reason: "no policy is computed yet"}
	}
	return d.MatchHTTP(r)
}

// refuseOverBudget reports a connection the proxy refused because its source, or the node, holds
// the most buffered bytes it may; an HTTP/1.1 client gets a 503 that says so, an HTTP/2 one a
// reset.
func (p *Proxy) refuseOverBudget(c net.Conn, f flow, what string) {
	src, total := p.buffered.Held(f.src.Addr())
	why := fmt.Sprintf("%s refused: the source holds %d bytes buffered in the proxy (most %d), the node %d (most %d)",
		what, src, p.opts.BufferedPerSource, total, p.opts.BufferedTotal)
	if what == "HTTP/2 connection" {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
	} else {
		bw := getWriter(c)
		writeStatus(bw, http.StatusServiceUnavailable, "proxy overloaded: the source holds too many bytes of unfinished requests\r\n")
		putWriter(bw)
	}
	p.report(Request{Src: f.src, Dst: f.dst, Refused: why, Status: http.StatusServiceUnavailable, Verdict: policy.HTTPVerdict{Index: -1, Reason: why}})
}

func (p *Proxy) report(r Request) {
	if p.opts.OnRequest != nil {
		p.opts.OnRequest(r)
	}
}

// dial connects to the flow's destination from its source address (IP_TRANSPARENT), with the
// proxy's mark.
func (p *Proxy) dial(ctx context.Context, f flow) (net.Conn, error) {
	keep := p.opts.KeepSource == nil || p.opts.KeepSource(f.dst.Addr())
	return tproxy.Dial(ctx, "tcp", f.src, f.dst, keep, p.opts.Mark, p.opts.DialTimeout)
}

// connQueue is a net.Listener fed with connections (the HTTP/2 server's).
type connQueue struct {
	ch     chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func newConnQueue() *connQueue { return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})} }

func (q *connQueue) Push(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.closer.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// Buffers are pooled: a connection per request would otherwise allocate them every time.
var readers, writers sync.Pool

func getReader(r io.Reader) *bufio.Reader {
	if br, ok := readers.Get().(*bufio.Reader); ok {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, 16<<10)
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

func getWriter(w io.Writer) *bufio.Writer {
	if bw, ok := writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, 16<<10)
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writers.Put(bw)
}

// limitedReader fails reads once n bytes were read since the last setLimit: the bound on request
// headers, lifted while a body is read. While counting, the bytes it reads are taken from bud for
// src until release: a header's bytes are held until it is parsed.
type limitedReader struct {
	r io.Reader
	n int64
	// idle, when not 0, is how long each read of c may wait (a request body's bytes): a body
	// may take long, but not stall.
	idle time.Duration
	c    net.Conn
	err  error // of the last read (net/http does not always pass it on as it came)

	bud      *tproxy.Budget
	src      netip.Addr
	counting bool
	held     int64
}

func (l *limitedReader) Read(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	if l.idle > 0 {
		l.c.SetReadDeadline(time.Now().Add(l.idle))
	}
	n, err := l.r.Read(b)
	l.err = err
	l.n -= int64(n)
	if l.counting && n > 0 && l.bud != nil {
		if !l.bud.Take(l.src, int64(n)) {
			// Nothing of what the budget cannot hold goes on: the header ends here.
			l.err = errOverBudget
			return 0, errOverBudget
		}
		l.held += int64(n)
	}
	return n, err
}

// release gives back what the reader holds, and stops counting.
func (l *limitedReader) release() {
	if l.bud != nil {
		l.bud.Give(l.src, l.held)
	}
	l.held, l.counting = 0, false
}

var errHeaderTooLarge = errors.New("request header too large")

// errOverBudget ends a request header whose bytes the source's or the node's budget cannot hold.
var errOverBudget = errors.New("over the proxy's buffered-bytes budget")

// peeked is a connection whose first bytes were read into r.
type peeked struct {
	net.Conn
	r *bufio.Reader
	f flow
	// reserved is what the connection holds of the proxy's budget (h2ConnWindow).
	reserved int64
}

func (c *peeked) Read(b []byte) (int, error) { return c.r.Read(b) }

var _ io.Reader = (*peeked)(nil)
