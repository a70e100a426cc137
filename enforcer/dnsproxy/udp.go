package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/netpact/netpact/enforcer/internal/tproxy"
	"github.com/netpact/netpact/policy"
)

// serveUDP reads the datagrams the datapath hands the listener, each with its original
// destination, until the listener is closed.
func (p *Proxy) serveUDP(l *net.UDPConn) {
	defer p.wg.Done()
	buf, oob := make([]byte, MaxQuerySize+1), make([]byte, tproxy.OOBSize)
	for {
		d, err := tproxy.ReadFrom(l, buf, oob)
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			continue
		}
		c := udpClient{l: l, src: d.Src, dst: d.Dst, replies: p.replies}
		if d.Truncated || d.N > MaxQuerySize {
			p.report(Query{Src: d.Src, Dst: d.Dst, Proto: policy.ProtoUDP, Rcode: NoAnswer, Verdict: policy.DNSVerdict{Index: -1},
				Refused: fmt.Sprintf("a datagram of more than %d bytes: not a DNS query, no answer", MaxQuerySize)})
			continue
		}
		p.take(d.Src, d.Dst, policy.ProtoUDP, slices.Clone(buf[:d.N]), nil, c)
	}
}

// udpClient is a pod's UDP address. Its replies go from the server's address it asked (it takes
// no other: a resolver's socket is connected to the server), by replies. Without the original
// destination, or in the tests' plain mode (no replies), they go out of the listener.
type udpClient struct {
	l        *net.UDPConn
	src, dst netip.AddrPort
	replies  *tproxy.Replier
}

func (u udpClient) reply(b []byte) error {
	if u.replies == nil || !u.dst.IsValid() {
		_, err := u.l.WriteToUDPAddrPort(b, u.src)
		return err
	}
	return u.replies.WriteFrom(u.dst, u.src, b)
}

func (udpClient) done() {}
