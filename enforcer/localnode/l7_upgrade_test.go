package localnode

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/policy"
)

// h2cSettings is an HTTP2-Settings value as curl sends it (100 streams, a 64 KiB - 1 window).
const h2cSettings = "AAMAAABkAAQAAP__"

// serveUpgrades runs a server in pod a on 8081 that switches protocols whenever it can: to
// HTTP/2 on Upgrade: h2c with HTTP2-Settings (as Tomcat, Jetty and Apache do, whether or not
// Connection names HTTP2-Settings), to an echo of the raw stream on any other Upgrade, and on
// GET /unasked without being asked. Otherwise it names the path, the protocol and the Upgrade and
// HTTP2-Settings headers it got.
func serveUpgrades(t *testing.T, n *Node) {
	t.Helper()
	var ln net.Listener
	if err := n.Pod("app/a").Do(func() (err error) { ln, err = net.Listen("tcp", ":8081"); return err }); err != nil {
		t.Fatal(err)
	}
	plain := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "served %s over %s upgrade=%q http2-settings=%q", r.URL.Path, r.Proto,
			r.Header.Get("Upgrade"), r.Header.Get("HTTP2-Settings"))
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up, settings := r.Header.Get("Upgrade"), r.Header.Get("HTTP2-Settings")
		if up == "" && r.URL.Path != "/unasked" || strings.EqualFold(up, "h2c") && settings == "" {
			plain(w, r)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		if strings.EqualFold(up, "h2c") {
			s, _ := base64.RawURLEncoding.DecodeString(settings)
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
			brw.Flush()
			(&http2.Server{}).ServeConn(bufferedConn{conn, brw.Reader},
				&http2.ServeConnOpts{Handler: plain, UpgradeRequest: r, Settings: s})
			return
		}
		if up == "" {
			up = "echo"
		}
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + up + "\r\n\r\n")
		brw.Flush()
		io.Copy(conn, brw)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// bufferedConn reads what a hijacked connection's reader holds first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// h2Get asks for path as HTTP/2 on a connection an h2c upgrade switched (stream 1 is the
// upgrade request's, so this is stream 3): the request a tunnel past the proxy would carry.
func h2Get(w io.Writer, r io.Reader, path string) (status int, body string, err error) {
	if _, err := io.WriteString(w, http2.ClientPreface); err != nil {
		return 0, "", err
	}
	fr := http2.NewFramer(w, r)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		return 0, "", err
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "a"}, {":path", path}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		return 0, "", err
	}
	var out strings.Builder
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return status, out.String(), err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 3 {
				status, _ = strconv.Atoi(f.PseudoValue("status"))
				if f.StreamEnded() {
					return status, out.String(), nil
				}
			}
		case *http2.DataFrame:
			if f.StreamID == 3 {
				out.Write(f.Data())
				if f.StreamEnded() {
					return status, out.String(), nil
				}
			}
		case *http2.GoAwayFrame:
			return status, out.String(), fmt.Errorf("GOAWAY %v", f.ErrCode)
		}
	}
}

// waitL7Flow waits up to 3 s for an L7 event that ok accepts.
func waitL7Flow(t *testing.T, n *Node, ok func(*datapath.L7Flow) bool) bool {
	t.Helper()
	return waitFlow(t, n, func(f datapath.Flow) bool { return f.L7 != nil && ok(f.L7) })
}

// waitFlow waits up to 3 s for a flow event that ok accepts. Events reach the node's log
// asynchronously (the datapath's ring buffer or the proxy's channel, then the collector), so a
// test that has just seen a drop or a reset may not find its event yet.
func waitFlow(t *testing.T, n *Node, ok func(datapath.Flow) bool) bool {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		n.mu.Lock()
		for _, f := range n.flows {
			if ok(f) {
				n.mu.Unlock()
				return true
			}
		}
		n.mu.Unlock()
		if time.Now().After(deadline) {
			return false
		}
	}
}

