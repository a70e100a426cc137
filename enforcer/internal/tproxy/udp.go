package tproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// recvOrigDst asks a UDP socket for each datagram's original destination (IP_RECVORIGDSTADDR):
// the datapath assigns the pod's datagram to the listener unchanged, still addressed to the
// server the pod asked.
func recvOrigDst(network string, c syscall.RawConn) error {
	return onFD(c, func(fd int) error {
		if is6(network) {
			return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, 1)
		}
		return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
	})
}

// OOBSize is the control buffer ReadFrom needs.
var OOBSize = unix.CmsgSpace(unix.SizeofSockaddrInet6)

// Datagram is what ReadFrom read: n bytes of the buffer, from Src to Dst, the original
// destination (invalid when the socket did not say), Truncated when the buffer was too small.
type Datagram struct {
	N         int
	Src, Dst  netip.AddrPort
	Truncated bool
}

// ReadFrom reads a datagram from a UDP socket of Listen into b, with its original destination;
// oob is a scratch buffer of OOBSize bytes.
func ReadFrom(c *net.UDPConn, b, oob []byte) (Datagram, error) {
	n, oobn, flags, src, err := c.ReadMsgUDPAddrPort(b, oob)
	if err != nil {
		return Datagram{}, err
	}
	d := Datagram{N: n, Src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), Truncated: flags&unix.MSG_TRUNC != 0}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return d, nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4:
			d.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), binary.BigEndian.Uint16(m.Data[2:4]))
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet6:
			a := netip.AddrFrom16([16]byte(m.Data[8:24])).Unmap()
			d.Dst = netip.AddrPortFrom(a, binary.BigEndian.Uint16(m.Data[2:4]))
		}
	}
	return d, nil
}

// Replier sends UDP datagrams to pods from the address and port they sent theirs to (a server's,
// which is not the node's): a pod's resolver takes answers from the server it asked only. It
// writes the UDP header itself on a raw socket per family (IP_TRANSPARENT, the source address in
// IP_PKTINFO / IPV6_PKTINFO), as Cilium's DNS proxy does: a UDP socket's IP_PKTINFO sets the
// source address but not the port, and a UDP socket bound to the server's address and port would
// fail where a socket of the node holds them (node-local-dns on 169.254.20.10:53).
type Replier struct {
	fd4, fd6 int
}

// NewReplier opens the raw sockets (CAP_NET_ADMIN and CAP_NET_RAW). Its datagrams carry mark
// (SO_MARK, the datapath's proxy mark: a pod takes an answer to a flow handed to the proxy only
// from the proxy).
func NewReplier(mark uint32) (_ *Replier, err error) {
	r := &Replier{fd4: -1, fd6: -1}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if r.fd4, err = rawUDP(unix.AF_INET, mark); err != nil {
		return nil, err
	}
	if r.fd6, err = rawUDP(unix.AF_INET6, mark); err != nil {
		return nil, err
	}
	return r, nil
}

// dropAll is a socket filter that takes nothing: a raw UDP socket would get a copy of every UDP
// datagram the node receives.
var dropAll = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}

func rawUDP(family int, mark uint32) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return -1, fmt.Errorf("raw UDP socket for replies (needs CAP_NET_RAW): %w", err)
	}
	err = unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &dropAll[0]})
	if err == nil {
		err = setTransparent(fd, family == unix.AF_INET6, mark)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("raw UDP socket for replies (IP_TRANSPARENT needs CAP_NET_ADMIN): %w", err)
	}
	return fd, nil
}

// Close closes the sockets.
func (r *Replier) Close() error {
	var errs []error
	for _, fd := range []int{r.fd4, r.fd6} {
		if fd >= 0 {
			errs = append(errs, unix.Close(fd))
		}
	}
	r.fd4, r.fd6 = -1, -1
	return errors.Join(errs...)
}

// WriteFrom sends b in a UDP datagram from from to to. When the socket's buffer is full, the
// datagram is dropped (an error), as the network may drop it.
func (r *Replier) WriteFrom(from, to netip.AddrPort, b []byte) error {
	if from.Addr().Is4() != to.Addr().Is4() {
		return fmt.Errorf("reply from %s to %s: the addresses are of different families", from, to)
	}
	if len(b) > 0xffff-8 {
		return fmt.Errorf("reply from %s to %s: %d bytes, more than a datagram holds", from, to, len(b))
	}
	d := make([]byte, 8, 8+len(b))
	binary.BigEndian.PutUint16(d[0:], from.Port())
	binary.BigEndian.PutUint16(d[2:], to.Port())
	binary.BigEndian.PutUint16(d[4:], uint16(8+len(b)))
	d = append(d, b...)
	binary.BigEndian.PutUint16(d[6:], udpChecksum(from.Addr(), to.Addr(), d))
	var fd int
	var oob []byte
	var sa unix.Sockaddr
	if from.Addr().Is4() {
		fd, oob, sa = r.fd4, unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: from.Addr().As4()}), &unix.SockaddrInet4{Addr: to.Addr().As4()}
	} else {
		fd, oob, sa = r.fd6, unix.PktInfo6(&unix.Inet6Pktinfo{Addr: from.Addr().As16()}), &unix.SockaddrInet6{Addr: to.Addr().As16()}
	}
	if err := unix.Sendmsg(fd, d, oob, sa, unix.MSG_DONTWAIT); err != nil {
		return fmt.Errorf("reply from %s to %s: %w", from, to, err)
	}
	return nil
}

// udpChecksum is the checksum of a UDP datagram (its checksum field 0) between two addresses:
// the one's complement sum over the pseudo-header and the datagram (RFC 768, RFC 8200 8.1).
func udpChecksum(src, dst netip.Addr, d []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint32(binary.BigEndian.Uint16(b))
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint32(b[0]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	sum += unix.IPPROTO_UDP + uint32(len(d))
	add(d)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	c := ^uint16(sum)
	if c == 0 {
		return 0xffff // 0 means no checksum
	}
	return c
}
