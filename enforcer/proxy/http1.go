package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/policy"
)

// hopHeaders are the hop-by-hop headers a proxy does not forward (RFC 9110 section 7.6.1), and
// HTTP2-Settings, which only an h2c upgrade uses (RFC 7540 section 3.2.1), even when Connection
// does not name it.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Upgrade",
	"Http2-Settings"}

// Envoy's bodies of the answers the proxy gives itself when the destination fails.
const (
	upstreamConnectFailure = "upstream connect error or disconnect/reset before headers. reset reason: connection failure\r\n"
	upstreamTermination    = "upstream connect error or disconnect/reset before headers. reset reason: connection termination\r\n"
	upstreamTimeout        = "upstream request timeout\r\n"
	upstreamConnectTimeout = "upstream connect error or disconnect/reset before headers. reset reason: connection timeout\r\n"
)

// maxDrain is how much of a denied request's body is read so the connection can be kept.
const maxDrain = 64 << 10

// writeDenied writes Cilium's 403: status line, content-length, content-type, date, server, the
// body (CRLF-terminated); and connection: close when the connection ends after it. The caller
// flushes w.
func (p *Proxy) writeDenied(w *bufio.Writer, closing bool) {
	fmt.Fprintf(w, "HTTP/1.1 403 Forbidden\r\ncontent-length: %d\r\ncontent-type: text/plain\r\ndate: %s\r\nserver: envoy\r\n",
		len(p.body), time.Now().UTC().Format(http.TimeFormat))
	if closing {
		w.WriteString("connection: close\r\n")
	}
	w.WriteString("\r\n")
	w.WriteString(p.body)
}

// writeStatus writes a short response of the proxy's own (400, 503), and the connection ends.
func writeStatus(w *bufio.Writer, code int, msg string) {
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\ndate: %s\r\nserver: envoy\r\nconnection: close\r\n\r\n%s",
		code, http.StatusText(code), len(msg), time.Now().UTC().Format(http.TimeFormat), msg)
	w.Flush()
}

// upstream is the connection to the destination a client connection's allowed requests go on.
type upstream struct {
	c  net.Conn
	lr *limitedReader // bounds the response header
	br *bufio.Reader
	bw *bufio.Writer
	// peerCloses: the last response said connection: close, so the destination closes first.
	peerCloses bool
	wg         *sync.WaitGroup // the proxy's: Close waits for the wait below too
}

// peerCloseWait bounds the wait for a destination that said connection: close to close.
const peerCloseWait = time.Second

func (u *upstream) close() {
	if u == nil || u.c == nil {
		return
	}
	c, br, bw, wait := u.c, u.br, u.bw, u.peerCloses
	u.c = nil
	if !wait {
		c.Close()
		putReader(br)
		putWriter(bw)
		return
	}
	// Let the destination close first, as it means to: the TIME_WAIT is then its socket's and
	// not the node's, which holds the pod's address (see tproxy.Dial).
	u.wg.Add(1) // within a connection's goroutine, which the proxy's Close waits for
	go func() {
		defer u.wg.Done()
		c.SetReadDeadline(time.Now().Add(peerCloseWait))
		io.Copy(io.Discard, io.LimitReader(br, maxDrain))
		c.Close()
		putReader(br)
		putWriter(bw)
	}()
}

