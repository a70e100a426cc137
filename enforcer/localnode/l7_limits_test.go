package localnode

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/policy"
)

// limitsPolicy lets b and c reach a:8081 with any path: every request is judged by the proxy.
const limitsPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any-path, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [b, c]}]}]
    toPorts:
    - ports: [{port: "8081", protocol: TCP}]
      rules:
        http: [{path: "/.*"}]
`

// TestL7ProxyLimits: what one pod can make the node's proxy hold is bounded in bytes and time,
// not only in connections. Each subtest fails without its bound: the proxy read request headers
// up to 1 MiB, waited for the rest of a header for the whole idle timeout, held unfinished headers
// without a budget, and waited for a destination's response header without end.
func TestL7ProxyLimits(t *testing.T) {
	// The header timeout (3 s) is long enough that all the budget subtest's unfinished headers
	// are held together, however slowly a busy machine opens them.
	n, c := testNodeWith(t, Options{HTTP: proxy.Options{Limits: proxy.Limits{IdleTimeout: time.Minute, HeaderTimeout: 3 * time.Second,
		ResponseHeaderTimeout: 500 * time.Millisecond, BufferedPerSource: 512 << 10}}})
	var ln net.Listener
	if err := n.Pod("app/a").Do(func() (err error) { ln, err = net.Listen("tcp", ":8081"); return err }); err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	stop := make(chan struct{})
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			select { // a destination that never answers
			case <-stop:
			case <-r.Context().Done():
			}
			return
		}
		fmt.Fprintf(w, "served %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { close(stop); srv.Close() })
	b, err := policy.LoadBytes("limits.yaml", []byte(limitsPolicy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T, from string) net.Conn {
		t.Helper()
		conn, err := dialA(t, n, from)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		return conn
	}
	answer := func(t *testing.T, conn net.Conn) (int, string) {
		t.Helper()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	t.Run("served", func(t *testing.T) {
		conn := open(t, "b")
		fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: %s\r\n\r\n", strings.Repeat("p", 50<<10))
		if code, body := answer(t, conn); code != http.StatusOK || body != "served /x" {
			t.Fatalf("a 50 KiB header: %d %q, want 200", code, body)
		}
	})
	t.Run("header over 60 KiB", func(t *testing.T) {
		conn := open(t, "b")
		fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: %s\r\n\r\n", strings.Repeat("p", 70<<10))
		if code, _ := answer(t, conn); code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("a 70 KiB header: %d, want 431", code)
		}
	})
	t.Run("header stalled", func(t *testing.T) {
		conn := open(t, "b")
		start := time.Now()
		fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: a\r\n")
		code, _ := answer(t, conn)
		if code != http.StatusRequestTimeout {
			t.Fatalf("half a header, then nothing: %d after %v, want 408 after the 3 s header timeout (the idle timeout is 1 min)", code, time.Since(start))
		}
	})
	t.Run("buffered per source", func(t *testing.T) {
		// Twelve unfinished 50 KiB headers from b: 600 KiB, over b's 512 KiB. Some are refused
		// with 503 (the others end with the header timeout's 408); c, another source, is served
		// meanwhile.
		pad := strings.Repeat("p", 50<<10)
		var conns []net.Conn
		for range 12 {
			conn := open(t, "b")
			fmt.Fprintf(conn, "GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: %s", pad)
			conns = append(conns, conn)
			time.Sleep(20 * time.Millisecond) // read by the proxy in order
		}
		other := open(t, "c")
		fmt.Fprintf(other, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
		if code, body := answer(t, other); code != http.StatusOK {
			t.Fatalf("c while b is over its budget: %d %q, want 200", code, body)
		}
		refused := 0
		for _, conn := range conns {
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			switch {
			case err != nil:
				t.Errorf("an unfinished header: %v", err)
			case resp.StatusCode == http.StatusServiceUnavailable:
				refused++
			case resp.StatusCode != http.StatusRequestTimeout: // the others: the header timeout
				t.Errorf("an unfinished header got %d", resp.StatusCode)
			}
		}
		if refused == 0 {
			t.Fatalf("b held 600 KiB of unfinished headers with a 512 KiB budget: none refused")
		}
	})
	t.Run("response header timeout", func(t *testing.T) {
		conn := open(t, "b")
		fmt.Fprintf(conn, "GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
		if code, body := answer(t, conn); code != http.StatusGatewayTimeout || body != "upstream request timeout\r\n" {
			t.Fatalf("a destination that never answers: %d %q, want Envoy's 504", code, body)
		}
	})
	t.Run("response header timeout, HTTP/2", func(t *testing.T) {
		conn := open(t, "b")
		tr := &http2.Transport{AllowHTTP: true}
		cc, err := tr.NewClientConn(conn)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", "http://a/stall", nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusGatewayTimeout || string(body) != "upstream request timeout\r\n" {
			t.Fatalf("HTTP/2, a destination that never answers: %d %q, want Envoy's 504", resp.StatusCode, body)
		}
	})
	t.Run("HTTP/2 settings", func(t *testing.T) {
		// The proxy's SETTINGS bound the streams, frames, header list and window a client gets.
		conn := open(t, "b")
		io.WriteString(conn, http2.ClientPreface)
		fr := http2.NewFramer(conn, conn)
		if err := fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok {
			t.Fatalf("first frame %T, want SETTINGS", f)
		}
		want := map[http2.SettingID]uint32{http2.SettingMaxConcurrentStreams: 100, http2.SettingMaxFrameSize: 16 << 10,
			http2.SettingInitialWindowSize: 128 << 10}
		for id, v := range want {
			if got, ok := sf.Value(id); !ok || got != v {
				t.Errorf("SETTINGS %v = %d (sent %v), want %d", id, got, ok, v)
			}
		}
		if got, ok := sf.Value(http2.SettingMaxHeaderListSize); !ok || got > 64<<10 {
			t.Errorf("SETTINGS MAX_HEADER_LIST_SIZE = %d (sent %v), want about 60 KiB", got, ok)
		}
	})
}

// TestEgressL7ToAnIngressDeny: b's egress HTTP rule allows GET /ok to a, whose ingress admits
// only c. As Cilium's egress proxy, the proxy judges by b's rules and forwards; a's ingress drops
// the proxy's connection (from b's address), and b gets Envoy's 503 once the connect times out:
// never a 403 that a's policy did not give. A GET the egress rule does not allow gets its 403.
func TestEgressL7ToAnIngressDeny(t *testing.T) {
	n, c := testNodeWith(t, Options{HTTP: proxy.Options{Limits: proxy.Limits{DialTimeout: 700 * time.Millisecond}}})
	serveHTTP(t, n)
	b, err := policy.LoadBytes("p.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-get-ok, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: b}}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: "8081", protocol: TCP}]
      rules: {http: [{method: GET, path: /ok}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-from-c, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
`), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		conn, err := dialA(t, n, "b")
		if err != nil {
			t.Fatalf("b -> a: the proxy takes the connection: %v", err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/ok"); code != http.StatusServiceUnavailable || !strings.Contains(body, "reset reason: connection timeout") {
		t.Errorf("GET /ok (b's rule allows it, a's ingress does not admit b): %d %q, want Envoy's 503 connection timeout", code, body)
	}
	if code, _ := get("/no"); code != http.StatusForbidden {
		t.Errorf("GET /no (b's rule does not allow it): %d, want 403", code)
	}
}

