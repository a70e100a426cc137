// Package tproxy is what the node's transparent proxies (the L7 proxy and the DNS proxy) share,
// one place per step: the listeners the datapath hands a pod's flows to (bpf_sk_assign, the
// packets unchanged, so a socket sees the flow's original addresses), the upstream sockets that
// keep the pod's address, the UDP replies sent from the address the pod asked, and the budget
// that keeps one pod from holding all a proxy can.
package tproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Control sets IP_TRANSPARENT (IPV6_TRANSPARENT for tcp6 and udp6) and, when mark is not 0,
// SO_MARK: what a socket needs to take flows addressed elsewhere, or to use an address that is
// not the node's. It needs CAP_NET_ADMIN.
func Control(network string, c syscall.RawConn, mark uint32) error {
	return onFD(c, func(fd int) error { return setTransparent(fd, is6(network), mark) })
}

// onFD runs f on a socket's descriptor.
func onFD(c syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func setTransparent(fd int, v6 bool, mark uint32) error {
	var err error
	if v6 {
		err = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	} else {
		err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
	}
	if err == nil && mark != 0 {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}
	return err
}

func is6(network string) bool { return strings.HasSuffix(network, "6") }

// AddrPort is a TCP or UDP socket address, an IPv4-mapped address unmapped.
func AddrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Listeners are a proxy's sockets on 127.0.0.1 and ::1, all on one port.
type Listeners struct {
	Port uint16
	TCP  []net.Listener
	// UDP (when asked for) report each datagram's original destination: see ReadFrom.
	UDP []*net.UDPConn
}

// Close closes every socket.
func (l *Listeners) Close() error {
	var errs []error
	for _, s := range l.TCP {
		errs = append(errs, s.Close())
	}
	for _, s := range l.UDP {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// Listen opens TCP (and with udp, UDP) sockets on 127.0.0.1:port and [::1]:port for what (the
// proxy's name, for errors), with IP_TRANSPARENT unless plain (a proxy the datapath does not feed:
// tests without CAP_NET_ADMIN). Port 0 is one the kernel picks for the first, taken again for the
// others: when another socket holds it in their protocol or family, another is tried.
func Listen(what string, port uint16, udp, plain bool) (*Listeners, error) {
	var l *Listeners
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		l, err = listen(what, port, udp, plain)
		if err == nil || port != 0 {
			break
		}
	}
	return l, err
}

func listen(what string, port uint16, udp, plain bool) (_ *Listeners, err error) {
	l := &Listeners{Port: port}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	control := func(network, _ string, c syscall.RawConn) error {
		if plain {
			return nil
		}
		return Control(network, c, 0)
	}
	lc := net.ListenConfig{Control: control}
	// Plain TCP (Go listens with MPTCP where the kernel has it): the datapath's listener lookup
	// keeps these sockets in a sockmap, which takes TCP sockets only.
	lc.SetMultipathTCP(false)
	hint := ""
	if !plain {
		hint = " (IP_TRANSPARENT needs CAP_NET_ADMIN)"
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		s, err := lc.Listen(context.Background(), network, hostPort(network, l.Port))
		if err != nil {
			return nil, fmt.Errorf("listen for %s on %s%s: %w", what, hostPort(network, l.Port), hint, err)
		}
		l.TCP = append(l.TCP, s)
		l.Port = uint16(s.Addr().(*net.TCPAddr).Port)
	}
	if !udp {
		return l, nil
	}
	lc.Control = func(network, address string, c syscall.RawConn) error {
		if err := control(network, address, c); err != nil {
			return err
		}
		return recvOrigDst(network, c)
	}
	for _, network := range []string{"udp4", "udp6"} {
		s, err := lc.ListenPacket(context.Background(), network, hostPort(network, l.Port))
		if err != nil {
			return nil, fmt.Errorf("listen for %s on %s/udp%s: %w", what, hostPort(network, l.Port), hint, err)
		}
		l.UDP = append(l.UDP, s.(*net.UDPConn))
	}
	return l, nil
}

func hostPort(network string, port uint16) string {
	host := "127.0.0.1"
	if is6(network) {
		host = "::1"
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// Dial connects to dst over network ("tcp" or "udp"). With keepSource it does so from src, the
// pod's address (IP_TRANSPARENT, SO_MARK mark), so that the destination's datapath judges the
// pod; otherwise from the node's address, where the node masquerades (outside the cluster).
//
// A TCP socket takes src's address and leaves the choice of its port to connect
// (IP_BIND_ADDRESS_NO_PORT): bound to the pod's address with port 0, the kernel would pick a
// port no socket of that address holds, TIME_WAIT ones of every destination included, and a
// pod's connections through a proxy would run out of ports at about 470 a second; at connect, a
// port is only taken for that destination. A UDP socket keeps src's port too, as the pod's own
// would have (SO_REUSEADDR: one pod port may talk to several servers through the proxy at once).
func Dial(ctx context.Context, network string, src, dst netip.AddrPort, keepSource bool, mark uint32, timeout time.Duration) (net.Conn, error) {
	if dst.Addr().Is6() {
		network += "6"
	} else {
		network += "4"
	}
	d := net.Dialer{Timeout: timeout}
	from := "the node's address"
	if keepSource {
		from = src.String()
		udp := strings.HasPrefix(network, "udp")
		if udp {
			d.LocalAddr = net.UDPAddrFromAddrPort(src)
		} else {
			d.LocalAddr = &net.TCPAddr{IP: src.Addr().AsSlice()}
		}
		d.Control = func(network, _ string, c syscall.RawConn) error {
			return onFD(c, func(fd int) error {
				if err := setTransparent(fd, is6(network), mark); err != nil {
					return err
				}
				if udp {
					return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}
				return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
		}
	}
	c, err := d.DialContext(ctx, network, dst.String())
	if err != nil {
		return nil, fmt.Errorf("connect to %s from %s: %w", dst, from, err)
	}
	return c, nil
}

// Accept hands serve the connections a listener accepts until it is closed, or serve returns
// false. Other accept errors (a timeout, too many open files) are waited out, not the end.
func Accept(l net.Listener, serve func(net.Conn) bool) {
	for {
		c, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !serve(c) {
			return
		}
	}
}

// Reset closes a connection with a reset (no TIME_WAIT): a refusal the client sees at once.
func Reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}