// serveHTTP1 judges each request of a keep-alive connection and forwards the allowed ones on one
// upstream connection, reopened when the destination closed it. It returns true when it ends
// after a complete response that closed the connection.
func (p *Proxy) serveHTTP1(c net.Conn, br *bufio.Reader, lr *limitedReader, f flow) bool {
	bw := getWriter(c)
	defer putWriter(bw)
	var up *upstream
	defer func() { up.close() }()
	for {
		req := p.nextRequest(c, br, lr, f, bw)
		if req == nil {
			return false
		}
		start := time.Now()
		target, redirect, err := policy.NormalizeHTTPTarget(req.RequestURI)
		if err != nil {
			writeStatus(bw, http.StatusBadRequest, "bad request path\r\n")
			return false
		}
		rec := Request{Src: f.src, Dst: f.dst, Protocol: req.Proto, Method: req.Method, Path: target, Host: req.Host}
		if redirect {
			// Escaped slashes: redirected to the unescaped path, as Cilium's Envoy does
			// (UNESCAPE_AND_REDIRECT); the client asks again and that request is judged.
			fmt.Fprintf(bw, "HTTP/1.1 307 Temporary Redirect\r\nlocation: %s\r\ncontent-length: 0\r\ndate: %s\r\nserver: envoy\r\n\r\n",
				target, time.Now().UTC().Format(http.TimeFormat))
			// A client waiting on Expect: 100-continue sends no body: the connection ends.
			lr.idle = 0 // drain bounds the whole body
			if bw.Flush() != nil || strings.EqualFold(req.Header.Get("Expect"), "100-continue") || !drain(c, req) {
				return false
			}
			continue
		}
		rec.Verdict = p.judge(f, policy.HTTPRequest{Method: req.Method, Path: target, Host: req.Host, Header: req.Header})
		if !rec.Verdict.Allowed {
			if goOn, completed := p.deny(c, req, &rec, lr, bw, start); !goOn {
				return completed
			}
			continue
		}
		policy.ApplyHeaderActions(req.Header, rec.Verdict.Actions)
		upgrade, refused := upstreamHeader(req.Header)
		if refused != "" {
			// Envoy's upgrade_failed: a 403 with no body, and the connection ends (what the
			// client sends next may already be in the protocol it asked for).
			rec.Refused = fmt.Sprintf("upgrade to %q refused: the proxy switches protocols to %s only", refused, switchableUpgrade)
			rec.Status, rec.Latency = http.StatusForbidden, time.Since(start)
			writeStatus(bw, http.StatusForbidden, "")
			p.report(rec)
			return true
		}
		if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
			req.Header.Del("Expect")
			bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if bw.Flush() != nil {
				return false
			}
		}
		if up == nil {
			if up = p.connectUpstream(f, &rec, bw, start); up == nil {
				return false
			}
		}
		keep, reuse := p.forward(&rec, req, target, upgrade, up, c, lr, br, bw)
		rec.Latency = time.Since(start)
		p.report(rec)
		if !keep {
			return rec.Status != 0 && rec.Status != http.StatusSwitchingProtocols
		}
		if !reuse {
			up.close()
			up = nil
		}
	}
}

// nextRequest reads the connection's next request line and headers: its first byte within the
// idle timeout, then held against the source's budget until parsed, within the header timeout
// from there. nil: the connection ends (what went wrong was answered, when it can be).
func (p *Proxy) nextRequest(c net.Conn, br *bufio.Reader, lr *limitedReader, f flow, bw *bufio.Writer) *http.Request {
	lr.idle = 0
	lr.counting = true
	lr.n = int64(p.opts.MaxHeaderBytes - br.Buffered()) // what is buffered is this header's
	c.SetReadDeadline(time.Now().Add(p.opts.IdleTimeout))
	if _, err := br.Peek(1); err != nil {
		if errors.Is(lr.err, errOverBudget) {
			p.refuseOverBudget(c, f, "request header")
		}
		return nil
	}
	c.SetReadDeadline(time.Now().Add(p.opts.HeaderTimeout))
	req, err := http.ReadRequest(br)
	overBudget := errors.Is(lr.err, errOverBudget)
	lr.release()
	if err != nil {
		switch {
		case overBudget:
			p.refuseOverBudget(c, f, "request header")
		case errors.Is(err, errHeaderTooLarge):
			writeStatus(bw, http.StatusRequestHeaderFieldsTooLarge, "request header too large\r\n")
		case isTimeout(err):
			writeStatus(bw, http.StatusRequestTimeout, "request header timeout\r\n")
		case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed):
			writeStatus(bw, http.StatusBadRequest, "bad request\r\n")
		}
		return nil
	}
	lr.n = 1 << 62 // the body: its framing bounds it
	if req.ContentLength != 0 {
		// A body may take longer than the idle timeout as a whole, but no read of it may
		// wait that long: a client cannot hold the connection and its upstream by stalling.
		lr.idle = p.opts.IdleTimeout
	}
	return req
}

