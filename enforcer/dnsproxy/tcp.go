package dnsproxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/policy"
)

func (p *Proxy) acceptTCP(l net.Listener) {
	defer p.wg.Done()
	tproxy.Accept(l, func(c net.Conn) bool {
		if !p.track(c) {
			c.Close()
			return false
		}
		src := tproxy.AddrPort(c.RemoteAddr())
		if !p.conns.Take(src.Addr(), 1) {
			// Reset at once (no TIME_WAIT, nothing read): the pod's other connections go on.
			p.report(Query{Src: src, Dst: tproxy.AddrPort(c.LocalAddr()), Proto: policy.ProtoTCP, Rcode: NoAnswer,
				Verdict: policy.DNSVerdict{Index: -1}, Refused: fmt.Sprintf(
					"connection reset: the source has %d TCP connections open to the DNS proxy, the most it may", p.opts.ConnsPerSource)})
			tproxy.Reset(c)
			p.untrack(c)
			return true
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.conns.Give(src.Addr(), 1)
			p.serveTCP(c)
		}()
		return true
	})
}

// track counts a pod's connection, for Close; false when the proxy is closing.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.tcp[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.tcp, c)
	p.mu.Unlock()
}

// tcpConn is a pod's TCP connection to the proxy. Its queries (a client may send several
// without waiting, RFC 7766) are answered as they come, and share one connection to the server,
// held from the first query the policy allows until the pod's connection ends.
type tcpConn struct {
	c    net.Conn
	idle time.Duration
	wmu  sync.Mutex

	mu       sync.Mutex
	inflight int
	up       *upstream
	closed   bool
}

// serveTCP reads a pod's queries, each a 2-byte length and a message of at most MaxQuerySize
// bytes, until the pod closes, sends something else, or has no query in flight and sends none
// for TCPIdleTimeout.
func (p *Proxy) serveTCP(c net.Conn) {
	t := &tcpConn{c: c, idle: p.opts.TCPIdleTimeout}
	src, dst := tproxy.AddrPort(c.RemoteAddr()), tproxy.AddrPort(c.LocalAddr())
	defer func() {
		t.mu.Lock()
		t.closed = true
		up := t.up
		t.mu.Unlock()
		p.release(up)
		c.Close()
		p.untrack(c)
	}()
	br := bufio.NewReaderSize(c, 2+MaxQuerySize)
	for {
		c.SetReadDeadline(time.Now().Add(t.idle))
		head, err := br.Peek(2)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && t.busy() {
				continue // the pod waits for an answer, not idle
			}
			return
		}
		n := int(binary.BigEndian.Uint16(head))
		if n > MaxQuerySize {
			p.report(Query{Src: src, Dst: dst, Proto: policy.ProtoTCP, Rcode: NoAnswer, Verdict: policy.DNSVerdict{Index: -1},
				Refused: fmt.Sprintf("a TCP message of %d bytes, more than the %d a query may have: not a DNS query, connection closed", n, MaxQuerySize)})
			return
		}
		br.Discard(2)
		// The idle deadline bounds the message's bytes too: a pod cannot hold a half-sent query.
		msg := make([]byte, n)
		if _, err := io.ReadFull(br, msg); err != nil {
			return
		}
		t.mu.Lock()
		t.inflight++
		t.mu.Unlock()
		p.take(src, dst, policy.ProtoTCP, msg, t, t)
	}
}

func (t *tcpConn) busy() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.inflight > 0
}

func (t *tcpConn) reply(b []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	t.c.SetWriteDeadline(time.Now().Add(t.idle))
	_, err := t.c.Write(append(binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(b)), uint16(len(b))), b...))
	return err
}

func (t *tcpConn) done() {
	t.mu.Lock()
	t.inflight--
	t.mu.Unlock()
}

// upstream is the connection to the server the pod's queries share.
func (t *tcpConn) upstream(ctx context.Context, p *Proxy, key upstreamKey) (*upstream, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, errors.New("the client closed the connection")
	}
	if t.up != nil && t.up.stopped() == nil {
		return t.up, nil
	}
	p.release(t.up)
	t.up = nil
	u, err := p.acquire(ctx, key)
	if err != nil {
		return nil, err
	}
	t.up = u
	return u, nil
}
