// Package kafkaproxy is the node's Kafka proxy: the datapath hands it the TCP flows a kafka rule
// governs (bpf_sk_assign to its transparent listener, as the HTTP proxy's), it parses each
// request with franz-go's kmsg, judges it with the policy engine's matching
// (policy.Decision.MatchKafka, Cilium 1.19's semantics), forwards what the rules allow unchanged
// to the original destination from the original source, and answers what they refuse as Cilium's
// proxy did: error 29 TOPIC_AUTHORIZATION_FAILED on every topic and partition of the request
// kinds that carry topics. See docs/kafka.md for what it refuses and why.
package kafkaproxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/policy"
)

// ErrTopicAuthorizationFailed is the error code a denied request's answer carries (Kafka's
// TOPIC_AUTHORIZATION_FAILED).
const ErrTopicAuthorizationFailed int16 = 29

// Request is a judged request, for the flow stream.
type Request struct {
	Src, Dst           netip.AddrPort
	APIKey, APIVersion int16
	CorrelationID      int32
	ClientID           string
	// Topics are the request's topics as the rules saw them ("" for a topic named by ID).
	Topics []string
	// ErrorCode is what the proxy answered a denied request with (29); 0 when it was forwarded
	// or not answered.
	ErrorCode int16
	// APIKey is -1 when the proxy refused the connection before it read a request header.
	Verdict policy.KafkaVerdict
	// Refused says why the proxy closed the connection at this request: a request it cannot
	// parse or that is over its bounds, or a denied request of a kind the proxy does not answer.
	Refused string
}

// Options configure a proxy.
type Options struct {
	// Decide returns the policy's decision for a TCP flow (original addresses). nil, or a Decide
	// that cannot decide (no policy yet), denies.
	Decide func(src, dst netip.AddrPort) (policy.Decision, bool)
	// Mark is the SO_MARK of the upstream sockets (the datapath's ProxyMark).
	Mark uint32
	// KeepSource reports whether a connection to dst keeps the client's address; nil: always.
	KeepSource func(dst netip.Addr) bool
	// OnRequest receives every judged request.
	OnRequest func(Request)
	Limits
}

// Limits bound what one source (a pod), and all of them together, can make the proxy hold.
type Limits struct {
	// DialTimeout bounds connecting to the broker; 5 s.
	DialTimeout time.Duration
	// IdleTimeout closes a connection with no request for this long, and bounds the wait for a
	// broker's answer and for the client to take one; 5 min.
	IdleTimeout time.Duration
	// RequestTimeout bounds reading a request once its size came: a client cannot hold the
	// bytes it announced for the idle timeout; 30 s.
	RequestTimeout time.Duration
	// MaxProduceBytes bounds a Produce request (its record batches); 16 MiB. MaxRequestBytes
	// bounds every other request; 1 MiB. A request over its bound closes the connection.
	MaxProduceBytes, MaxRequestBytes int
	// MaxInFlight is how many requests of one connection may wait for their answers; the
	// proxy reads no further request until one is answered; 64.
	MaxInFlight int
	// MaxConnsPerSource bounds one source's open connections through the proxy; 10000.
	MaxConnsPerSource int
	// BufferedPerSource and BufferedTotal bound the request bytes the proxy holds for one
	// source, and for all of them; 64 MiB and 512 MiB. A request that would pass either waits
	// for bytes to be given back no longer than IdleTimeout, then closes its connection.
	BufferedPerSource, BufferedTotal int64
}

// Defaults of Limits.
const (
	DefaultMaxProduceBytes   = 16 << 20
	DefaultMaxRequestBytes   = 1 << 20
	DefaultMaxInFlight       = 64
	DefaultMaxConnsPerSource = 10000
	DefaultBufferedPerSource = 64 << 20
	DefaultBufferedTotal     = 512 << 20
	// maxAPIVersionsAnswer bounds a broker's ApiVersions answer, which the proxy reads whole.
	maxAPIVersionsAnswer = 1 << 20
)

func (l *Limits) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&l.DialTimeout, 5*time.Second)
	def(&l.IdleTimeout, 5*time.Minute)
	def(&l.RequestTimeout, 30*time.Second)
	defInt := func(d *int, v int) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt(&l.MaxProduceBytes, DefaultMaxProduceBytes)
	defInt(&l.MaxRequestBytes, DefaultMaxRequestBytes)
	defInt(&l.MaxInFlight, DefaultMaxInFlight)
	defInt(&l.MaxConnsPerSource, DefaultMaxConnsPerSource)
	if l.BufferedPerSource <= 0 {
		l.BufferedPerSource = DefaultBufferedPerSource
	}
	if l.BufferedTotal <= 0 {
		l.BufferedTotal = DefaultBufferedTotal
	}
}

