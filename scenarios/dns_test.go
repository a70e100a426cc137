package scenarios

import (
	"net/netip"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// TestDNSAnswer: the local node's kube-dns answers A and AAAA for the names it knows, with the
// scenario's TTL, NXDOMAIN otherwise, and nothing (the caller echoes) for what is not a query: garbage, truncated
// messages, responses.
func TestDNSAnswer(t *testing.T) {
	lookup := zone{ttl: 2, lookup: func(name string) ([]netip.Addr, bool) {
		if name == "web.app.svc.cluster.local." {
			return []netip.Addr{netip.MustParseAddr("10.251.1.1"), netip.MustParseAddr("fd00:251:1::1")}, true
		}
		return nil, false
	}}
	query := func(name string, typ dnsmessage.Type, response bool) []byte {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, Response: response, RecursionDesired: true})
		b.StartQuestions()
		b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
		out, _ := b.Finish()
		return out
	}
	parse := func(msg []byte) (dnsmessage.Header, []dnsmessage.Resource) {
		var m dnsmessage.Message
		if err := m.Unpack(msg); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		return m.Header, m.Answers
	}
	h, ans := parse(dnsAnswer(query("Web.App.svc.cluster.local.", dnsmessage.TypeA, false), lookup))
	if h.ID != 7 || !h.Response || h.RCode != dnsmessage.RCodeSuccess || len(ans) != 1 || ans[0].Body.(*dnsmessage.AResource).A != [4]byte{10, 251, 1, 1} || ans[0].Header.TTL != 2 {
		t.Errorf("A: %+v %+v", h, ans)
	}
	if _, ans := parse(dnsAnswer(query("web.app.svc.cluster.local.", dnsmessage.TypeAAAA, false), lookup)); len(ans) != 1 {
		t.Errorf("AAAA: %+v", ans)
	}
	if h, ans := parse(dnsAnswer(query("nope.app.svc.cluster.local.", dnsmessage.TypeA, false), lookup)); h.RCode != dnsmessage.RCodeNameError || len(ans) != 0 {
		t.Errorf("unknown name: %+v %+v", h, ans)
	}
	q := query("web.app.svc.cluster.local.", dnsmessage.TypeA, false)
	for name, msg := range map[string][]byte{"garbage": []byte("probe"), "empty": nil, "truncated": q[:len(q)-3],
		"a response": query("web.app.svc.cluster.local.", dnsmessage.TypeA, true), "header only": q[:12]} {
		if out := dnsAnswer(msg, lookup); out != nil {
			t.Errorf("%s: answered %x, want nothing", name, out)
		}
	}
}
