package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/policy"
)

// The pods of the test policy (testdata/policy.yaml): the transparent tests give these addresses
// to real namespaces; the loopback tests judge every query as the client's to kube-dns.
var (
	clientV4 = netip.MustParseAddr("10.250.0.2")
	clientV6 = netip.MustParseAddr("fd00:250::2")
	dnsV4    = netip.MustParseAddr("10.250.0.53")
	dnsV6    = netip.MustParseAddr("fd00:250::53")
)

// testState compiles the test policy over the client and kube-dns.
func testState(t testing.TB) *policy.State {
	t.Helper()
	b, err := policy.Load([]string{"testdata/policy.yaml"}, policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := &policy.Cluster{Namespaces: []policy.Namespace{{Name: "app"}, {Name: "kube-system"}}, Endpoints: []policy.Endpoint{
		{Namespace: "app", Name: "client", Labels: map[string]string{"app": "client"}, IPs: []netip.Addr{clientV4, clientV6}},
		{Namespace: "kube-system", Name: "coredns", Labels: map[string]string{"k8s-app": "kube-dns"}, IPs: []netip.Addr{dnsV4, dnsV6}},
	}}
	st, err := policy.Compile(c, b, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// decideAsClient judges every flow as the client's to kube-dns (the loopback tests' addresses
// are not the pods').
func decideAsClient(st *policy.State) func(src, dst netip.AddrPort, proto policy.Proto) (policy.Decision, bool) {
	return func(_, _ netip.AddrPort, proto policy.Proto) (policy.Decision, bool) {
		return st.Decide(clientV4, dnsV4, proto, 53), true
	}
}

// events collects what the proxy reports.
type events struct {
	mu sync.Mutex
	qs []Query
}

func (e *events) add(q Query) {
	e.mu.Lock()
	e.qs = append(e.qs, q)
	e.mu.Unlock()
}

// wait returns the first event that matches, waiting up to 3 s for it.
func (e *events) wait(t testing.TB, what string, match func(Query) bool) Query {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		e.mu.Lock()
		i := slices.IndexFunc(e.qs, match)
		var q Query
		if i >= 0 {
			q = e.qs[i]
		}
		all := slices.Clone(e.qs)
		e.mu.Unlock()
		if i >= 0 {
			return q
		}
		if time.Now().After(deadline) {
			t.Fatalf("no event %s; the proxy reported:\n%s", what, formatEvents(all))
		}
	}
}

func (e *events) named(t testing.TB, name string) Query {
	t.Helper()
	return e.wait(t, "for "+name, func(q Query) bool { return q.Name == name })
}

func formatEvents(qs []Query) string {
	var b strings.Builder
	for _, q := range qs {
		fmt.Fprintf(&b, "  %s %s -> %s %s %s rcode %d answers %v ttl %s verdict %+v refused %q\n",
			q.Proto, q.Src, q.Dst, q.Name, dns.TypeToString[q.Type], q.Rcode, q.Answers, q.TTL, q.Verdict, q.Refused)
	}
	return b.String()
}

// testServer is a DNS server answering fixed names, over UDP and TCP on one port.
type testServer struct {
	addr    netip.AddrPort // of the first listener
	servers []*dns.Server

	mu   sync.Mutex
	seen []seen
}

// seen is a query the server got: its name, type, protocol and where it came from.
type seen struct {
	name  string
	qtype uint16
	tcp   bool
	from  netip.AddrPort
}

// Names the test server answers.
const (
	nameA       = "a.example.com."      // A 192.0.2.1 (TTL 300), AAAA 2001:db8::1 (TTL 200)
	namePair    = "pair.example.com."   // as nameA, after 100 ms: queries sent together overlap
	nameChain   = "www.example.com."    // CNAME (60) -> CNAME (30) -> two A (120)
	nameBad     = "bad.example.com."    // an A record of another name
	nameMany    = "many.example.com."   // 100 A records: truncated over UDP
	nameBig     = "big.example.com."    // 40 A records: fits 4096 bytes, not 512 uncompressed
	nameSlow    = "slow.example.com."   // never answered
	nameNX      = "nx.example.com."     // NXDOMAIN
	nameWhoami  = "whoami.example.com." // TXT: the address the query came from
	nameDenied  = "evil.org."           // not allowed by the policy
	chainTTL    = 30 * time.Second
	manyRecords = 100
)

var chainAddrs = []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")}

func (s *testServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	_, tcp := w.LocalAddr().(*net.TCPAddr)
	s.mu.Lock()
	s.seen = append(s.seen, seen{name: name, qtype: q.Qtype, tcp: tcp, from: tproxy.AddrPort(w.RemoteAddr())})
	s.mu.Unlock()
	m := new(dns.Msg).SetReply(r)
	hdr := func(name string, t uint16, ttl uint32) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	a := func(name string, ttl uint32, ip string) dns.RR {
		return &dns.A{Hdr: hdr(name, dns.TypeA, ttl), A: net.ParseIP(ip)}
	}
	switch name {
	case nameSlow:
		return
	case nameNX:
		m.Rcode = dns.RcodeNameError
	case namePair:
		time.Sleep(100 * time.Millisecond)
		fallthrough
	case nameA:
		if q.Qtype == dns.TypeAAAA {
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(q.Name, dns.TypeAAAA, 200), AAAA: net.ParseIP("2001:db8::1")})
		} else {
			m.Answer = append(m.Answer, a(q.Name, 300, "192.0.2.1"))
		}
	case nameChain:
		m.Answer = append(m.Answer,
			&dns.CNAME{Hdr: hdr(q.Name, dns.TypeCNAME, 60), Target: "edge.example.net."},
			&dns.CNAME{Hdr: hdr("Edge.Example.NET.", dns.TypeCNAME, 30), Target: "a.cdn.example.org."},
			a("a.cdn.example.org.", 120, chainAddrs[0].String()), a("a.cdn.example.org.", 120, chainAddrs[1].String()))
	case nameBad:
		m.Answer = append(m.Answer, a("other.example.com.", 300, "192.0.2.66"))
	case nameMany, nameBig:
		n := manyRecords
		if name == nameBig {
			n = 40
		}
		for i := range n {
			m.Answer = append(m.Answer, a(q.Name, 60, fmt.Sprintf("198.51.100.%d", i+1)))
		}
	case nameWhoami:
		m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(q.Name, dns.TypeTXT, 0), Txt: []string{w.RemoteAddr().String()}})
	default:
		m.Rcode = dns.RcodeNameError
	}
	if !tcp {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// queries are the queries the server got for name.
func (s *testServer) queries(name string) []seen {
	return matching(&s.mu, &s.seen, func(q seen) bool { return q.name == name })
}

// matching are the items that keep says, read under mu.
func matching[T any](mu *sync.Mutex, items *[]T, keep func(T) bool) []T {
	mu.Lock()
	defer mu.Unlock()
	var out []T
	for _, it := range *items {
		if keep(it) {
			out = append(out, it)
		}
	}
	return out
}

// dialTCP connects to addr over TCP until the test ends.
func dialTCP(t testing.TB, addr string) (net.Conn, *dns.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(3 * time.Second))
	return c, &dns.Conn{Conn: c}
}

