package proxy

import (
	"net/http"
	"strings"
)

// After a protocol switch (101, RFC 9110 section 7.8) the proxy only copies bytes: nothing on
// the connection is judged any more. So it switches to WebSocket only, as Cilium's Envoy does (its
// HTTP connection manager lists one upgrade_configs entry, websocket: cilium/cilium
// pkg/envoy/xds_server.go). h2c it never switches, whatever the destination would do: as Envoy's
// HTTP/1 codec does (envoyproxy/envoy#7981, source/common/http/http1/codec_impl.cc), it removes
// Upgrade: h2c, HTTP2-Settings and their Connection tokens and forwards a plain HTTP/1.1 request,
// which a backend that honours h2c (Tomcat, Jetty, Apache) then answers in HTTP/1.1: no HTTP/2
// tunnel whose requests nobody judges. Any other upgrade is refused with 403 and the connection
// closed, as Envoy refuses an upgrade type it has no upgrade_configs entry for (upgrade_failed).

// switchableUpgrade is the one upgrade token the proxy passes on (compared case-insensitively).
const switchableUpgrade = "websocket"

// upstreamHeader removes a request's hop-by-hop headers before it goes to the destination and
// puts back the one protocol switch the proxy carries. upgrade is the token passed on (websocket,
// as the client spelled it) or ""; refused is the token of an upgrade the proxy refuses, or "".
// An upgrade is asked for by Upgrade with Connection naming it; an h2c upgrade is neither passed
// on nor refused: its headers go, and the request is plain HTTP/1.1.
func upstreamHeader(h http.Header) (upgrade, refused string) {
	asked := headerHasToken(h, "Connection", "upgrade")
	// Several values are one list, which is not one token: refused, as Envoy does.
	token := strings.TrimSpace(strings.Join(h.Values("Upgrade"), ", "))
	removeHopByHop(h)
	switch {
	case !asked || token == "" || strings.EqualFold(token, "h2c"):
		return "", ""
	case strings.EqualFold(token, switchableUpgrade):
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", token)
		return token, ""
	}
	return "", token
}

// removeHopByHop deletes the headers that concern one connection only, a request's or a
// response's: those Connection names, and hopHeaders.
func removeHopByHop(h http.Header) {
	for _, name := range connectionHeaders(h) {
		h.Del(name)
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}
