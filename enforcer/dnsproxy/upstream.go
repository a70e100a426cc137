package dnsproxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/policy"
)

// upstreamKey names a connection to a server: one per protocol, pod address and port, and
// server, shared by every query they have in flight. Resolvers send several queries from one
// port without waiting (musl sends A and AAAA at once); one socket carries them all, as the
// pod's own would have, and answers are matched to queries by ID and question.
type upstreamKey struct {
	proto    policy.Proto
	src, dst netip.AddrPort
}

// upstream is a connection to a server (a connected UDP socket, or TCP) and the queries waiting
// for its answers. It lives while a query, or for TCP the pod's connection, holds it (refs).
type upstream struct {
	key   upstreamKey
	ready chan struct{} // closed once dialled
	conn  net.Conn
	refs  int // under Proxy.mu
	wmu   sync.Mutex

	mu      sync.Mutex
	err     error // why it stopped: dial or read failure, or closed
	pending map[uint16]*exchange
}

// exchange is a query waiting for its answer, by the ID it went upstream with.
type exchange struct {
	q  dns.Question
	ch chan result // buffered: the reader never waits
}

type result struct {
	msg *dns.Msg
	err error
}

// forward sends a query to its original destination and waits for the answer, at most
// UpstreamTimeout (a context error then).
func (p *Proxy) forward(q *query) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.opts.UpstreamTimeout)
	defer cancel()
	key := upstreamKey{proto: q.proto, src: q.src, dst: q.dst}
	var u *upstream
	var err error
	if q.tcp != nil {
		u, err = q.tcp.upstream(ctx, p, key)
	} else {
		u, err = p.acquire(ctx, key)
		defer p.release(u)
	}
	if err != nil {
		return nil, err
	}
	return u.exchange(ctx, q)
}

// acquire returns the connection for key, dialling it when there is none (or a dead one), and
// holds it until release.
func (p *Proxy) acquire(ctx context.Context, key upstreamKey) (*upstream, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errClosing
	}
	u := p.upstreams[key]
	dial := u == nil || u.stopped() != nil
	if dial {
		u = &upstream{key: key, ready: make(chan struct{}), pending: map[uint16]*exchange{}}
		p.upstreams[key] = u
	}
	u.refs++
	p.mu.Unlock()
	if dial {
		// One dial per key: two UDP sockets bound to the same pod port and connected to the
		// same server would split its answers between them.
		p.dial(ctx, u)
	} else {
		select {
		case <-u.ready:
		case <-ctx.Done():
			p.release(u)
			return nil, ctx.Err()
		}
	}
	if err := u.stopped(); err != nil {
		p.release(u)
		return nil, err
	}
	return u, nil
}

func (p *Proxy) dial(ctx context.Context, u *upstream) {
	defer close(u.ready)
	network := "udp"
	if u.key.proto == policy.ProtoTCP {
		network = "tcp"
	}
	keep := p.redirect == nil && (p.opts.KeepSource == nil || p.opts.KeepSource(u.key.dst.Addr()))
	c, err := tproxy.Dial(ctx, network, u.key.src, u.key.dst, keep, p.opts.Mark, 0)
	if err != nil {
		u.stop(err)
		p.forget(u)
		return
	}
	u.conn = c
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		u.read()
		p.forget(u)
	}()
}

// release lets go of a connection acquire returned; the last holder closes it.
func (p *Proxy) release(u *upstream) {
	if u == nil {
		return
	}
	p.mu.Lock()
	u.refs--
	last := u.refs == 0
	if last && p.upstreams[u.key] == u {
		delete(p.upstreams, u.key)
	}
	p.mu.Unlock()
	if last {
		u.close()
	}
}

// forget drops a stopped connection from the table, so that the next query dials again.
func (p *Proxy) forget(u *upstream) {
	p.mu.Lock()
	if p.upstreams[u.key] == u {
		delete(p.upstreams, u.key)
	}
	p.mu.Unlock()
}

func (u *upstream) close() {
	<-u.ready
	u.stop(net.ErrClosed)
	if u.conn != nil {
		u.conn.Close()
	}
}

func (u *upstream) stopped() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

