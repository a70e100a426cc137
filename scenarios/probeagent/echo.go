package probeagent

import (
	"fmt"
	"net/http"
	"net/textproto"
	"sort"
	"strings"
)

// EchoHeader asks an HTTP workload netpact runs (the http workload; probe-server on a cluster) to
// say which of the named request headers it received, after every proxy on the way: it answers
// each name with a SawPrefix header holding the values joined with ",", or Absent.
const (
	EchoHeader = "X-Netpact-Echo"
	SawPrefix  = "X-Netpact-Saw-"
	Absent     = "(absent)"
)

// WriteSaw sets, on a response, what the request's EchoHeader asks for.
func WriteSaw(resp, req http.Header) {
	for _, name := range strings.Split(req.Get(EchoHeader), ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		v := Absent
		if vs, ok := req[textproto.CanonicalMIMEHeaderKey(name)]; ok {
			v = strings.Join(vs, ",")
		}
		resp.Set(SawPrefix+name, v)
	}
}

// AskSaw sets a request's EchoHeader for the names of want.
func AskSaw(req http.Header, want map[string]string) {
	if len(want) == 0 {
		return
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	req.Set(EchoHeader, strings.Join(names, ","))
}

// Saw reads what the workload said it received of the names of want.
func Saw(resp http.Header, want map[string]string) map[string]string {
	got := map[string]string{}
	for n := range want {
		v := resp.Get(SawPrefix + n)
		if v == "" {
			v = "(not echoed)"
		}
		got[n] = v
	}
	return got
}

// SeenOutcome is an HTTP response's outcome: http-CODE, and when the destination saw other
// header values than want, what it saw ("http-200 saw X-Team=red"). Values are compared as
// given; Absent means the header must not have arrived.
func SeenOutcome(code int, want, got map[string]string) string {
	out := fmt.Sprintf("http-%d", code)
	var diff []string
	for n, w := range want {
		if w == "" {
			w = Absent
		}
		if got[n] != w {
			diff = append(diff, fmt.Sprintf("%s=%s", textproto.CanonicalMIMEHeaderKey(n), got[n]))
		}
	}
	if len(diff) == 0 {
		return out
	}
	sort.Strings(diff)
	return out + " saw " + strings.Join(diff, " ")
}

// DroppedBehindProxy says whether an HTTP answer is the L7 proxy's (and Envoy's) 503 for a
// connection the destination never answered: the source's egress proxy forwarded the request
// and the destination's policy dropped the proxy's connection. A probe reports it as timeout,
// what the same drop gives a probe without a proxy, whether the probe waited long enough to see
// the 503 or not.
func DroppedBehindProxy(code int, body []byte) bool {
	return code == http.StatusServiceUnavailable && strings.Contains(string(body), "reset reason: connection timeout")
}
