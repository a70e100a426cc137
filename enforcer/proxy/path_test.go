package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/policy"
)

// TestPathAsJudged: each request target goes the proxy's way (read, normalised, redirected when
// it escapes a slash, judged by a rule allowing /public/.*, forwarded); what is admitted is
// under /public once normalised, and the destination gets the target as judged, escapes kept as
// they were (never escaped again: %20 stays %20).
func TestPathAsJudged(t *testing.T) {
	l7 := &policy.L7Policy{HTTP: []ciliumv2.PortRuleHTTP{{Path: "/public/.*"}}}
	for _, tc := range []struct {
		target   string
		redirect string // the Location of a 307 ("": none); the request that follows is judged
		judged   string // and forwarded, when allowed
		allowed  bool
	}{
		{target: `/public\..\admin`, judged: "/admin"},
		{target: `/public\admin`, judged: "/public/admin", allowed: true},
		{target: "/public/../admin", judged: "/admin"},
		{target: "/public/./../admin", judged: "/admin"},
		{target: "/public/%2e%2e/admin", judged: "/admin"},
		{target: "/public/.%2E/admin", judged: "/admin"},
		{target: "/public/%2e%2e%5cadmin", redirect: "/admin", judged: "/admin"},
		{target: "/public%2F..%2Fadmin", redirect: "/admin", judged: "/admin"},
		{target: "/public/..%2fadmin", redirect: "/admin", judged: "/admin"},
		{target: "/public/a%2Fb", redirect: "/public/a/b", judged: "/public/a/b", allowed: true},
		{target: "/public//x", judged: "/public/x", allowed: true},
		{target: "//public/x", judged: "/public/x", allowed: true},
		{target: "/public/..", judged: "/"},
		{target: "/public", judged: "/public"},
		{target: "http://svc/public/../admin", judged: "/admin"},
		{target: "/public/a%20b", judged: "/public/a%20b", allowed: true},
		{target: "/public/%7euser/%41", judged: "/public/~user/A", allowed: true},
		{target: "/public/%252e%252e/admin", judged: "/public/%252e%252e/admin", allowed: true},
		{target: "/public/x?q=a%20b&r=%2F..%2F", judged: "/public/x?q=a%20b&r=%2F..%2F", allowed: true},
		{target: "/public/x?", judged: "/public/x?", allowed: true},
	} {
		t.Run(tc.target, func(t *testing.T) {
			req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + tc.target + " HTTP/1.1\r\nHost: svc\r\n\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			target, redirect, err := policy.NormalizeHTTPTarget(req.RequestURI)
			if err != nil {
				t.Fatal(err)
			}
			if redirect != (tc.redirect != "") || redirect && target != tc.redirect {
				t.Fatalf("redirect %v to %q, want %q", redirect, target, tc.redirect)
			}
			if redirect {
				// The client follows the Location: that request is the one judged.
				if target, redirect, err = policy.NormalizeHTTPTarget(target); err != nil || redirect {
					t.Fatalf("the redirect's target %q is not final: redirect %v, %v", target, redirect, err)
				}
			}
			if target != tc.judged {
				t.Fatalf("judged %q, want %q", target, tc.judged)
			}
			allowed, _ := l7.MatchHTTP(policy.HTTPRequest{Method: req.Method, Path: target, Host: req.Host})
			if allowed != tc.allowed {
				t.Fatalf("allowed %v, want %v", allowed, tc.allowed)
			}
			if p, _, _ := strings.Cut(target, "?"); allowed && !strings.HasPrefix(p, "/public/") {
				t.Fatalf("%q admitted outside /public/", target)
			}
			upstreamTarget(req.URL, target)
			var out bytes.Buffer
			if err := req.Write(&out); err != nil {
				t.Fatal(err)
			}
			line, _, _ := strings.Cut(out.String(), "\r\n")
			if want := "GET " + target + " HTTP/1.1"; line != want {
				t.Errorf("HTTP/1.1 to the destination %q, want %q", line, want)
			}
			// HTTP/2's :path is the URL's RequestURI.
			if got := req.URL.RequestURI(); got != target {
				t.Errorf("HTTP/2 :path %q, want %q", got, target)
			}
		})
	}
}

// TestH2ForwardsAsJudged: the HTTP/2 side forwards the judged target byte for byte, a query Go
// cannot parse (";") included: the reverse proxy would drop it.
func TestH2ForwardsAsJudged(t *testing.T) {
	got := make(chan string, 1)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	dst := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Proto + " " + r.RequestURI }))
	dst.Config.Protocols = &protos
	dst.Start()
	defer dst.Close()
	p := &Proxy{opts: Options{KeepSource: func(netip.Addr) bool { return false }, Limits: Limits{DialTimeout: time.Second, IdleTimeout: time.Second}}}
	hf := &h2Flow{f: flow{src: netip.MustParseAddrPort("127.0.0.1:1"), dst: netip.MustParseAddrPort(dst.Listener.Addr().String())}}
	defer func() { hf.tr.CloseIdleConnections() }()
	for _, target := range []string{"/public/a%20b", "/public/%252e%252e/x", "/public/x?a=1;b=%20", "/public/x?"} {
		r := httptest.NewRequest("GET", "http://svc"+target, nil)
		upstreamTarget(r.URL, target)
		w := httptest.NewRecorder()
		p.h2Proxy(hf).ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			t.Fatalf("%s: status %d", target, w.Code)
		}
		if g := <-got; g != "HTTP/2.0 "+target {
			t.Errorf("destination got %q, want HTTP/2.0 %q", g, target)
		}
	}
}