// deny answers a request the rules deny with the 403, judged before its body: a client waiting on
// Expect: 100-continue never sends it. goOn says whether the connection takes another request;
// when it does not, completed says whether it ended after a complete response.
func (p *Proxy) deny(c net.Conn, req *http.Request, rec *Request, lr *limitedReader, bw *bufio.Writer, start time.Time) (goOn, completed bool) {
	expect := strings.EqualFold(req.Header.Get("Expect"), "100-continue")
	lr.idle = 0 // drain bounds the whole body
	closing := req.Close || expect || !drain(c, req)
	rec.Status, rec.Latency = http.StatusForbidden, time.Since(start)
	p.writeDenied(bw, closing)
	var err error
	if closing {
		err = finish(c, bw)
	} else {
		err = bw.Flush()
	}
	p.report(*rec)
	if err != nil || closing {
		return false, err == nil
	}
	return true, false
}

// connectUpstream opens the connection to the flow's destination; nil when it cannot, after a
// 503 as Envoy words it.
func (p *Proxy) connectUpstream(f flow, rec *Request, bw *bufio.Writer, start time.Time) *upstream {
	uc, err := p.dial(context.Background(), f)
	if err != nil {
		rec.Latency = time.Since(start)
		rec.Status, rec.Refused = http.StatusServiceUnavailable, err.Error()
		p.report(*rec)
		msg := upstreamConnectFailure
		if isTimeout(err) {
			msg = upstreamConnectTimeout
		}
		writeStatus(bw, http.StatusServiceUnavailable, msg)
		return nil
	}
	ulr := &limitedReader{r: uc, n: 1 << 62, c: uc}
	return &upstream{c: uc, lr: ulr, br: getReader(ulr), bw: getWriter(uc), wg: &p.wg}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// drainTimeout bounds reading the body of a request the proxy answers itself.
const drainTimeout = 10 * time.Second

// drain reads what is left of a request's body, up to maxDrain and within drainTimeout; false
// when more was left (or it came too slowly, or broken): the connection then ends.
func drain(c net.Conn, req *http.Request) bool {
	c.SetReadDeadline(time.Now().Add(drainTimeout))
	n, err := io.Copy(io.Discard, io.LimitReader(req.Body, maxDrain+1))
	req.Body.Close()
	return err == nil && n <= maxDrain
}

// flushingBody flushes the client writer before each read of the response body that would wait
// on the destination: small responses go out in one write, streamed ones as they come. A body of
// known length read to its end is not flushed before the read that finds the end: the response's
// last bytes then go out with what follows (finish: with the FIN).
type flushingBody struct {
	io.ReadCloser
	src  *bufio.Reader
	dst  *bufio.Writer
	left int64 // bytes of the body still to come; -1: unknown (chunked, or until close)
}

func (b *flushingBody) Read(p []byte) (int, error) {
	if b.src.Buffered() == 0 && b.left != 0 {
		if err := b.dst.Flush(); err != nil {
			return 0, err
		}
	}
	n, err := b.ReadCloser.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	return n, err
}

// forward sends an allowed request, its header as upstreamHeader left it, to the destination
// and its response back; upgrade is the protocol switch passed on ("": none). keep says whether
// the client connection goes on, reuse whether the upstream one does. It sets rec's Status (0:
// no response came) and, when it cut the exchange, Refused.
func (p *Proxy) forward(rec *Request, req *http.Request, target, upgrade string, up *upstream, c net.Conn, lr *limitedReader, br *bufio.Reader, bw *bufio.Writer) (keep, reuse bool) {
	upstreamTarget(req.URL, target)
	// A request after which the client's connection ends says so to the destination too, so the
	// destination closes first and holds the TIME_WAIT, as it would for the client directly: the
	// node keeps none for the pod's address (see tproxy.Dial).
	clientClose := req.Close
	// The destination gets the client's headers, not Go's: without a User-Agent of the client's,
	// req.Write would add its own (an empty value is written as none).
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""}
	}
	if err := req.Write(up.bw); err != nil {
		if isTimeout(lr.err) { // a read of the client's body waited the idle timeout
			writeStatus(bw, http.StatusRequestTimeout, "request body timeout\r\n")
			rec.Status = http.StatusRequestTimeout
			return false, false
		}
		writeStatus(bw, http.StatusServiceUnavailable, upstreamTermination)
		return false, false
	}
	if err := up.bw.Flush(); err != nil {
		writeStatus(bw, http.StatusServiceUnavailable, upstreamTermination)
		return false, false
	}
	// The response header, bounded as a request's is, within the response header timeout.
	up.c.SetReadDeadline(time.Now().Add(p.opts.ResponseHeaderTimeout))
	var resp *http.Response
	for {
		var err error
		up.lr.n = int64(p.opts.MaxHeaderBytes) + int64(up.br.Buffered())
		resp, err = http.ReadResponse(up.br, req)
		if err != nil {
			switch {
			case isTimeout(err):
				rec.Status, rec.Refused = http.StatusGatewayTimeout, fmt.Sprintf("no response header from the destination within %v", p.opts.ResponseHeaderTimeout)
				writeStatus(bw, http.StatusGatewayTimeout, upstreamTimeout)
			case errors.Is(err, errHeaderTooLarge):
				rec.Status, rec.Refused = http.StatusBadGateway, fmt.Sprintf("the destination's response header is over %d bytes", p.opts.MaxHeaderBytes)
				writeStatus(bw, http.StatusBadGateway, "upstream response header too large\r\n")
			default:
				writeStatus(bw, http.StatusServiceUnavailable, upstreamTermination)
			}
			return false, false
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			resp.Write(bw) // an interim response (103 Early Hints): passed on, the final one follows
			bw.Flush()
			continue
		}
		break
	}
	up.lr.n = 1 << 62 // the body: its framing bounds it
	up.c.SetReadDeadline(time.Time{})
	rec.Status = resp.StatusCode
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if upgrade == "" {
			// A switch the proxy did not pass on (an h2c upgrade it removed, or none at all):
			// what would follow is a protocol nobody judges, so it does not follow.
			rec.Status = http.StatusBadGateway
			rec.Refused = "the destination switched protocols (101) although the proxy passed no upgrade on: connection closed"
			writeStatus(bw, http.StatusBadGateway, "upstream switched protocols unasked\r\n")
			return false, false
		}
		resp.Write(bw)
		if bw.Flush() != nil {
			return false, false
		}
		lr.idle = 0
		c.SetReadDeadline(time.Time{}) // the switched protocol keeps its own time
		splice(c, br, up)
		return false, false
	}
	removeHopByHop(resp.Header)
	upClose := resp.Close
	up.peerCloses = upClose
	resp.Close = clientClose || upClose
	left := resp.ContentLength
	if left < 0 {
		left = -1
	}
	resp.Body = &flushingBody{ReadCloser: resp.Body, src: up.br, dst: bw, left: left}
	err := resp.Write(bw)
	resp.Body.Close()
	if err == nil {
		if resp.Close {
			err = finish(c, bw)
		} else {
			err = bw.Flush()
		}
	}
	if err != nil {
		return false, false
	}
	// A response that said connection: close (the client's or the destination's wish) is the
	// connection's last: a request the client sent after it is not forwarded.
	return !resp.Close, !upClose
}

// finish writes the last of a connection's last response and ends the connection's sending
// side, the FIN in the segment with those bytes (TCP_CORK while both are queued): the client
// learns that the connection ends when it reads the response, before it can close itself. This
// side's FIN goes first, as a server's does: the TIME_WAIT is the node's, and the pod's port is
// free at once (see serveConn).
func finish(c net.Conn, bw *bufio.Writer) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return bw.Flush()
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return bw.Flush()
	}
	cork := func(on int) {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, on) })
	}
	cork(1)
	err = bw.Flush()
	tc.CloseWrite()
	cork(0)
	return err
}

// splice copies both ways after a protocol switch (WebSocket, the only one upstreamHeader passes
// on): the proxy judged the request that asked for it, and judges nothing after it.
func splice(c net.Conn, br *bufio.Reader, up *upstream) {
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(up.c, br)
		if tc, ok := up.c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		io.Copy(c, up.br)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

// connectionHeaders are the headers the Connection header names: hop-by-hop too.
func connectionHeaders(h http.Header) []string {
	var out []string
	for _, v := range h.Values("Connection") {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