// stop fails every query waiting on the connection with err (the first error stays).
func (u *upstream) stop(err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.err == nil {
		u.err = err
	}
	for id, ex := range u.pending {
		ex.ch <- result{err: u.err}
		delete(u.pending, id)
	}
}

// exchange sends a query with an ID of the connection's own (a pod's queries from several
// ports may share none, but a retried query must not take its first try's answer) and waits for
// the answer to it.
func (u *upstream) exchange(ctx context.Context, q *query) (*dns.Msg, error) {
	ex := &exchange{q: q.req.Question[0], ch: make(chan result, 1)}
	u.mu.Lock()
	if u.err != nil {
		u.mu.Unlock()
		return nil, u.err
	}
	id := uint16(rand.Uint32())
	for u.pending[id] != nil {
		id = uint16(rand.Uint32())
	}
	u.pending[id] = ex
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		if u.pending[id] == ex {
			delete(u.pending, id)
		}
		u.mu.Unlock()
	}()
	b, err := upstreamQuery(q, id)
	if err != nil {
		return nil, fmt.Errorf("pack the query for %s: %w", q.dst, err)
	}
	if err := u.write(ctx, b); err != nil {
		return nil, fmt.Errorf("send the query to %s: %w", q.dst, err)
	}
	select {
	case r := <-ex.ch:
		if r.err != nil {
			return nil, fmt.Errorf("answer from %s: %w", q.dst, r.err)
		}
		return r.msg, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// upstreamQuery is the pod's query with the upstream ID. Over UDP, an EDNS0 size above
// MaxUDPAnswer is lowered to it.
func upstreamQuery(q *query, id uint16) ([]byte, error) {
	if opt := q.req.IsEdns0(); q.proto == policy.ProtoUDP && opt != nil && opt.UDPSize() > MaxUDPAnswer {
		m := q.req.Copy()
		m.Id = id
		m.IsEdns0().SetUDPSize(MaxUDPAnswer)
		return m.Pack()
	}
	b := slices.Clone(q.raw)
	binary.BigEndian.PutUint16(b, id)
	return b, nil
}

func (u *upstream) write(ctx context.Context, b []byte) error {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if d, ok := ctx.Deadline(); ok {
		u.conn.SetWriteDeadline(d)
	}
	if u.key.proto == policy.ProtoTCP {
		b = append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(b)), uint16(len(b))), b...)
	}
	_, err := u.conn.Write(b)
	return err
}

// read hands each answer to the query waiting for it, until the connection fails or is closed.
func (u *upstream) read() {
	var err error
	if u.key.proto == policy.ProtoTCP {
		err = u.readTCP()
	} else {
		err = u.readUDP()
	}
	u.stop(err)
}

func (u *upstream) readUDP() error {
	buf := make([]byte, MaxUDPAnswer+1)
	for {
		n, err := u.conn.Read(buf)
		if err != nil {
			return err
		}
		if n > MaxUDPAnswer {
			u.deliver(buf[:n], fmt.Errorf("an answer of more than %d bytes, the size the query asked for", MaxUDPAnswer))
			continue
		}
		u.deliver(buf[:n], nil)
	}
}

func (u *upstream) readTCP() error {
	br := bufio.NewReader(u.conn)
	var n [2]byte
	for {
		if _, err := io.ReadFull(br, n[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("the server closed the connection")
			}
			return err
		}
		b := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		u.deliver(b, nil)
	}
}

// deliver hands an answer to the query with its ID and question (an answer without a question,
// as some servers send with an error, goes by ID). Anything else is a late answer to a query
// that gave up, or not an answer at all: dropped.
func (u *upstream) deliver(b []byte, bad error) {
	if len(b) < 12 {
		return
	}
	id := binary.BigEndian.Uint16(b)
	u.mu.Lock()
	defer u.mu.Unlock()
	ex := u.pending[id]
	if ex == nil {
		return
	}
	m := new(dns.Msg)
	if bad == nil {
		if err := m.Unpack(b); err != nil {
			bad = fmt.Errorf("a malformed answer: %w", err)
		} else if !m.Response {
			return
		} else if len(m.Question) > 0 && !sameQuestion(m.Question[0], ex.q) {
			return
		}
	}
	delete(u.pending, id)
	if bad != nil {
		ex.ch <- result{err: bad}
		return
	}
	ex.ch <- result{msg: m}
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