// Proxy is a running Kafka proxy.
type Proxy struct {
	opts      Options
	listeners []net.Listener
	port      uint16
	// parsing bounds the requests parsed at once: a parsed request takes several times its
	// bytes (kmsg's structs), for as long as it is judged.
	parsing  chan struct{}
	buffered *tproxy.Budget
	// ctx ends with Close: dials to brokers stop waiting.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	served map[*conn]struct{} // the connections being served, both sides of which Close closes
	perSrc map[netip.Addr]int
	closed bool
	wg     sync.WaitGroup
}

// Listen starts the proxy on 127.0.0.1:port and [::1]:port with IP_TRANSPARENT (port 0: one the
// kernel picks).
func Listen(port uint16, opts Options) (*Proxy, error) {
	ls, err := tproxy.Listen("the Kafka proxy", port, false, false)
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

func newProxy(opts Options) *Proxy {
	opts.Limits.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Proxy{opts: opts, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}, served: map[*conn]struct{}{}, perSrc: map[netip.Addr]int{},
		parsing:  make(chan struct{}, 2*runtime.GOMAXPROCS(0)),
		buffered: tproxy.NewBudget(opts.BufferedPerSource, opts.BufferedTotal)}
}

// Port is the port the proxy listens on.
func (p *Proxy) Port() uint16 { return p.port }

// Listeners are the proxy's listening sockets (for the datapath's listener lookup).
func (p *Proxy) Listeners() []net.Listener { return slices.Clone(p.listeners) }

// Close stops listening and closes every connection.
func (p *Proxy) Close() error {
	p.cancel()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	served := make([]*conn, 0, len(p.served))
	for cn := range p.served {
		served = append(served, cn)
	}
	p.mu.Unlock()
	for _, cn := range served {
		cn.closeAll() // a writer waiting on the broker wakes too
	}
	var errs []error
	for _, l := range p.listeners {
		errs = append(errs, l.Close())
	}
	p.wg.Wait()
	return errors.Join(errs...)
}

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
		f := flow{src: tproxy.AddrPort(c.RemoteAddr()), dst: tproxy.AddrPort(c.LocalAddr())}
		if over {
			p.report(Request{Src: f.src, Dst: f.dst, APIKey: -1, Verdict: policy.KafkaVerdict{Index: -1},
				Refused: fmt.Sprintf("connection reset: the source has %d connections open through the proxy, the most it may", p.opts.MaxConnsPerSource)})
			tproxy.Reset(c)
			return true
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			if f.dst.Addr().IsLoopback() {
				// A connection to the listener itself, not a flow the datapath handed over:
				// forwarding it would make the proxy connect to itself.
				p.report(Request{Src: f.src, Dst: f.dst, APIKey: -1, Verdict: policy.KafkaVerdict{Index: -1},
					Refused: "a connection to the proxy's own listener, not a flow the datapath handed it: closed"})
				c.Close()
				return
			}
			p.serve(c, f)
		}()
		return true
	})
}

func (p *Proxy) report(r Request) {
	if p.opts.OnRequest != nil {
		p.opts.OnRequest(r)
	}
}

// flow is one client connection: the original addresses the datapath kept.
type flow struct {
	src, dst netip.AddrPort
}

// pending is what the client gets next, in the order of its requests (Kafka answers in order on
// a connection): the broker's answer to a forwarded request, an answer the proxy made, or the
// end of the connection.
type pending struct {
	corr    int32
	key     int16
	version int16
	// forwarded: the broker answers it (not for a Produce with acks 0).
	forwarded bool
	answer    []byte // the proxy's own answer, whole frame
	close     bool
	decision  policy.Decision // for ApiVersions: what to advertise
	clientID  string
	// session is the fetch session a forwarded fetch opens or continues.
	session *fetchSession
}

// conn is one client connection and its connection to the broker.
type conn struct {
	p      *Proxy
	f      flow
	client net.Conn
	br     *bufio.Reader
	queue  chan pending
	done   chan struct{}

	mu       sync.Mutex // upstream, closed: the writer ends the connection while the reader may dial
	upstream net.Conn
	closed   bool

	sessions sessions
}

