package localnode

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
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

const l7Policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: get-ok, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "8081", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /ok}
        - {method: GET, path: /team, headerMatches: [{name: X-Team, value: blue, mismatch: REPLACE}]}
`

// serveHTTP runs an HTTP server in pod a on 8081 that names the path it got.
func serveHTTP(t testing.TB, n *Node) {
	t.Helper()
	var ln net.Listener
	if err := n.Pod("app/a").Do(func() (err error) { ln, err = net.Listen("tcp", ":8081"); return err }); err != nil {
		t.Fatal(err)
	}
	// HTTP/1.1 and h2c: the proxy speaks to the destination in the client's protocol.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "served %s", r.URL.Path)
		if v := r.Header.Values("X-Team"); len(v) > 0 {
			fmt.Fprintf(w, " team=%s", strings.Join(v, ","))
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// dialA opens a TCP connection from pod from to a:8081.
func dialA(t *testing.T, n *Node, from string) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	addr := net.JoinHostPort(n.Pod("app/a").IPv4.String(), "8081")
	if derr := n.Pod("app/" + from).Do(func() error {
		c, err = net.DialTimeout("tcp", addr, 500*time.Millisecond)
		return nil
	}); derr != nil {
		t.Fatal(derr)
	}
	return c, err
}

// TestL7ProxyJudgesEachRequest: on one keep-alive connection from b, GET /ok is served, GET /no
// gets Cilium's 403 byte for byte, and GET /ok after it is served again; c is denied at L3; the
// flow stream names the denied request; with the proxy stopped the flow is dropped, saying so.
func TestL7ProxyJudgesEachRequest(t *testing.T) {
	n, c := testNode(t)
	serveHTTP(t, n)
	b, err := policy.LoadBytes("l7.yaml", []byte(l7Policy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	conn, err := dialA(t, n, "b")
	if err != nil {
		t.Fatalf("b -> a:8081: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	get := func(path string) *http.Response {
		t.Helper()
		if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", path); err != nil {
			t.Fatalf("write GET %s: %v", path, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp
	}
	for _, path := range []string{"/ok", "/ok"} {
		resp := get(path)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "served /ok" {
			t.Fatalf("GET %s: %d %q, want 200 served /ok", path, resp.StatusCode, body)
		}
	}
	// A headerMatch with REPLACE: the header is set to the rule's value, and the request goes on.
	for _, team := range []string{"red", ""} {
		hdr := ""
		if team != "" {
			hdr = "X-Team: " + team + "\r\n"
		}
		fmt.Fprintf(conn, "GET /team HTTP/1.1\r\nHost: a\r\n%s\r\n", hdr)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != "served /team team=blue" {
			t.Fatalf("GET /team with X-Team %q: %d %q, want 200 \"served /team team=blue\"", team, resp.StatusCode, body)
		}
	}
	// The 403, read raw.
	fmt.Fprintf(conn, "GET /no HTTP/1.1\r\nHost: a\r\n\r\n")
	var raw strings.Builder
	for !strings.HasSuffix(raw.String(), "\r\n\r\n") {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read the 403: %v (so far %q)", err, raw.String())
		}
		raw.WriteString(line)
	}
	body := make([]byte, 15)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	head := raw.String()
	wantStart := "HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\ncontent-type: text/plain\r\ndate: "
	if !strings.HasPrefix(head, wantStart) || !strings.HasSuffix(head, " GMT\r\nserver: envoy\r\n\r\n") || string(body) != "Access denied\r\n" {
		t.Fatalf("denied request got\n%q%q\nwant %q<date>\\r\\nserver: envoy\\r\\n\\r\\nAccess denied\\r\\n", head, body, wantStart)
	}
	// The connection goes on after a 403, each request judged on its own.
	if resp := get("/ok"); resp.StatusCode != 200 {
		t.Fatalf("GET /ok after a 403: %d", resp.StatusCode)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	// POST /ok: the method is part of the rule.
	fmt.Fprintf(conn, "POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 403 {
		t.Fatalf("POST /ok: %v %v, want 403", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp := get("/ok"); resp.StatusCode != 200 {
		t.Fatalf("GET /ok after a denied POST with a body: %d", resp.StatusCode)
	}

	if cc, err := dialA(t, n, "c"); err == nil {
		cc.Close()
		t.Fatal("c reaches a:8081: the L3 part of the rule (from b) is not enforced")
	}

	deadline := time.Now().Add(3 * time.Second)
	for {
		n.mu.Lock()
		var denied, allowed bool
		for _, f := range n.flows {
			if f.L7 != nil && f.L7.Path == "/no" && f.L7.Denied && f.L7.Status == 403 && f.Rule != 0 {
				denied = true
			}
			if f.L7 != nil && f.L7.Path == "/ok" && !f.L7.Denied && f.L7.Status == 200 && f.L7.HTTPRule == 0 {
				allowed = true
			}
		}
		n.mu.Unlock()
		if denied && allowed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no L7 flow events for the denied GET /no and the allowed GET /ok (denied %v, allowed %v)", denied, allowed)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Fail closed: without the proxy a new flow is dropped, and the event says why.
	conn.Close()
	if err := n.StopProxy(); err != nil {
		t.Fatal(err)
	}
	n.ResetFlows()
	if cc, err := dialA(t, n, "b"); err == nil {
		cc.Close()
		t.Fatal("b reaches a:8081 with the proxy stopped: an L7 rule is bypassed")
	}
	if !waitFlow(t, n, func(f datapath.Flow) bool { return f.Reason == datapath.ReasonDropProxyDown }) {
		t.Fatalf("no flow event says the proxy's listener is down")
	}
}

// TestL7ProxyHostileRequests: what a pod may send the proxy on an L7 port. Oversized headers get
// 431 and a CONNECT 400 (no tunnel past the rules; protocol switches: l7_upgrade_test.go), both
// closing the connection; pipelined requests are each judged and answered in order; a path that
// dot-segments its way out of an allowed prefix, or hides a slash as %2F, does not reach the
// server as allowed.
func TestL7ProxyHostileRequests(t *testing.T) {
	n, c := testNode(t)
	serveHTTP(t, n)
	b, err := policy.LoadBytes("l7.yaml", []byte(l7Policy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	exchange := func(t *testing.T, raw string, responses int) []*http.Response {
		t.Helper()
		conn, err := dialA(t, n, "b")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		go io.WriteString(conn, raw) // the proxy may answer before it read everything
		br := bufio.NewReader(conn)
		var out []*http.Response
		for range responses {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", len(out)+1, err)
			}
			io.Copy(io.Discard, resp.Body)
			out = append(out, resp)
		}
		return out
	}
	t.Run("oversized headers", func(t *testing.T) {
		resp := exchange(t, "GET /ok HTTP/1.1\r\nHost: a\r\nX-Big: "+strings.Repeat("x", 2<<20)+"\r\n\r\n", 1)
		if resp[0].StatusCode != http.StatusRequestHeaderFieldsTooLarge || !resp[0].Close {
			t.Fatalf("got %d (close %v), want 431 and the connection closed", resp[0].StatusCode, resp[0].Close)
		}
	})
	t.Run("denied with a large body", func(t *testing.T) {
		resp := exchange(t, fmt.Sprintf("POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s", 200<<10, strings.Repeat("x", 200<<10)), 1)
		if resp[0].StatusCode != 403 || !resp[0].Close {
			t.Fatalf("got %d (close %v), want 403 and the connection closed (the body is not read to its end)", resp[0].StatusCode, resp[0].Close)
		}
	})
	t.Run("CONNECT", func(t *testing.T) {
		resp := exchange(t, "CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n", 1)
		if resp[0].StatusCode != http.StatusBadRequest {
			t.Fatalf("got %d, want 400", resp[0].StatusCode)
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		resps := exchange(t, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /no HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n", 3)
		for i, want := range []int{200, 403, 200} {
			if resps[i].StatusCode != want {
				t.Errorf("pipelined response %d: %d, want %d", i+1, resps[i].StatusCode, want)
			}
		}
	})
	t.Run("dot segments and escaped slashes", func(t *testing.T) {
		for target, want := range map[string]int{"/ok/../no": 403, "/no/../ok": 200, "/%6Fk": 200, "/ok%2F..%2Fno": 307, "//ok": 200} {
			resp := exchange(t, "GET "+target+" HTTP/1.1\r\nHost: a\r\n\r\n", 1)
			if resp[0].StatusCode != want {
				t.Errorf("GET %s: %d, want %d", target, resp[0].StatusCode, want)
			}
		}
	})
}

// TestL7ProxyH2C: HTTP/2 with prior knowledge through the proxy: each stream judged (GET /ok
// served, GET /no answered 403 text/plain "Access denied\r\n"), and a stream carrying more than the
// HTTP/1 header bound passes.
func TestL7ProxyH2C(t *testing.T) {
	n, c := testNode(t)
	serveHTTP(t, n)
	b, err := policy.LoadBytes("l7.yaml", []byte(l7Policy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := n.Pod("app/b").Do(func() (err error) {
			conn, err = (&net.Dialer{Timeout: time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := "http://" + net.JoinHostPort(n.Pod("app/a").IPv4.String(), "8081")
	do := func(path string, body io.Reader) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, body)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s over h2c: %v", path, err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.ProtoMajor != 2 {
			t.Fatalf("GET %s: %s, want HTTP/2", path, resp.Proto)
		}
		return resp, string(out)
	}
	if resp, body := do("/ok", nil); resp.StatusCode != 200 || body != "served /ok" {
		t.Fatalf("GET /ok: %d %q", resp.StatusCode, body)
	}
	if resp, body := do("/no", nil); resp.StatusCode != 403 || body != "Access denied\r\n" || resp.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("GET /no: %d %q %q, want 403 text/plain \"Access denied\\r\\n\"", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if resp, _ := do("/ok", bytes.NewReader(make([]byte, 3<<20))); resp.StatusCode != 200 {
		t.Fatalf("GET /ok with a 3 MB body: %d", resp.StatusCode)
	}
	if resp, body := do("/ok", nil); resp.StatusCode != 200 || body != "served /ok" {
		t.Fatalf("GET /ok after the large stream: %d %q", resp.StatusCode, body)
	}
}

// TestL7ProxyPortReuse: a pod opening a connection per request through the proxy (each saying
// connection: close, allowed and denied, IPv4 and IPv6), with so few ports that it reuses them
// at once, gets every answer, as it does from a server directly. The proxy closes first, as a
// server does, so the TIME_WAITs are the node's and not the pod's (whose connect would run out of
// ports after 16): the pod's next SYN from a port meets the node's TIME_WAIT socket of that
// tuple, and goes to the listener through the kernel's TIME_WAIT processing (proxy_lookup). The
// destination closes the proxy's connection first, as it would the pod's own: no TIME_WAIT of the
// node is bound to the pod's address (with port 0 such sockets took ports from every destination).
func TestL7ProxyPortReuse(t *testing.T) {
	n, c := testNode(t)
	ss := testenv.RequireCommand(t, "ss", "iproute2")
	serveHTTP(t, n)
	b, err := policy.LoadBytes("l7.yaml", []byte(l7Policy), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	if err := n.Pod("app/b").Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40015"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			derr := n.Pod("app/b").Do(func() error { c, err = (&net.Dialer{}).DialContext(ctx, network, addr); return nil })
			return c, errors.Join(derr, err)
		}}}
	for _, family := range []struct{ dst, src netip.Addr }{
		{n.Pod("app/a").IPv4, n.Pod("app/b").IPv4},
		{n.Pod("app/a").IPv6, n.Pod("app/b").IPv6},
	} {
		base := "http://" + net.JoinHostPort(family.dst.String(), "8081")
		before := timeWait(t, []string{ss}, family.src, 2)
		for _, req := range []struct {
			path string
			want int
		}{{"/ok", http.StatusOK}, {"/denied", http.StatusForbidden}} {
			for i := range 100 {
				resp, err := client.Get(base + req.path)
				if err != nil {
					// The pod's sockets: which states hold its ports.
					out, _ := exec.Command("ip", "netns", "exec", n.Pod("app/b").Netns, ss, "-tan").CombinedOutput()
					t.Fatalf("GET %s%s, connection %d: %v; the pod's sockets:\n%s", base, req.path, i+1, err, out)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != req.want {
					t.Fatalf("GET %s%s, connection %d: %d %q, want %d", base, req.path, i+1, resp.StatusCode, body, req.want)
				}
			}
		}
		// The pod's sockets: none in TIME_WAIT with the destination (the proxy's FIN came with
		// the last bytes of each response, so the pod never closed first).
		if held := timeWait(t, []string{"ip", "netns", "exec", n.Pod("app/b").Netns, ss}, family.dst, 3); len(held) > 0 {
			t.Fatalf("the pod holds %d TIME_WAIT sockets with %s: it closed first", len(held), family.dst)
		}
		// The node's sockets (this test runs in the node's namespace): none new in TIME_WAIT
		// bound to the pod's address (an earlier test's pod may have had it).
		var held []string
		for s := range timeWait(t, []string{ss}, family.src, 2) {
			if !before[s] {
				held = append(held, s)
			}
		}
		if len(held) > 0 {
			t.Fatalf("after 200 connections through the proxy the node holds %d new TIME_WAIT sockets bound to the pod's address %s; want none:\n%s",
				len(held), family.src, strings.Join(held, "\n"))
		}
	}
}

// timeWait is the TIME_WAIT sockets ss (the command, run in a namespace or not) lists with
// address a in column col (2: local, 3: peer), as ss names them.
func timeWait(t *testing.T, ss []string, a netip.Addr, col int) map[string]bool {
	t.Helper()
	out, err := exec.Command(ss[0], append(ss[1:], "-Htan", "state", "time-wait")...).CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	held := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		if ap, err := netip.ParseAddrPort(f[col]); err == nil && ap.Addr().Unmap() == a {
			held[f[2]+" "+f[3]] = true
		}
	}
	return held
}

// TestL7ProxyStalledBody: an allowed request whose body stops coming is ended once a read of it
// waited the idle timeout (408), while a body that keeps coming slowly, for longer than that in
// all, goes through: a client cannot hold a connection and its upstream by stalling.
func TestL7ProxyStalledBody(t *testing.T) {
	n, c := testNodeWith(t, Options{HTTP: proxy.Options{Limits: proxy.Limits{IdleTimeout: time.Second}}})
	serveHTTP(t, n)
	b, err := policy.LoadBytes("l7.yaml", []byte(strings.Replace(l7Policy, "{method: GET, path: /ok}", "{path: /ok}", 1)), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	post := func(t *testing.T, chunks int, pause time.Duration) (*http.Response, time.Duration) {
		conn, err := dialA(t, n, "b")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		start := time.Now()
		fmt.Fprintf(conn, "POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
		for range chunks {
			time.Sleep(pause)
			conn.Write([]byte("x"))
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("POST /ok: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		return resp, time.Since(start)
	}
	t.Run("stalled", func(t *testing.T) {
		// 3 of 10 bytes, then nothing.
		// net/http's Close of the body reads once more: it ends after about 2 s.
		resp, took := post(t, 3, 10*time.Millisecond)
		if resp.StatusCode != http.StatusRequestTimeout || took > 10*time.Second {
			t.Fatalf("POST /ok with a stalled body: %d after %v, want 408 after the 1 s idle timeout", resp.StatusCode, took)
		}
	})
	t.Run("slow", func(t *testing.T) {
		// 10 bytes, one every 300 ms: 3 s in all, no read waits 1 s.
		resp, took := post(t, 10, 300*time.Millisecond)
		if resp.StatusCode != http.StatusOK || took < 3*time.Second {
			t.Fatalf("POST /ok with a slow body: %d after %v, want 200 after about 3 s", resp.StatusCode, took)
		}
	})
}

// TestL7RuleChangesOnOpenConnections: when an L7 rule goes away, a connection the proxy carries
// goes on through it (judged by the policy of now: every request allowed); when one comes, a
// connection opened before it past the proxy is cut, with the reason said, and a new one is
// judged by the rule.
func TestL7RuleChangesOnOpenConnections(t *testing.T) {
	n, c := testNode(t)
	serveHTTP(t, n)
	enforce := func(yaml string) {
		t.Helper()
		b, err := policy.LoadBytes("l7.yaml", []byte(yaml), policy.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Enforce(c, b.Policies); err != nil {
			t.Fatal(err)
		}
	}
	plain := strings.Split(l7Policy, "      rules:")[0]
	type conn struct {
		net.Conn
		br *bufio.Reader
	}
	open := func() conn {
		t.Helper()
		cc, err := dialA(t, n, "b")
		if err != nil {
			t.Fatalf("b -> a:8081: %v", err)
		}
		t.Cleanup(func() { cc.Close() })
		return conn{cc, bufio.NewReader(cc)}
	}
	get := func(cc conn, path string) (int, string, error) {
		cc.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(cc, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", path); err != nil {
			return 0, "", err
		}
		resp, err := http.ReadResponse(cc.br, nil)
		if err != nil {
			return 0, "", err
		}
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}
	want := func(cc conn, path string, code int) {
		t.Helper()
		got, body, err := get(cc, path)
		if err != nil || got != code {
			t.Fatalf("GET %s: %d %q %v, want %d", path, got, body, err, code)
		}
	}

	enforce(l7Policy)
	proxied := open()
	want(proxied, "/ok", 200)
	want(proxied, "/other", 403)
	enforce(plain)
	want(proxied, "/other", 200) // the proxy still carries it, and no rule limits it now
	direct := open()
	want(direct, "/other", 200)

	n.ResetFlows()
	enforce(l7Policy)
	if code, body, err := get(direct, "/other"); err == nil {
		t.Fatalf("GET /other on a connection opened before the L7 rule, past the proxy: %d %q; want the connection cut", code, body)
	}
	if !waitFlow(t, n, func(f datapath.Flow) bool { return f.Reason == datapath.ReasonDropProxyMidflow }) {
		t.Errorf("no flow event says %q", datapath.ReasonDropProxyMidflow)
	}
	fresh := open()
	want(fresh, "/ok", 200)
	want(fresh, "/other", 403)
	want(proxied, "/other", 403) // the connection the proxy carried all along: the rule again
}

// TestL7ProxyConnectionsPerPod: a pod may have only so many connections open through the node's
// proxy, which every pod of the node shares; one more is reset at once and an L7 event says why,
// and once one closes the pod connects again. Another pod is not held back.
func TestL7ProxyConnectionsPerPod(t *testing.T) {
	n, c := testNodeWith(t, Options{HTTP: proxy.Options{Limits: proxy.Limits{MaxConnsPerSource: 3}}})
	serveHTTP(t, n)
	yaml := strings.Replace(l7Policy, "  - fromEndpoints: [{matchLabels: {app: b}}]", "  - fromEndpoints: [{matchLabels: {app: b}}, {matchLabels: {app: c}}]", 1)
	b, err := policy.LoadBytes("l7.yaml", []byte(yaml), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	get := func(from string) (net.Conn, error) {
		cc, err := dialA(t, n, from)
		if err != nil {
			return nil, err
		}
		cc.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(cc, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(cc), nil)
		if err != nil {
			cc.Close()
			return nil, err
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			cc.Close()
			return nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		return cc, nil
	}
	var open []net.Conn
	defer func() {
		for _, cc := range open {
			cc.Close()
		}
	}()
	for i := range 3 {
		cc, err := get("b")
		if err != nil {
			t.Fatalf("connection %d of b: %v", i+1, err)
		}
		open = append(open, cc)
	}
	n.ResetFlows()
	if cc, err := get("b"); err == nil {
		cc.Close()
		t.Fatal("a fourth connection of b through the proxy was served; want it reset")
	}
	if cc, err := get("c"); err != nil {
		t.Fatalf("c, with b at its limit: %v", err)
	} else {
		cc.Close()
	}
	if !waitL7Flow(t, n, func(f *datapath.L7Flow) bool { return strings.Contains(f.Why, "the most it may") }) {
		t.Error("no L7 event says why the fourth connection was reset")
	}
	open[0].Close()
	open = open[1:]
	deadline := time.Now().Add(5 * time.Second)
	for {
		cc, err := get("b")
		if err == nil {
			open = append(open, cc)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b after closing one of its connections: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestL7ProxyNothingAfterTheLastResponse: when the destination ends a connection (its response
// says connection: close), a request the client pipelined after it is not forwarded: the client
// was told the connection ends, and the destination never sees the request (a POST is not done
// behind its back).
func TestL7ProxyNothingAfterTheLastResponse(t *testing.T) {
	n, c := testNodeWith(t, Options{HTTP: proxy.Options{Limits: proxy.Limits{MaxConnsPerSource: 1}}})
	var ln net.Listener
	if err := n.Pod("app/a").Do(func() (err error) { ln, err = net.Listen("tcp", ":8081"); return err }); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		mu.Unlock()
		w.Header().Set("Connection", "close") // this server ends every connection
		io.WriteString(w, "done")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	yaml := strings.Replace(l7Policy, "- {method: GET, path: /ok}", "- {path: /.*}", 1)
	b, err := policy.LoadBytes("l7.yaml", []byte(yaml), policy.LoadOptions{})
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
	// Both requests in one write: the second is in the proxy's buffer when the first's response
	// comes back.
	fmt.Fprintf(conn, "GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET /first: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("GET /first: %d, close %v; want 200 and connection: close", resp.StatusCode, resp.Close)
	}
	if resp, err := http.ReadResponse(br, nil); err == nil {
		t.Fatalf("a response to the request after the last one: %d", resp.StatusCode)
	}
	conn.Close()
	// b may have one connection through the proxy, so a new one is served only once the proxy is
	// done with the first. Had it forwarded the POST, it would have read the destination's
	// response first, so the destination has seen every request it will see from the first.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := getOnce(t, n, "b", "/probe"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("b's next connection after the first ended: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != "GET /first" || seen[1] != "GET /probe" {
		t.Fatalf("the destination saw %q; want only GET /first, then the next connection's GET /probe", seen)
	}
}

// getOnce sends one GET for path from a pod to a:8081 on a new connection and wants a 200.
func getOnce(t *testing.T, n *Node, from, path string) error {
	t.Helper()
	c, err := dialA(t, n, from)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return nil
}
