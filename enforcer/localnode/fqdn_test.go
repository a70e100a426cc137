package localnode

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/netpact/netpact/policy"
)

// fqdnPolicies: a may ask b (its DNS server) for api.stripe.com only, and reach what the answers
// gave on 443.
const fqdnPolicies = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-by-name, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints: [{matchLabels: {app: b}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchName: api.stripe.com}]}}]
  - toFQDNs: [{matchName: api.stripe.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`

// TestToFQDNsThroughTheDNSProxy: on a local node, a pod's lookup goes through the DNS proxy,
// which REFUSES a name no dns rule allows and learns the answer of one it allows; the pod then
// reaches the answer's address on 443 and not another host's; once the answer's TTL has passed
// and no connection uses the address (the node's expiry loop checks), the node forgets it and the
// pod no longer reaches it. The queries are flow events.
func TestToFQDNsThroughTheDNSProxy(t *testing.T) {
	n, c := testNode(t)
	stripe4, other4 := netip.MustParseAddr("198.51.100.101"), netip.MustParseAddr("198.51.100.102")
	stripe, err := n.AddExternal("stripe", 0, stripe4, netip.MustParseAddr("2001:db8::101"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := n.AddExternal("other", 1, other4, netip.MustParseAddr("2001:db8::102"))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []struct {
		p    interface{ Do(func() error) error }
		addr netip.Addr
	}{{stripe, stripe4}, {other, other4}} {
		var ln net.Listener
		if err := h.p.Do(func() (err error) {
			ln, err = net.Listen("tcp", netip.AddrPortFrom(h.addr, 443).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		}()
	}
	// b answers api.stripe.com with stripe's address, TTL 2 s.
	b := n.Pod("app/b")
	var pc net.PacketConn
	if err := b.Do(func() (err error) { pc, err = net.ListenPacket("udp", b.IPv4.String()+":53"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && strings.EqualFold(r.Question[0].Name, "api.stripe.com.") && r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 2},
				A: stripe4.AsSlice()})
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })

	bundle, err := policy.LoadBytes("fqdn.yaml", []byte(fqdnPolicies), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(c, bundle.Policies); err != nil {
		t.Fatal(err)
	}
	a := n.Pod("app/a")
	lookup := func(name string) (*dns.Msg, error) {
		var m *dns.Msg
		err := a.Do(func() (err error) {
			q := new(dns.Msg)
			q.SetQuestion(name, dns.TypeA)
			m, _, err = (&dns.Client{Timeout: 2 * time.Second}).Exchange(q, b.IPv4.String()+":53")
			return err
		})
		return m, err
	}
	reaches := func(dst netip.Addr) bool {
		ok := false
		a.Do(func() error {
			conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, 443).String(), 500*time.Millisecond)
			if err == nil {
				ok = true
				conn.Close()
			}
			return nil
		})
		return ok
	}

	if reaches(stripe4) {
		t.Fatal("a reaches stripe before any lookup")
	}
	if m, err := lookup("www.example.com."); err != nil || m.Rcode != dns.RcodeRefused {
		t.Fatalf("lookup of a name no dns rule allows: %v %v, want REFUSED", m, err)
	}
	m, err := lookup("api.stripe.com.")
	if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("lookup of api.stripe.com: %v %v, want its address", m, err)
	}
	if !reaches(stripe4) {
		t.Fatal("a does not reach api.stripe.com's address after looking it up")
	}
	if reaches(other4) {
		t.Fatal("a reaches another host on 443")
	}
	// The connection above closed: conntrack keeps it 10 s (a connection, even a new one, keeps
	// an address past its TTL), then the node forgets the address.
	deadline := time.Now().Add(40 * time.Second)
	for len(n.enf.LearnedNames()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the node still holds %v 40 s after the 2 s TTL", n.enf.LearnedNames())
		}
		time.Sleep(time.Second)
	}
	if reaches(stripe4) {
		t.Fatal("a reaches stripe after its address expired")
	}
	var sawRefused, sawAnswer bool
	for _, f := range n.Flows(map[[2]netip.Addr]bool{{a.IPv4, b.IPv4}: true}, 100) {
		sawRefused = sawRefused || strings.Contains(f, "dns-request DROPPED (DNS Query www.example.com. A) REFUSED")
		sawAnswer = sawAnswer || strings.Contains(f, `dns-response FORWARDED (DNS Answer "198.51.100.101" TTL: 2 (Proxy api.stripe.com. A)) NOERROR`)
	}
	if !sawRefused || !sawAnswer {
		t.Errorf("flow events lack the refused query (%v) or the answer (%v): %s", sawRefused, sawAnswer,
			strings.Join(n.Flows(map[[2]netip.Addr]bool{{a.IPv4, b.IPv4}: true}, 100), "\n"))
	}
}