func (p *Proxy) serve(c net.Conn, f flow) {
	cn := &conn{p: p, f: f, client: c, br: bufio.NewReaderSize(c, 16<<10),
		queue: make(chan pending, p.opts.MaxInFlight), done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.served[cn] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.served, cn)
		p.mu.Unlock()
	}()
	defer cn.closeAll()
	cn.readRequests()
	close(cn.queue)
	<-cn.done
	// Answers the writer did not get to give their bytes back.
	for item := range cn.queue {
		cn.p.buffered.Give(cn.f.src.Addr(), int64(len(item.answer)))
	}
}

// closeAll closes both connections: whichever side ends first ends the other.
func (cn *conn) closeAll() {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	cn.closed = true
	cn.client.Close()
	if cn.upstream != nil {
		cn.upstream.Close()
	}
}

// readRequests reads, judges and forwards the client's requests until the connection ends or the
// proxy refuses one; the answers go back in order from writeAnswers.
func (cn *conn) readRequests() {
	writer := false
	defer func() {
		if !writer {
			close(cn.done)
		}
	}()
	var size [4]byte
	for {
		cn.client.SetReadDeadline(time.Now().Add(cn.p.opts.IdleTimeout))
		if _, err := io.ReadFull(cn.br, size[:]); err != nil {
			return
		}
		n := int32(binary.BigEndian.Uint32(size[:]))
		frame, refused := cn.readFrame(n)
		if refused != "" {
			cn.p.report(Request{Src: cn.f.src, Dst: cn.f.dst, APIKey: -1, Verdict: policy.KafkaVerdict{Index: -1}, Refused: refused})
			if !writer {
				writer = true
				go cn.writeAnswers()
			}
			select {
			case cn.queue <- pending{close: true}:
			case <-cn.done:
			}
			return
		}
		item, up, ok := cn.judge(frame)
		if up && cn.upstream == nil {
			if err := cn.dial(); err != nil {
				cn.release(frame)
				cn.p.report(Request{Src: cn.f.src, Dst: cn.f.dst, APIKey: -1, Verdict: policy.KafkaVerdict{Index: -1},
					Refused: "the broker cannot be reached: " + err.Error()})
				return
			}
		}
		if !writer {
			writer = true
			go cn.writeAnswers()
		}
		select {
		case cn.queue <- item: // waits while MaxInFlight answers are due
		case <-cn.done:
			cn.release(frame)
			return
		}
		if up {
			_, err := cn.upstream.Write(frame)
			cn.release(frame)
			if err != nil {
				return
			}
		} else {
			cn.release(frame)
		}
		if !ok {
			return
		}
	}
}

// readFrame reads a request of n bytes (after its size), with the size in front, held in the
// proxy's budget; it says why when the proxy refuses it.
func (cn *conn) readFrame(n int32) ([]byte, string) {
	if n < 8 {
		return nil, fmt.Sprintf("a request of %d bytes is too short for a request header: connection closed", n)
	}
	// The key comes first: a Produce may be larger than the rest.
	if _, err := cn.br.Peek(2); err != nil {
		return nil, "connection ended within a request"
	}
	head, _ := cn.br.Peek(2)
	limit := cn.p.opts.MaxRequestBytes
	if int16(binary.BigEndian.Uint16(head)) == policy.KafkaProduce {
		limit = cn.p.opts.MaxProduceBytes
	}
	if int(n) > limit {
		return nil, fmt.Sprintf("a request of %d bytes, over the proxy's bound of %d for its kind: connection closed", n, limit)
	}
	total := int64(n) + 4
	if !cn.take(total) {
		held, all := cn.p.buffered.Held(cn.f.src.Addr())
		return nil, fmt.Sprintf("a request of %d bytes refused: the source holds %d bytes in the proxy (most %d), the node %d (most %d): connection closed",
			n, held, cn.p.opts.BufferedPerSource, all, cn.p.opts.BufferedTotal)
	}
	frame := getFrame(int(total))
	binary.BigEndian.PutUint32(frame, uint32(n))
	cn.client.SetReadDeadline(time.Now().Add(cn.p.opts.RequestTimeout))
	if _, err := io.ReadFull(cn.br, frame[4:]); err != nil {
		cn.release(frame)
		return nil, "connection ended within a request"
	}
	return frame, ""
}

