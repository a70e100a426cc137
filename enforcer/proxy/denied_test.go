package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDenied: a denied request gets Cilium's 403 byte for byte, its body Cilium's "Access
// denied" or DeniedBody, CRLF-terminated; on a keep-alive connection the next request is judged
// and served; a request that closes the connection gets connection: close, then the end.
// OnRequest receives each verdict.
func TestDenied(t *testing.T) {
	for _, tc := range []struct{ deniedBody, want string }{
		{"", "Access denied\r\n"},
		{"Forbidden by netpact", "Forbidden by netpact\r\n"},
		{"Go away\r\n", "Go away\r\n"},
	} {
		t.Run(fmt.Sprintf("DeniedBody %q", tc.deniedBody), func(t *testing.T) {
			d := newDestination(t, nil)
			reports := make(chan Request, 8)
			p := startProxy(t, Options{Decide: decideGetPublic(t, d.addr), DeniedBody: tc.deniedBody,
				OnRequest: func(r Request) { reports <- r }})
			c := openFlow(t, p, clientPod, d.addr)

			io.WriteString(c, request("GET", "/admin?x=1", "", ""))
			c.wantDenied(t, tc.want, false)
			r := nextReport(t, reports)
			if r.Verdict.Allowed || r.Status != 403 || r.Src != clientPod || r.Dst != d.addr || r.Method != "GET" || r.Path != "/admin?x=1" ||
				!strings.Contains(r.Verdict.Reason, "no HTTP rule of CiliumNetworkPolicy app/get-public") {
				t.Errorf("reported %+v, want GET /admin?x=1 from %v to %v denied, 403, for no rule of app/get-public", r, clientPod, d.addr)
			}

			if resp, body := c.do(t, request("GET", "/public/a", "", "")); resp.StatusCode != 200 || body != "served /public/a" {
				t.Fatalf("after the 403, GET /public/a: %d %q, want 200", resp.StatusCode, body)
			}
			if got, ok := d.next(); !ok || got.Target != "/public/a" {
				t.Errorf("the destination got %+v (%v), want GET /public/a alone", got, ok)
			}
			if r := nextReport(t, reports); !r.Verdict.Allowed || r.Status != 200 || r.Path != "/public/a" {
				t.Errorf("reported %+v, want GET /public/a allowed, 200", r)
			}

			io.WriteString(c, request("GET", "/admin", "Connection: close\r\n", ""))
			c.wantDenied(t, tc.want, true)
			if b, err := c.br.ReadByte(); err != io.EOF {
				t.Errorf("after the 403 that closes: %q, %v; want the end", b, err)
			}
			if r := nextReport(t, reports); r.Verdict.Allowed || r.Status != 403 || r.Path != "/admin" {
				t.Errorf("reported %+v, want GET /admin denied, 403", r)
			}
			if got, ok := d.next(); ok || len(reports) > 0 {
				t.Errorf("the destination got %+v (%v) and %d more reports, want nothing denied to reach it", got, ok, len(reports))
			}
		})
	}
}

// wantDenied reads the response as it came and wants Cilium's 403 with body, and connection: close
// when closing.
func (c *testClient) wantDenied(t *testing.T, body string, closing bool) {
	t.Helper()
	var head strings.Builder
	var date string
	length := 0
	for line := ""; line != "\r\n"; {
		var err error
		if line, err = c.br.ReadString('\n'); err != nil {
			t.Fatalf("read the 403: %v (so far %q)", err, head.String())
		}
		head.WriteString(line)
		if v, ok := strings.CutPrefix(line, "date: "); ok {
			date = strings.TrimSuffix(v, "\r\n")
		}
		if v, ok := strings.CutPrefix(line, "content-length: "); ok {
			length, _ = strconv.Atoi(strings.TrimSuffix(v, "\r\n"))
		}
	}
	// As long as the response says, which the comparison below checks.
	got := make([]byte, min(length, 1<<10))
	if _, err := io.ReadFull(c.br, got); err != nil {
		t.Fatalf("read the 403's body: %v (head %q)", err, head.String())
	}
	if d, err := http.ParseTime(date); err != nil || time.Since(d).Abs() > time.Minute {
		t.Errorf("date %q: %v, want now", date, err)
	}
	want := fmt.Sprintf("HTTP/1.1 403 Forbidden\r\ncontent-length: %d\r\ncontent-type: text/plain\r\ndate: %s\r\nserver: envoy\r\n", len(body), date)
	if closing {
		want += "connection: close\r\n"
	}
	if want += "\r\n" + body; head.String()+string(got) != want {
		t.Errorf("denied request got\n%q\nwant\n%q", head.String()+string(got), want)
	}
}

// nextReport is the next request OnRequest received.
func nextReport(t *testing.T, reports <-chan Request) Request {
	t.Helper()
	select {
	case r := <-reports:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("OnRequest received nothing")
		return Request{}
	}
}
