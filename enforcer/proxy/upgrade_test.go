package proxy

import (
	"net/http"
	"reflect"
	"testing"
)

// TestUpstreamHeader: what a request's protocol switch becomes on its way to the destination.
// Only websocket is passed on; h2c goes as plain HTTP/1.1 with HTTP2-Settings and the Connection
// tokens removed, whether or not Connection named HTTP2-Settings (Envoy's IgnoreUpgradeH2c);
// any other token is refused.
func TestUpstreamHeader(t *testing.T) {
	for _, tc := range []struct {
		name             string
		in, out          http.Header
		upgrade, refused string
	}{
		{name: "websocket, any case",
			in:      http.Header{"Connection": {"keep-alive, Upgrade"}, "Upgrade": {"WebSocket"}, "Sec-Websocket-Key": {"k"}},
			out:     http.Header{"Connection": {"Upgrade"}, "Upgrade": {"WebSocket"}, "Sec-Websocket-Key": {"k"}},
			upgrade: "WebSocket"},
		{name: "h2c as clients send it",
			in:  http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {"AAMAAABkAAQAAP__"}, "Accept": {"*/*"}},
			out: http.Header{"Accept": {"*/*"}}},
		{name: "h2c with HTTP2-Settings not named by Connection",
			in:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {"H2C"}, "Http2-Settings": {"AAMAAABkAAQAAP__"}},
			out: http.Header{}},
		{name: "h2c with close among the tokens (req.Close carries it)",
			in:  http.Header{"Connection": {"Upgrade, close, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {"x"}},
			out: http.Header{}},
		{name: "another token",
			in:      http.Header{"Connection": {"Upgrade"}, "Upgrade": {"echo"}},
			out:     http.Header{},
			refused: "echo"},
		{name: "websocket listed with another",
			in:      http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket, h2c"}},
			out:     http.Header{},
			refused: "websocket, h2c"},
		{name: "websocket in two header lines",
			in:      http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket", "websocket"}},
			out:     http.Header{},
			refused: "websocket, websocket"},
		{name: "Upgrade that Connection does not name",
			in:  http.Header{"Upgrade": {"websocket"}, "Keep-Alive": {"timeout=5"}, "X-Team": {"blue"}},
			out: http.Header{"X-Team": {"blue"}}},
		{name: "headers Connection names",
			in:  http.Header{"Connection": {"X-Hop, keep-alive"}, "X-Hop": {"1"}, "X-Team": {"blue"}},
			out: http.Header{"X-Team": {"blue"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			upgrade, refused := upstreamHeader(h)
			if upgrade != tc.upgrade || refused != tc.refused {
				t.Errorf("upgrade %q, refused %q; want %q, %q", upgrade, refused, tc.upgrade, tc.refused)
			}
			if tc.refused == "" && !reflect.DeepEqual(h, tc.out) {
				t.Errorf("to the destination: %v; want %v", h, tc.out)
			}
		})
	}
}
