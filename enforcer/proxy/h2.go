package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"time"

	"github.com/netpact/netpact/policy"
)

type h2Key struct{}

// h2Flow is an HTTP/2 client connection: its flow and the transport its allowed streams go to the
// destination on (HTTP/2 with prior knowledge, one connection from the client's address).
type h2Flow struct {
	f    flow
	once sync.Once
	tr   *http.Transport
	rp   *httputil.ReverseProxy
}

func (p *Proxy) h2ConnContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*peeked); ok {
		hf := &h2Flow{f: pc.f}
		p.h2flows.Store(c, hf)
		return context.WithValue(ctx, h2Key{}, hf)
	}
	return ctx
}

func (p *Proxy) h2ConnState(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateClosed, http.StateHijacked:
		if v, ok := p.h2flows.LoadAndDelete(c); ok {
			if hf := v.(*h2Flow); hf.tr != nil {
				hf.tr.CloseIdleConnections()
			}
		}
		if pc, ok := c.(*peeked); ok {
			p.buffered.Give(pc.f.src.Addr(), pc.reserved)
			pc.reserved = 0
			p.untrack(pc.Conn)
		}
	}
}

func (p *Proxy) h2Proxy(hf *h2Flow) *httputil.ReverseProxy {
	hf.once.Do(func() {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		hf.tr = &http.Transport{
			Protocols:              &protos,
			DialContext:            func(ctx context.Context, _, _ string) (net.Conn, error) { return p.dial(ctx, hf.f) },
			MaxIdleConnsPerHost:    1,
			IdleConnTimeout:        p.opts.IdleTimeout,
			ResponseHeaderTimeout:  p.opts.ResponseHeaderTimeout,
			MaxResponseHeaderBytes: int64(p.opts.MaxHeaderBytes),
		}
		hf.rp = &httputil.ReverseProxy{
			Transport:     hf.tr,
			FlushInterval: -1, // gRPC streams: every write goes on at once
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.Out.URL.Scheme = "http"
				pr.Out.URL.Host = hf.f.dst.String()
				// The query as judged: ReverseProxy drops what it cannot parse (";").
				pr.Out.URL.RawQuery = pr.In.URL.RawQuery
				pr.Out.Host = pr.In.Host
			},
			ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
				code, msg := http.StatusServiceUnavailable, upstreamConnectFailure
				var oe *net.OpError
				switch dial := errors.As(err, &oe) && oe.Op == "dial"; {
				case dial && isTimeout(err):
					msg = upstreamConnectTimeout
				case !dial && isTimeout(err):
					code, msg = http.StatusGatewayTimeout, upstreamTimeout
				}
				w.Header().Set("Content-Type", "text/plain")
				w.Header().Set("Content-Length", strconv.Itoa(len(msg)))
				w.Header().Set("Server", "envoy")
				w.WriteHeader(code)
				w.Write([]byte(msg))
			},
		}
	})
	return hf.rp
}

// serveH2 judges one HTTP/2 stream: a gRPC call is a POST to /package.Service/Method, and a
// denied one gets the same 403, which gRPC clients report as PermissionDenied.
func (p *Proxy) serveH2(w http.ResponseWriter, r *http.Request) {
	hf, _ := r.Context().Value(h2Key{}).(*h2Flow)
	if hf == nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	start := time.Now()
	target, redirect, err := policy.NormalizeHTTPTarget(r.RequestURI)
	if err != nil {
		http.Error(w, "bad request path", http.StatusBadRequest)
		return
	}
	rec := Request{Src: hf.f.src, Dst: hf.f.dst, Protocol: "HTTP/2", Method: r.Method, Path: target, Host: r.Host}
	if redirect {
		w.Header().Set("Location", target)
		w.Header().Set("Server", "envoy")
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	rec.Verdict = p.judge(hf.f, policy.HTTPRequest{Method: r.Method, Path: target, Host: r.Host, Header: r.Header})
	if !rec.Verdict.Allowed {
		w.Header().Set("Content-Length", strconv.Itoa(len(p.body)))
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Server", "envoy")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(p.body))
		rec.Status, rec.Latency = http.StatusForbidden, time.Since(start)
		p.report(rec)
		return
	}
	policy.ApplyHeaderActions(r.Header, rec.Verdict.Actions)
	upstreamTarget(r.URL, target)
	sw := &statusWriter{ResponseWriter: w}
	p.h2Proxy(hf).ServeHTTP(sw, r)
	rec.Status, rec.Latency = sw.status, time.Since(start)
	p.report(rec)
}

// statusWriter remembers the status a response was sent with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the HTTP/2 writer (trailers, flushing).
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
