package proxy

// The proxy's request path without the datapath, for tests that need no privilege: a loopback
// connection is handed to the proxy with the flow the datapath would have kept (serveFlow, as
// serveConn does), each request is judged on a real policy compiled by the policy package, and
// the destination is an HTTP server on 127.0.0.1. The proxy has no transparent listener
// (newProxy) and reaches the destination from an ordinary socket (KeepSource false, no mark).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netpact/netpact/policy"
)

// The pods of the cluster testdata/get-public.yaml is compiled over, with the ports of their flows.
var (
	clientPod = netip.MustParseAddrPort("10.0.0.1:40000")
	serverPod = netip.MustParseAddrPort("10.0.0.2:80")
	otherPod  = netip.MustParseAddrPort("10.0.0.3:40000")
)

// decideGetPublic is the node's Decide (enforcer.Enforcer.DecideTCP) under
// testdata/get-public.yaml, for flows whose original destination is dst: it stands for server:80,
// since a test without privileges can listen on no pod's address.
func decideGetPublic(t *testing.T, dst netip.AddrPort) func(src, dst netip.AddrPort) (policy.Decision, bool) {
	t.Helper()
	b, err := policy.Load([]string{"testdata/get-public.yaml"}, policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := func(name string, a netip.AddrPort) policy.Endpoint {
		return policy.Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name}, IPs: []netip.Addr{a.Addr()}}
	}
	c := &policy.Cluster{Namespaces: []policy.Namespace{{Name: "app"}},
		Endpoints: []policy.Endpoint{pod("client", clientPod), pod("server", serverPod), pod("other", otherPod)}}
	st, err := policy.Compile(c, b, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return func(src, to netip.AddrPort) (policy.Decision, bool) {
		if to != dst {
			t.Errorf("judged a flow to %v, want its original destination %v", to, dst)
		}
		return st.Decide(src.Addr(), serverPod.Addr(), policy.ProtoTCP, serverPod.Port()), true
	}
}

// received is a request as the destination read it: its header as it came on the wire, its body
// as its framing gave it.
type received struct {
	Method, Target string
	Header         http.Header
	Body           string
}

// destination is an HTTP/1.1 server on 127.0.0.1 standing for server:80: it records each request
// and answers 200 "served <target>", with header.
type destination struct {
	addr netip.AddrPort
	got  chan received
}

type wireKey struct{}

func newDestination(t *testing.T, header http.Header) *destination {
	d := &destination{got: make(chan received, 16)}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		// The proxy sends a request once the last one's response came: what was read is this
		// request's alone. Net/http's own view of the header has the framing taken out of it.
		head, _, _ := strings.Cut(r.Context().Value(wireKey{}).(*wireConn).take(), "\r\n\r\n")
		tp := textproto.NewReader(bufio.NewReader(strings.NewReader(head + "\r\n\r\n")))
		tp.ReadLine()
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			t.Errorf("the destination's request header %q: %v", head, err)
		}
		// Before the response: once the client has it, next finds the request.
		d.got <- received{Method: r.Method, Target: r.RequestURI, Header: http.Header(h), Body: string(body)}
		maps.Copy(w.Header(), header)
		fmt.Fprintf(w, "served %s", r.RequestURI)
	}))
	srv.Listener = wireListener{srv.Listener}
	srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, wireKey{}, c) }
	srv.Start()
	t.Cleanup(srv.Close)
	d.addr = netip.MustParseAddrPort(srv.Listener.Addr().String())
	return d
}

// wireListener's connections keep what they read (wireConn).
type wireListener struct{ net.Listener }

func (l wireListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &wireConn{Conn: c}, nil
}

// wireConn keeps what it read until taken.
type wireConn struct {
	net.Conn
	mu   sync.Mutex
	read bytes.Buffer
}

func (c *wireConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.read.Write(b[:n])
	c.mu.Unlock()
	return n, err
}

func (c *wireConn) take() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.read.String()
	c.read.Reset()
	return s
}

// next is the request the destination got since the last call; false when none came.
func (d *destination) next() (received, bool) {
	select {
	case r := <-d.got:
		return r, true
	default:
		return received{}, false
	}
}

// startProxy is a proxy without listeners that dials destinations without privileges.
func startProxy(t *testing.T, opts Options) *Proxy {
	opts.KeepSource = func(netip.Addr) bool { return false }
	p := newProxy(opts)
	t.Cleanup(func() { p.Close() })
	return p
}

// testClient is the client's end of a flow through the proxy.
type testClient struct {
	net.Conn
	br *bufio.Reader
}

// openFlow hands the proxy a connection of the flow from src to dst, as its listener does once the
// datapath assigned one to it (serveConn reads the flow from the socket's addresses, which a
// loopback connection cannot give).
func openFlow(t *testing.T, p *Proxy, src, dst netip.AddrPort) *testClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if closed, over := p.track(sc); closed || over {
		t.Fatalf("the proxy refused the connection: closed %v, over the per-source cap %v", closed, over)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.serveFlow(sc, flow{src: src, dst: dst})
	}()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &testClient{Conn: c, br: bufio.NewReader(c)}
}

// do sends a raw request and reads its response and body.
func (c *testClient) do(t *testing.T, request string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatalf("send %q: %v", request, err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("response to %q: %v", request, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("response body to %q: %v", request, err)
	}
	return resp, string(body)
}

// request is an HTTP/1.1 request to server: header lines each ending in CRLF, and a body with its
// Content-Length ("": none).
func request(method, target, header, body string) string {
	if body != "" {
		header += fmt.Sprintf("Content-Length: %d\r\n", len(body))
	}
	return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: server\r\n%s\r\n%s", method, target, header, body)
}