// TestL7SourceAddressAndBypass: behind the proxy, a pod destination sees the client pod's own
// address (the proxy connects from it), so its logs and its own rules see the client; a packet
// from that address that did not come through the proxy (a host process borrowing it, without
// the proxy's mark) is dropped at the destination, and the flow event says so.
func TestL7SourceAddressAndBypass(t *testing.T) {
	n, c := testNode(t)
	var ln net.Listener
	if err := n.Pod("app/a").Do(func() (err error) { ln, err = net.Listen("tcp", ":8081"); return err }); err != nil {
		t.Fatal(err)
	}
	seen := make(chan string, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		seen <- host
		io.WriteString(w, "served")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	b, err := policy.LoadBytes("l7.yaml", []byte(l7Policy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	conn, err := dialA(t, n, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("b GET /ok through the proxy: %v %v", resp, err)
	}
	if got, want := <-seen, n.Pod("app/b").IPv4.String(); got != want {
		t.Errorf("a saw the request from %s, want b's own address %s", got, want)
	}

	// The same source address from the host, without the proxy's mark.
	n.ResetFlows()
	d := net.Dialer{Timeout: 700 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: n.Pod("app/b").IPv4.AsSlice()},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1) })
			return serr
		}}
	if bc, err := d.Dial("tcp4", net.JoinHostPort(n.Pod("app/a").IPv4.String(), "8081")); err == nil {
		bc.Close()
		t.Fatal("a connection from b's address that skipped the proxy reached a")
	}
	bypass := waitFlow(t, n, func(f datapath.Flow) bool {
		return f.Reason == datapath.ReasonDropProxyBypass && f.Src == n.Pod("app/b").IPv4
	})
	if !bypass {
		t.Error("no flow event says the packet did not come through the L7 proxy")
	}
}