// startServer serves on UDP and TCP at each address (port 0: one free port for both), its
// sockets made by open (in a namespace, for the transparent tests); it stops when the test ends.
func startServer(t testing.TB, open func(func() error) error, addrs ...netip.AddrPort) *testServer {
	t.Helper()
	s := &testServer{}
	err := open(func() error {
		for _, ap := range addrs {
			var pc net.PacketConn
			var l net.Listener
			var err error
			for attempt := 0; attempt < 20; attempt++ {
				if pc, err = net.ListenPacket("udp", ap.String()); err != nil {
					return err
				}
				port := tproxy.AddrPort(pc.LocalAddr()).Port()
				if l, err = net.Listen("tcp", netip.AddrPortFrom(ap.Addr(), port).String()); err == nil {
					break
				}
				pc.Close()
			}
			if err != nil {
				return err
			}
			if !s.addr.IsValid() {
				s.addr = tproxy.AddrPort(pc.LocalAddr())
			}
			s.servers = append(s.servers, &dns.Server{PacketConn: pc, Handler: s}, &dns.Server{Listener: l, Handler: s})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("start the DNS server: %v", err)
	}
	for _, srv := range s.servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
	}
	t.Cleanup(func() {
		for _, srv := range s.servers {
			srv.Shutdown()
		}
	})
	return s
}

func here(f func() error) error { return f() }

// startLoopback runs a proxy in plain mode on loopback, every message to it standing for one to
// a test server; the client's policy judges every query unless opts says otherwise.
func startLoopback(t testing.TB, opts Options) (*Proxy, *testServer, *events) {
	t.Helper()
	srv := startServer(t, here, netip.MustParseAddrPort("127.0.0.1:0"))
	ev := &events{}
	if opts.OnQuery == nil {
		opts.OnQuery = ev.add
	}
	if opts.Decide == nil {
		opts.Decide = decideAsClient(testState(t))
	}
	p := startPlain(t, opts, srv.addr)
	return p, srv, ev
}

// startPlain runs a proxy in plain mode whose messages stand for ones to server.
func startPlain(t testing.TB, opts Options, server netip.AddrPort) *Proxy {
	t.Helper()
	p, err := listen(0, opts, func(netip.AddrPort) netip.AddrPort { return server })
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, p)
	return p
}

// open counts the proxies the tests have running (they run one at a time); closed holds those
// closed already.
var (
	open   atomic.Int32
	closed sync.Map
)

// closeAtEnd closes a proxy when the test ends, unless the test did.
func closeAtEnd(t testing.TB, p *Proxy) {
	open.Add(1)
	t.Cleanup(func() { closeProxy(t, p) })
}

// closeProxy closes a proxy, which must return at once (queries in flight end), and once no
// proxy is open, none of their goroutines may be left: Close waits for them.
func closeProxy(t testing.TB, p *Proxy) {
	t.Helper()
	if _, dup := closed.LoadOrStore(p, true); dup {
		return
	}
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("close: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("Close did not return within 3 s:\n%s", proxyGoroutines())
	}
	if open.Add(-1) == 0 {
		if g := proxyGoroutines(); g != "" {
			t.Errorf("goroutines of the proxy left after Close:\n%s", g)
		}
	}
}

var proxyFrame = regexp.MustCompile(`enforcer/dnsproxy\.\(\*(Proxy|upstream|tcpConn)\)`)

// proxyGoroutines are the stacks of the goroutines running the proxy's code.
func proxyGoroutines() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if proxyFrame.MatchString(g) && !strings.Contains(g, "proxyGoroutines") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// ask sends a query for name of type qtype over network (udp, tcp) to addr, with an EDNS0 size
// when edns is not 0.
func ask(network, addr, name string, qtype uint16, edns uint16) (*dns.Msg, *dns.Msg, error) {
	m := new(dns.Msg).SetQuestion(name, qtype)
	if edns != 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	return m, r, err
}

func proxyAddr(p *Proxy) string {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p.Port()).String()
}