// TestL7ProxyProtocolSwitch: only a WebSocket upgrade switches protocols through the proxy (as
// Cilium's Envoy, whose upgrade_configs list websocket), and once switched the connection is
// spliced. An h2c upgrade is not passed on (the request goes as plain HTTP/1.1, as Envoy's codec
// does), so a backend that honours it cannot open an HTTP/2 tunnel whose requests nobody judges;
// any other upgrade is refused (403, the connection closed); a backend that switches although the
// proxy did not pass an upgrade on gets no splice: the connection is closed, and the L7 event
// says why.
func TestL7ProxyProtocolSwitch(t *testing.T) {
	n, c := testNode(t)
	serveUpgrades(t, n)
	yaml, err := os.ReadFile("testdata/l7_upgrade.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := policy.LoadBytes("l7_upgrade.yaml", yaml, policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, b.Policies); err != nil {
		t.Fatal(err)
	}
	type conn struct {
		net.Conn
		br *bufio.Reader
	}
	open := func(t *testing.T) conn {
		t.Helper()
		cc, err := dialA(t, n, "b")
		if err != nil {
			t.Fatalf("b -> a:8081: %v", err)
		}
		t.Cleanup(func() { cc.Close() })
		cc.SetDeadline(time.Now().Add(10 * time.Second))
		return conn{cc, bufio.NewReader(cc)}
	}
	send := func(t *testing.T, cc conn, raw string) (*http.Response, string) {
		t.Helper()
		if _, err := io.WriteString(cc, raw); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(cc.br, nil)
		if err != nil {
			t.Fatalf("%q: %v", strings.SplitN(raw, "\r\n", 2)[0], err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	echoes := func(cc conn) bool {
		io.WriteString(cc, "ping after the switch")
		got := make([]byte, len("ping after the switch"))
		_, err := io.ReadFull(cc.br, got)
		return err == nil && string(got) == "ping after the switch"
	}

	t.Run("websocket switches", func(t *testing.T) {
		cc := open(t)
		resp, _ := send(t, cc, "GET /public HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n")
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("GET /public with Upgrade: WebSocket: %d, want 101", resp.StatusCode)
		}
		if !echoes(cc) {
			t.Fatal("no echo after the switch: the connection is not spliced")
		}
	})
	t.Run("websocket on a denied path", func(t *testing.T) {
		if resp, _ := send(t, open(t), "GET /admin HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("GET /admin with Upgrade: websocket: %d, want 403", resp.StatusCode)
		}
	})
	// As a client sends it (Connection names HTTP2-Settings), and as an attacker does (it does
	// not, so a proxy that strips only what Connection names passes HTTP2-Settings on).
	for _, connection := range []string{"Upgrade, HTTP2-Settings", "Upgrade"} {
		t.Run("h2c is not switched/connection "+connection, func(t *testing.T) {
			cc := open(t)
			resp, body := send(t, cc, "GET /public HTTP/1.1\r\nHost: a\r\nConnection: "+connection+"\r\nUpgrade: h2c\r\nHTTP2-Settings: "+h2cSettings+"\r\n\r\n")
			if resp.StatusCode == http.StatusSwitchingProtocols {
				status, body, err := h2Get(cc, cc.br, "/admin")
				t.Fatalf("GET /public with Upgrade: h2c was switched (101); GET /admin as HTTP/2 in the tunnel then got %d %q (%v); want no switch", status, body, err)
			}
			want := `served /public over HTTP/1.1 upgrade="" http2-settings=""`
			if resp.StatusCode != http.StatusOK || body != want {
				t.Fatalf("GET /public with Upgrade: h2c: %d %q, want 200 %q (the upgrade headers removed)", resp.StatusCode, body, want)
			}
			// The connection stays HTTP/1.1, each request judged.
			if resp, body := send(t, cc, "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("GET /admin after the h2c upgrade request: %d %q, want 403", resp.StatusCode, body)
			}
		})
	}
	// Not switched, and the connection ends: the L7 event says why.
	for _, tc := range []struct {
		name, path, headers string
		status              int
		why                 string // in the event's reason
	}{
		{name: "another token is refused", path: "/public", headers: "Connection: Upgrade\r\nUpgrade: echo\r\n",
			status: http.StatusForbidden, why: `"echo"`},
		{name: "a switch nobody asked for", path: "/unasked", status: http.StatusBadGateway, why: "101"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.ResetFlows()
			cc := open(t)
			resp, _ := send(t, cc, "GET "+tc.path+" HTTP/1.1\r\nHost: a\r\n"+tc.headers+"\r\n")
			if resp.StatusCode == http.StatusSwitchingProtocols {
				t.Fatalf("GET %s %q: switched (101, spliced: %v); want %d", tc.path, tc.headers, echoes(cc), tc.status)
			}
			if resp.StatusCode != tc.status || !resp.Close {
				t.Fatalf("GET %s %q: %d (close %v), want %d and the connection closed", tc.path, tc.headers, resp.StatusCode, resp.Close, tc.status)
			}
			if _, err := cc.br.ReadByte(); err == nil {
				t.Fatalf("bytes after the %d: the connection goes on", tc.status)
			}
			if !waitL7Flow(t, n, func(f *datapath.L7Flow) bool {
				return f.Path == tc.path && f.Denied && f.Status == tc.status && strings.Contains(f.Why, tc.why)
			}) {
				t.Errorf("no L7 event says why GET %s was not switched (%q in its reason)", tc.path, tc.why)
			}
		})
	}
}
