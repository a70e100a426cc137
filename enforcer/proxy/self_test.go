package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// TestConnectionToItselfIsClosed: a node process connecting to the proxy's own listener gets its
// connection closed, and the proxy does not connect to itself (before, it dialled its own address
// again for each connection, up to the per-source cap).
func TestConnectionToItselfIsClosed(t *testing.T) {
	testenv.RequireRoot(t)
	var decided, reported atomic.Int32
	p, err := Listen(0, Options{
		Decide: func(src, dst netip.AddrPort) (policy.Decision, bool) {
			decided.Add(1)
			return policy.Decision{Outcome: policy.OutcomeAllowed}, true
		},
		KeepSource: func(netip.Addr) bool { return false },
		OnRequest:  func(Request) { reported.Add(1) },
		Limits:     Limits{MaxConnsPerSource: 50},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	// Closed with the request unread: a reset, or an end.
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the connection answered %q (%v), want it closed", b, err)
	}
	if n := decided.Load(); n != 0 {
		t.Errorf("%d requests judged: the connection was served", n)
	}
	if n := reported.Load(); n != 1 {
		t.Errorf("%d events, want 1 that says why the connection was closed", n)
	}
}

// TestRefusedDestination: a destination the node refuses (the node agent's endpoints) gets no
// request through the proxy, whatever the policy allows, and the verdict says why.
func TestRefusedDestination(t *testing.T) {
	endpoint := netip.MustParseAddrPort("172.18.0.2:9879")
	p := &Proxy{opts: Options{
		Decide: func(src, dst netip.AddrPort) (policy.Decision, bool) {
			return policy.Decision{Outcome: policy.OutcomeAllowed}, true
		},
		Refuse: func(dst netip.AddrPort) string {
			if dst == endpoint {
				return "the node agent's endpoints are not reached through the L7 proxy"
			}
			return ""
		},
	}}
	req := policy.HTTPRequest{Method: "GET", Path: "/flows"}
	if v := p.judge(flow{src: netip.MustParseAddrPort("10.244.1.5:40000"), dst: endpoint}, req); v.Allowed || !strings.Contains(v.Reason, "node agent's endpoints") {
		t.Errorf("to the node agent's endpoint: %+v", v)
	}
	if v := p.judge(flow{src: netip.MustParseAddrPort("10.244.1.5:40000"), dst: netip.MustParseAddrPort("172.18.0.2:9100")}, req); !v.Allowed {
		t.Errorf("to another port of the node: %+v", v)
	}
}
