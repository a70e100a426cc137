package probeagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/net/dns/dnsmessage"
)

// A lookup's outcomes besides allow, timeout and refused: the answer's rcode when it carried no
// addresses (dns-refused, dns-nxdomain, dns-servfail, ...), and for a lookup-then-connect probe
// the lookups that got no answer (dns-timeout, dns-unreachable) or no address (dns-nodata).
const (
	DNSRefused     = "dns-refused"
	DNSNXDomain    = "dns-nxdomain"
	DNSTimeout     = "dns-timeout"
	DNSUnreachable = "dns-unreachable"
	DNSNoData      = "dns-nodata"
)

// ResolvConf is what a stub resolver reads from /etc/resolv.conf.
type ResolvConf struct {
	// Nameservers are host:port.
	Nameservers []string
	Search      []string
	Ndots       int
}

// ParseResolvConf reads nameserver, search (or domain) and options ndots:N; ndots is 1 when
// not given, as in glibc.
func ParseResolvConf(data []byte) ResolvConf {
	c := ResolvConf{Ndots: 1}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			c.Nameservers = append(c.Nameservers, net.JoinHostPort(f[1], "53"))
		case "search", "domain":
			c.Search = f[1:]
		case "options":
			for _, o := range f[1:] {
				if v, ok := strings.CutPrefix(o, "ndots:"); ok {
					if n, err := strconv.Atoi(v); err == nil {
						c.Ndots = min(max(n, 0), 15)
					}
				}
			}
		}
	}
	return c
}

// PodResolvConf is the resolv.conf kubelet writes for a pod of namespace ns with the ClusterFirst
// DNS policy, whose cluster DNS is at dns.
func PodResolvConf(dns netip.Addr, ns string) ResolvConf {
	return ResolvConf{Nameservers: []string{net.JoinHostPort(dns.String(), "53")},
		Search: []string{ns + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}, Ndots: 5}
}

// Candidates are the fully qualified names a stub resolver asks for name, in order: the name
// alone when it ends with a dot; else the search list's names, with the name as written first
// when it has ndots dots or more, last otherwise (glibc's order).
func (c ResolvConf) Candidates(name string) []string {
	if strings.HasSuffix(name, ".") {
		return []string{name}
	}
	var out []string
	for _, s := range c.Search {
		out = append(out, name+"."+strings.TrimSuffix(s, ".")+".")
	}
	if strings.Count(name, ".") >= c.Ndots {
		return append([]string{name + "."}, out...)
	}
	return append(out, name+".")
}

// Answer is what a lookup got for the name as written (fully qualified), or for the first
// candidate that had addresses.
type Answer struct {
	Name  string
	RCode dnsmessage.RCode
	Addrs []netip.Addr
	// TTL is the smallest TTL of the address records.
	TTL uint32
}

// Dialer opens a connection to a nameserver ("udp" or "tcp", host:port).
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Resolve asks for the A records of name's candidates in turn (ResolvConf.Candidates), from the
// first nameserver, over UDP (TCP when an answer is truncated), until one has addresses. Without
// one, the answer is the name as written's. An error is a query that got no answer (ctx's end, or
// the nameserver unreachable): a resolver that cannot be reached is not asked again.
func Resolve(ctx context.Context, conf ResolvConf, name string, dial Dialer) (Answer, error) {
	if len(conf.Nameservers) == 0 {
		return Answer{}, errors.New("resolv.conf names no nameserver")
	}
	var last Answer
	for _, cand := range conf.Candidates(name) {
		a, err := query(ctx, dial, conf.Nameservers[0], cand)
		if err != nil {
			return Answer{Name: cand}, err
		}
		if len(a.Addrs) > 0 {
			return a, nil
		}
		if strings.EqualFold(cand, name+".") || strings.EqualFold(cand, name) || last.Name == "" {
			last = a
		}
	}
	return last, nil
}

