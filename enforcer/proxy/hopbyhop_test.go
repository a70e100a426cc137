package proxy

import (
	"net/http"
	"slices"
	"testing"
)

// TestHopByHopHeaders: the headers that concern one connection (RFC 9110 section 7.6.1: those
// Connection names, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade, and the proxy's own
// Proxy-Authorization) are not forwarded, to the destination or back from it; end-to-end headers
// are. A WebSocket upgrade keeps its Connection: Upgrade and Upgrade, an h2c one goes as plain
// HTTP/1.1 (upgrade.go), and a chunked body goes whole in the proxy's own framing. What the
// destination got is read as it came on the wire: Transfer-Encoding, Trailer and Content-Length
// are net/http's to write, not hopHeaders', and the test guards the path they take as a whole.
func TestHopByHopHeaders(t *testing.T) {
	d := newDestination(t, http.Header{"Connection": {"X-Resp-Hop"}, "X-Resp-Hop": {"1"}, "Keep-Alive": {"timeout=5"},
		"Proxy-Connection": {"keep-alive"}, "Upgrade": {"h2c"}, "X-Served-By": {"server"}})
	p := startProxy(t, Options{Decide: decideGetPublic(t, d.addr)})
	for _, tc := range []struct {
		name, request string
		forwarded     http.Header // each with these values at the destination
		dropped       []string    // none of these
	}{
		{name: "hop-by-hop",
			request: request("GET", "/public/a", "Connection: X-Hop\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"+
				"TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: websocket\r\nProxy-Authorization: Basic eDp5\r\nX-Hop: 1\r\n"+
				"X-Team: blue\r\nAccept: */*\r\n", ""),
			forwarded: http.Header{"X-Team": {"blue"}, "Accept": {"*/*"}},
			// No User-Agent of the client's: none of Go's either.
			dropped: []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade", "Proxy-Authorization", "X-Hop",
				"User-Agent"}},
		{name: "websocket upgrade",
			request: request("GET", "/public/ws", "Connection: keep-alive, Upgrade, X-Hop\r\nUpgrade: websocket\r\nKeep-Alive: timeout=5\r\n"+
				"X-Hop: 1\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", ""),
			forwarded: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="},
				"Sec-Websocket-Version": {"13"}},
			dropped: []string{"Keep-Alive", "X-Hop"}},
		{name: "h2c upgrade",
			request: request("GET", "/public/h2c", "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n", ""),
			dropped: []string{"Connection", "Upgrade", "Http2-Settings"}},
		// Chunked framing overrides a Content-Length, which must not go on with it (RFC 9112
		// section 6.1): a destination that took the length would read the rest as a request.
		{name: "chunked body and a length",
			request: "POST /public/upload HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nX-Team: blue\r\nUser-Agent: curl/8.0\r\n\r\n" +
				"2\r\nhe\r\n3;ext=1\r\nllo\r\n0\r\n\r\n",
			forwarded: http.Header{"X-Team": {"blue"}, "Transfer-Encoding": {"chunked"}, "User-Agent": {"curl/8.0"}},
			dropped:   []string{"Content-Length"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := openFlow(t, p, clientPod, d.addr)
			resp, _ := c.do(t, tc.request)
			got, ok := d.next()
			if resp.StatusCode != 200 || !ok {
				t.Fatalf("got %d, the destination a request: %v; want 200, and it", resp.StatusCode, ok)
			}
			for name, want := range tc.forwarded {
				if v := got.Header.Values(name); !slices.Equal(v, want) {
					t.Errorf("%s to the destination: %q, want %q", name, v, want)
				}
			}
			for _, name := range tc.dropped {
				if v, ok := got.Header[name]; ok {
					t.Errorf("%s: %q forwarded to the destination", name, v)
				}
			}
			if got.Method == "POST" && got.Body != "hello" {
				t.Errorf("the destination got the body %q, want \"hello\"", got.Body)
			}
			for _, name := range []string{"Connection", "X-Resp-Hop", "Keep-Alive", "Proxy-Connection", "Upgrade"} {
				if v, ok := resp.Header[name]; ok {
					t.Errorf("the destination's %s: %q forwarded to the client", name, v)
				}
			}
			if v := resp.Header.Get("X-Served-By"); v != "server" {
				t.Errorf("the destination's X-Served-By: %q, want server", v)
			}
		})
	}
}
