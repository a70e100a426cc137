//go:build linux

package probeagent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrRawSCTPSocket marks a failure to open a raw SCTP socket: nothing was sent or can be heard,
// which is an error of the probe, never a timeout (a container needs the NET_RAW capability).
var ErrRawSCTPSocket = errors.New("raw SCTP socket (the NET_RAW capability is needed)")

// SendSCTPInit sends an INIT to addr:dport from sport, on a raw socket of the calling thread's
// network namespace.
func SendSCTPInit(to netip.Addr, sport, dport uint16, tag uint32) error {
	to = to.Unmap()
	family := syscall.AF_INET6
	var sa syscall.Sockaddr = &syscall.SockaddrInet6{Addr: to.As16()}
	if to.Is4() {
		family, sa = syscall.AF_INET, &syscall.SockaddrInet4{Addr: to.As4()}
	}
	fd, err := syscall.Socket(family, syscall.SOCK_RAW, syscall.IPPROTO_SCTP)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRawSCTPSocket, err)
	}
	defer syscall.Close(fd)
	if err := syscall.Sendto(fd, SCTPInitPacket(sport, dport, tag), 0, sa); err != nil {
		return fmt.Errorf("send sctp init: %w", err)
	}
	return nil
}

// RawSCTPSocket opens a raw SCTP socket of family (AF_INET or AF_INET6) in the calling thread's
// network namespace, for ReadSCTPInits, with a receive buffer of 4 MiB where the host allows it.
// Its reads wake up every 200 ms, so that the reader notices when it is told to stop: closing a
// socket does not end a blocked read.
func RawSCTPSocket(family int) (int, error) {
	fd, err := syscall.Socket(family, syscall.SOCK_RAW, syscall.IPPROTO_SCTP)
	if err != nil {
		return -1, fmt.Errorf("%w: %w", ErrRawSCTPSocket, err)
	}
	_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<20)
	tv := syscall.NsecToTimeval(int64(200 * time.Millisecond))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("raw sctp listener: %w", err)
	}
	return fd, nil
}

// ReadSCTPInits reads the packets of a raw SCTP socket (RawSCTPSocket) and calls arrived with each
// INIT, until stop says so (nil) or the socket fails (its error); it closes fd.
func ReadSCTPInits(fd, family int, stop func() bool, arrived func(SCTPInit)) error {
	defer syscall.Close(fd)
	buf := make([]byte, 2048)
	for {
		n, from, err := syscall.Recvfrom(fd, buf, 0)
		if stop() {
			return nil
		}
		if err != nil {
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
				continue
			}
			return fmt.Errorf("read raw sctp socket: %w", err)
		}
		var src netip.Addr
		switch sa := from.(type) {
		case *syscall.SockaddrInet4:
			src = netip.AddrFrom4(sa.Addr)
		case *syscall.SockaddrInet6:
			src = netip.AddrFrom16(sa.Addr)
		}
		b := buf[:n]
		if family == syscall.AF_INET { // IPv4 raw sockets deliver the IP header
			if len(b) < 20 || len(b) < int(b[0]&0x0f)*4 {
				continue
			}
			b = b[int(b[0]&0x0f)*4:]
		}
		if len(b) >= 20 && b[12] == 1 {
			arrived(SCTPInit{Src: src, SPort: binary.BigEndian.Uint16(b[0:]), DPort: binary.BigEndian.Uint16(b[2:]),
				Tag: binary.BigEndian.Uint32(b[16:])})
		}
	}
}

// sctpPorts numbers the source ports of the SCTP probes a process sends, in turn from a random
// start: no two probes in flight share one.
var sctpPorts atomic.Uint32

func init() { sctpPorts.Store(rand.Uint32()) }

// sctpProbe sends the request's INIT and reports it sent, with its source port and tag.
func sctpProbe(r Request) Result {
	to, err := netip.ParseAddr(r.Host)
	if err != nil {
		return Result{ID: r.ID, Outcome: "error", Note: fmt.Sprintf("an SCTP probe goes to an address, not %q", r.Host)}
	}
	tag := rand.Uint32() | 1
	sport := uint16(30000 + sctpPorts.Add(1)%30000)
	if err := SendSCTPInit(to, sport, r.Port, tag); err != nil {
		if errors.Is(err, ErrRawSCTPSocket) {
			return Result{ID: r.ID, Outcome: "error", Note: err.Error()}
		}
		o, note := classify(err)
		return Result{ID: r.ID, Outcome: o, Note: note}
	}
	return Result{ID: r.ID, Outcome: SCTPSent, SPort: sport, Tag: tag,
		Note: fmt.Sprintf("INIT with initiate tag %#08x sent from port %d", tag, sport)}
}

// serveSCTP listens with raw SCTP sockets (IPv4, and IPv6 unless the host has none) and answers
// questions on the unix socket at path until ctx ends, at most maxQuestions at once. It returns
// once the sockets are open. When a reader stops on an error, questions get that error.
func serveSCTP(ctx context.Context, path string) error {
	a := newSCTPArrivals()
	var stopped atomic.Bool
	stop := stopped.Load
	for _, family := range []int{syscall.AF_INET, syscall.AF_INET6} {
		fd, err := RawSCTPSocket(family)
		if family == syscall.AF_INET6 && errors.Is(err, syscall.EAFNOSUPPORT) {
			continue // IPv6 disabled: IPv4 pods are still probed
		}
		if err != nil {
			stopped.Store(true)
			return err
		}
		go func() {
			if err := ReadSCTPInits(fd, family, stop, a.arrived); err != nil {
				a.failed(err)
			}
		}()
	}
	_ = os.Remove(path) // a socket a previous server left
	ln, err := net.Listen("unix", path)
	if err != nil {
		stopped.Store(true)
		return fmt.Errorf("sctp question socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		stopped.Store(true)
		ln.Close()
	}()
	go func() {
		sem := make(chan struct{}, maxQuestions)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				answerSCTP(ctx, c, a)
			}()
		}
	}()
	return nil
}