// query asks server for name's A records.
func query(ctx context.Context, dial Dialer, server, name string) (Answer, error) {
	n, err := dnsmessage.NewName(name)
	if err != nil {
		return Answer{}, fmt.Errorf("query %s: %w", name, err)
	}
	id := uint16(rand.Uint32())
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.StartQuestions()
	b.Question(dnsmessage.Question{Name: n, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		return Answer{}, fmt.Errorf("query %s: %w", name, err)
	}
	reply, err := exchange(ctx, dial, "udp", server, q)
	if err != nil {
		return Answer{}, err
	}
	var m dnsmessage.Message
	if err := m.Unpack(reply); err != nil || m.ID != id || !m.Response {
		return Answer{}, fmt.Errorf("query %s: not an answer to it", name)
	}
	if m.Truncated {
		if reply, err = exchange(ctx, dial, "tcp", server, q); err != nil {
			return Answer{}, err
		}
		if err := m.Unpack(reply); err != nil || m.ID != id || !m.Response {
			return Answer{}, fmt.Errorf("query %s over TCP: not an answer to it", name)
		}
	}
	a := Answer{Name: name, RCode: m.RCode}
	for _, r := range m.Answers {
		if ar, ok := r.Body.(*dnsmessage.AResource); ok {
			if len(a.Addrs) == 0 || r.Header.TTL < a.TTL {
				a.TTL = r.Header.TTL
			}
			a.Addrs = append(a.Addrs, netip.AddrFrom4(ar.A))
		}
	}
	return a, nil
}

// exchange sends one query and reads its reply, over UDP or (length-prefixed) TCP.
func exchange(ctx context.Context, dial Dialer, network, server string, q []byte) ([]byte, error) {
	c, err := dial(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if network == "tcp" {
		q = append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	if network == "tcp" {
		var size [2]byte
		if _, err := io.ReadFull(c, size[:]); err != nil {
			return nil, err
		}
		reply := make([]byte, binary.BigEndian.Uint16(size[:]))
		_, err := io.ReadFull(c, reply)
		return reply, err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	return buf[:n], err
}

// RCodeName is an rcode's name as dig prints it: NOERROR, NXDOMAIN, REFUSED, SERVFAIL...
func RCodeName(rc dnsmessage.RCode) string {
	switch rc {
	case dnsmessage.RCodeSuccess:
		return "NOERROR"
	case dnsmessage.RCodeNameError:
		return "NXDOMAIN"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	}
	return fmt.Sprintf("RCODE%d", rc)
}

// RCodeOutcome names an answer's rcode as an outcome: dns-nxdomain, dns-refused, dns-servfail...
func RCodeOutcome(rc dnsmessage.RCode) string { return "dns-" + strings.ToLower(RCodeName(rc)) }

// LookupOutcome is a lookup probe's outcome: allow when the resolver answered with addresses or
// without (NOERROR, or NXDOMAIN unless exact: then dns-nxdomain), the rcode's outcome for other
// answers (dns-refused...), refused or timeout when no answer came.
func LookupOutcome(a Answer, err error, exact bool) string {
	switch {
	case err != nil:
		if isRefused(err) {
			return "refused"
		}
		return "timeout"
	case a.RCode == dnsmessage.RCodeSuccess, a.RCode == dnsmessage.RCodeNameError && !exact:
		return "allow"
	}
	return RCodeOutcome(a.RCode)
}

// ConnectTarget is where a lookup-then-connect probe connects: the answer's first address; or,
// when the lookup gave none, the outcome that ends the probe (dns-timeout, dns-unreachable, the
// rcode's, dns-nodata).
func ConnectTarget(a Answer, err error) (netip.Addr, string) {
	switch {
	case err != nil:
		if isRefused(err) {
			return netip.Addr{}, DNSUnreachable
		}
		return netip.Addr{}, DNSTimeout
	case a.RCode != dnsmessage.RCodeSuccess:
		return netip.Addr{}, RCodeOutcome(a.RCode)
	case len(a.Addrs) == 0:
		return netip.Addr{}, DNSNoData
	}
	return a.Addrs[0], ""
}

// isRefused says whether a query failed because nothing listens at the nameserver (an ICMP port
// unreachable for UDP, a reset for TCP).
func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// Note is a lookup's answer for a probe's note: the name asked, the rcode and the addresses.
func (a Answer) Note() string {
	return fmt.Sprintf("%s %s %v", a.Name, RCodeName(a.RCode), a.Addrs)
}