// release gives a request's bytes back to the budget and its buffer to the pool, once it was
// judged and written on (nothing refers to it then: what a report or an answer keeps is copied).
func (cn *conn) release(frame []byte) {
	cn.p.buffered.Give(cn.f.src.Addr(), int64(len(frame)))
	putFrame(frame)
}

// framePools keep request buffers by size class, 4 KiB << i up to 16 MiB: a producer's requests
// of about 1 MB each were otherwise a new buffer each, most of what the proxy allocated and the
// collector's work (docs/benchmarks.md).
var framePools [13]sync.Pool

func frameClass(n int) int {
	for i := range framePools {
		if n <= 4096<<i {
			return i
		}
	}
	return -1
}

func getFrame(n int) []byte {
	i := frameClass(n)
	if i < 0 {
		return make([]byte, n)
	}
	if b, ok := framePools[i].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, 4096<<i)
}

func putFrame(b []byte) {
	i := frameClass(cap(b))
	if i < 0 || cap(b) != 4096<<i {
		return
	}
	b = b[:0]
	framePools[i].Put(&b)
}

// take takes n bytes of the budget, waiting a while for other requests to give theirs back.
func (cn *conn) take(n int64) bool {
	deadline := time.Now().Add(cn.p.opts.IdleTimeout)
	for !cn.p.buffered.Take(cn.f.src.Addr(), n) {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-cn.done:
			return false
		case <-cn.p.ctx.Done():
			return false
		}
	}
	return true
}

func (cn *conn) dial() error {
	keep := cn.p.opts.KeepSource == nil || cn.p.opts.KeepSource(cn.f.dst.Addr())
	up, err := tproxy.Dial(cn.p.ctx, "tcp", cn.f.src, cn.f.dst, keep, cn.p.opts.Mark, cn.p.opts.DialTimeout)
	if err != nil {
		return err
	}
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.closed {
		up.Close()
		return errors.New("the client's connection ended")
	}
	cn.upstream = up
	return nil
}

// judge parses and judges one request frame: the item to queue, whether the frame goes to the
// broker, and whether the connection goes on.
func (cn *conn) judge(frame []byte) (pending, bool, bool) {
	// The slot is held for the whole judgement: the parsed request, its topics and the answer
	// take several times the request's bytes until then.
	cn.p.parsing <- struct{}{}
	defer func() { <-cn.p.parsing }()
	h, req, err := parseRequest(frame[4:])
	r := Request{Src: cn.f.src, Dst: cn.f.dst, APIKey: h.key, APIVersion: h.version, CorrelationID: h.corr, ClientID: h.clientID,
		Verdict: policy.KafkaVerdict{Index: -1}}
	if err != nil {
		r.Refused = err.Error() + ": connection closed"
		cn.p.report(r)
		return pending{close: true}, false, false
	}
	var named bool
	if r.Topics, named = topics(req); !named {
		r.Refused = fmt.Sprintf("a %s request naming more than %d topics: connection closed", policy.KafkaKeyName(h.key), MaxTopics)
		cn.p.report(r)
		return pending{close: true}, false, false
	}
	var session *fetchSession
	refuse := ""
	if f, isFetch := req.(*kmsg.FetchRequest); isFetch {
		r.Topics, session, refuse = cn.sessions.fetchTopics(f, r.Topics)
	}
	var d policy.Decision
	ok := false
	if cn.p.opts.Decide != nil {
		d, ok = cn.p.opts.Decide(cn.f.src, cn.f.dst)
	}
	switch {
	case !ok:
		r.Verdict.Reason = "no policy is computed yet"
	case refuse != "":
		r.Verdict.Reason = refuse
	default:
		r.Verdict = d.MatchKafka(policy.KafkaRequest{APIKey: h.key, APIVersion: h.version, ClientID: h.clientID, Topics: r.Topics})
	}
	if r.Verdict.Allowed {
		cn.p.report(r)
		return pending{corr: h.corr, key: h.key, version: h.version, forwarded: expectsAnswer(req),
			decision: d, clientID: h.clientID, session: session}, true, true
	}
	answer, answered := deniedAnswer(h, req)
	if !answered {
		r.Refused = fmt.Sprintf("denied %s request: the proxy answers denied requests only for the kinds that carry topics; connection closed",
			policy.KafkaKeyName(h.key))
		cn.p.report(r)
		return pending{close: true}, false, false
	}
	if answer == nil {
		// A Produce with acks 0: Kafka answers none, and neither does the proxy.
		cn.p.report(r)
		return pending{corr: h.corr, key: h.key}, false, true
	}
	// The answer waits for the client to read it: the source's budget holds it until then.
	if !cn.p.buffered.Take(cn.f.src.Addr(), int64(len(answer))) {
		r.Refused = fmt.Sprintf("an answer of %d bytes to a denied request, over the bytes the source may hold in the proxy: connection closed", len(answer))
		cn.p.report(r)
		return pending{close: true}, false, false
	}
	r.ErrorCode = ErrTopicAuthorizationFailed
	cn.p.report(r)
	return pending{corr: h.corr, key: h.key, answer: answer}, false, true
}

