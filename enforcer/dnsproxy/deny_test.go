package dnsproxy

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// TestDeniedName: a name no DNS rule allows gets the reject rcode (REFUSED by default, NXDOMAIN
// with Reject), with the query's ID and question and no answers, over UDP and TCP; the server
// never sees it, and the event names the policy that refused it.
func TestDeniedName(t *testing.T) {
	for _, tc := range []struct {
		reject, want int
	}{
		{0, dns.RcodeRefused},
		{dns.RcodeNameError, dns.RcodeNameError},
	} {
		t.Run(dns.RcodeToString[tc.want], func(t *testing.T) {
			p, srv, ev := startLoopback(t, Options{Reject: tc.reject})
			for _, network := range []string{"udp", "tcp"} {
				q, r, err := ask(network, proxyAddr(p), "Evil.ORG.", dns.TypeA, 0)
				if err != nil {
					t.Fatalf("%s: %v", network, err)
				}
				if r.Rcode != tc.want || r.Id != q.Id || len(r.Answer) != 0 || len(r.Question) != 1 || r.Question[0] != q.Question[0] || !r.Response {
					t.Errorf("%s with Reject %d: got\n%v\nwant rcode %s, ID %d, the question, no answers", network, tc.reject, r, dns.RcodeToString[tc.want], q.Id)
				}
			}
			e := ev.named(t, nameDenied)
			if e.Rcode != tc.want || e.Verdict.Allowed || !strings.Contains(e.Verdict.Reason, "no DNS rule of CiliumNetworkPolicy app/client-dns") || e.Refused != "" {
				t.Errorf("event %+v: want rcode %d, a verdict naming app/client-dns, nothing refused", e, tc.want)
			}
			if got := srv.queries(nameDenied); len(got) != 0 {
				t.Errorf("the server saw the denied query: %v", got)
			}
		})
	}
}

// TestListenRejectsOtherRcodes: Reject takes REFUSED or NXDOMAIN only.
func TestListenRejectsOtherRcodes(t *testing.T) {
	if p, err := listen(0, Options{Reject: dns.RcodeServerFailure}, nil); err == nil {
		p.Close()
		t.Fatal("Reject SERVFAIL accepted")
	} else if !strings.Contains(err.Error(), "use REFUSED") {
		t.Errorf("error %q does not say what to use", err)
	}
}
