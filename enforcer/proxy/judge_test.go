package proxy

import (
	"net/netip"
	"testing"
)

// TestJudgesWithPolicy: each request of a flow is judged on the policy's decision for that flow
// (testdata/get-public.yaml): what its HTTP rules allow reaches the destination as sent; what they
// do not (another path, another method, a source the policy does not let in at all) gets the 403
// and never reaches it.
func TestJudgesWithPolicy(t *testing.T) {
	d := newDestination(t, nil)
	p := startProxy(t, Options{Decide: decideGetPublic(t, d.addr)})
	for _, tc := range []struct {
		from                 string
		src                  netip.AddrPort
		method, target, body string
		allowed              bool
	}{
		{from: "client", src: clientPod, method: "GET", target: "/public/a?q=1", allowed: true},
		{from: "client", src: clientPod, method: "GET", target: "/admin"},
		{from: "client", src: clientPod, method: "GET", target: "/public"},
		{from: "client", src: clientPod, method: "POST", target: "/public/a", body: "hi"},
		{from: "client", src: clientPod, method: "POST", target: "/public/upload", body: "hi", allowed: true},
		{from: "other", src: otherPod, method: "GET", target: "/public/a"},
	} {
		t.Run(tc.method+" "+tc.target+" from "+tc.from, func(t *testing.T) {
			c := openFlow(t, p, tc.src, d.addr)
			resp, body := c.do(t, request(tc.method, tc.target, "", tc.body))
			got, reached := d.next()
			if !tc.allowed {
				if resp.StatusCode != 403 || reached {
					t.Fatalf("got %d %q, the destination %v; want 403, the destination nothing", resp.StatusCode, body, got)
				}
				return
			}
			if resp.StatusCode != 200 || body != "served "+tc.target {
				t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, "served "+tc.target)
			}
			if got.Method != tc.method || got.Target != tc.target || got.Body != tc.body {
				t.Errorf("the destination got %s %s %q, want %s %s %q", got.Method, got.Target, got.Body, tc.method, tc.target, tc.body)
			}
		})
	}
}