// write writes to the client, which must take it within the idle timeout: a client that stops
// reading its answers ends its connection rather than holding the proxy's.
func (cn *conn) write(b []byte) error {
	cn.client.SetWriteDeadline(time.Now().Add(cn.p.opts.IdleTimeout))
	_, err := cn.client.Write(b)
	return err
}

// writeAnswers writes the client its answers in the order of its requests, until the queue ends
// or a side fails; then it closes both connections.
func (cn *conn) writeAnswers() {
	defer close(cn.done)
	defer cn.closeAll()
	var ub *bufio.Reader
	var head [8]byte
	for item := range cn.queue {
		switch {
		case item.close:
			return
		case item.answer != nil:
			err := cn.write(item.answer)
			cn.p.buffered.Give(cn.f.src.Addr(), int64(len(item.answer)))
			item.answer = nil
			if err != nil {
				return
			}
		case item.forwarded:
			if ub == nil {
				ub = bufio.NewReaderSize(cn.upstream, 32<<10)
			}
			cn.upstream.SetReadDeadline(time.Now().Add(cn.p.opts.IdleTimeout))
			if _, err := io.ReadFull(ub, head[:]); err != nil {
				return
			}
			n := int32(binary.BigEndian.Uint32(head[:4]))
			if int32(binary.BigEndian.Uint32(head[4:])) != item.corr || n < 4 {
				// An answer out of order is not Kafka: the client cannot be given it.
				cn.p.report(Request{Src: cn.f.src, Dst: cn.f.dst, APIKey: item.key, APIVersion: item.version, CorrelationID: item.corr,
					Verdict: policy.KafkaVerdict{Index: -1}, Refused: "the broker's answer does not match the request it is due for: connection closed"})
				return
			}
			if item.key == policy.KafkaAPIVersions {
				if err := cn.writeAPIVersions(ub, head, n, item); err != nil {
					return
				}
				continue
			}
			if item.key == policy.KafkaFetch {
				cn.sessions.answered(item.session, item.version, ub, n-4)
			}
			if err := cn.write(head[:]); err != nil {
				return
			}
			if _, err := io.CopyN(deadlineWriter{cn}, ub, int64(n-4)); err != nil {
				return
			}
		}
	}
}

// writeAPIVersions reads the broker's ApiVersions answer whole and gives the client the API keys
// and versions the flow's rules can allow, which the proxy can judge (see advertise).
func (cn *conn) writeAPIVersions(ub *bufio.Reader, head [8]byte, n int32, item pending) error {
	if n > maxAPIVersionsAnswer {
		return fmt.Errorf("an ApiVersions answer of %d bytes", n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(ub, body); err != nil {
		return err
	}
	resp := &kmsg.ApiVersionsResponse{Version: item.version}
	out := body
	// A broker that does not speak the request's version answers in version 0 with an error;
	// that answer (and any the proxy cannot read) goes as it came.
	if err := resp.ReadFrom(body); err == nil && resp.ErrorCode == 0 {
		resp.ApiKeys = advertise(resp.ApiKeys, item.decision, item.clientID)
		out = resp.AppendTo(nil)
	}
	binary.BigEndian.PutUint32(head[:4], uint32(len(out)+4))
	if err := cn.write(head[:]); err != nil {
		return err
	}
	return cn.write(out)
}

// deadlineWriter writes to the client with cn.write's deadline.
type deadlineWriter struct{ cn *conn }

func (w deadlineWriter) Write(b []byte) (int, error) {
	if err := w.cn.write(b); err != nil {
		return 0, err
	}
	return len(b), nil
}
