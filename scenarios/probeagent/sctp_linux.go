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
		return fmt.Errorf("raw sctp socket: %w", err)
	}
	defer syscall.Close(fd)
	if err := syscall.Sendto(fd, SCTPInitPacket(sport, dport, tag), 0, sa); err != nil {
		return fmt.Errorf("send sctp init: %w", err)
	}
	return nil
}

// RawSCTPSocket opens a raw SCTP socket of family (AF_INET or AF_INET6) in the calling thread's
// network namespace, for ReadSCTPInits. Its reads wake up every 200 ms, so that the reader
// notices when it is told to stop: closing a socket does not end a blocked read.
func RawSCTPSocket(family int) (int, error) {
	fd, err := syscall.Socket(family, syscall.SOCK_RAW, syscall.IPPROTO_SCTP)
	if err != nil {
		return -1, fmt.Errorf("raw sctp listener: %w", err)
	}
	tv := syscall.NsecToTimeval(int64(200 * time.Millisecond))
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("raw sctp listener: %w", err)
	}
	return fd, nil
}

// ReadSCTPInits reads the packets of a raw SCTP socket (RawSCTPSocket) and calls arrived with
// the initiate tag of each INIT, until stop says so or the socket fails; it closes fd.
func ReadSCTPInits(fd, family int, stop func() bool, arrived func(tag uint32)) {
	defer syscall.Close(fd)
	buf := make([]byte, 2048)
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if stop() {
			return
		}
		if err != nil {
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
				continue
			}
			return
		}
		b := buf[:n]
		if family == syscall.AF_INET { // IPv4 raw sockets deliver the IP header
			if len(b) < 20 || len(b) < int(b[0]&0x0f)*4 {
				continue
			}
			b = b[int(b[0]&0x0f)*4:]
		}
		if len(b) >= 20 && b[12] == 1 {
			arrived(binary.BigEndian.Uint32(b[16:]))
		}
	}
}

// sctpPorts numbers the source ports of the SCTP probes a process sends, in turn from a random
// start: no two probes in flight share one.
var sctpPorts atomic.Uint32

func init() { sctpPorts.Store(rand.Uint32()) }

// sctpProbe sends the request's INIT and reports it sent, with its tag.
func sctpProbe(r Request) Result {
	to, err := netip.ParseAddr(r.Host)
	if err != nil {
		return Result{ID: r.ID, Outcome: "error", Note: fmt.Sprintf("an SCTP probe goes to an address, not %q", r.Host)}
	}
	tag := rand.Uint32() | 1
	sport := uint16(30000 + sctpPorts.Add(1)%30000)
	if err := SendSCTPInit(to, sport, r.Port, tag); err != nil {
		o, note := classify(err)
		return Result{ID: r.ID, Outcome: o, Note: note}
	}
	return Result{ID: r.ID, Outcome: SCTPSent, Tag: tag,
		Note: fmt.Sprintf("INIT with initiate tag %#08x sent from port %d", tag, sport)}
}

// serveSCTP listens with raw SCTP sockets (IPv4 and IPv6) and answers questions on the unix
// socket at path until ctx ends. It returns once the sockets are open.
func serveSCTP(ctx context.Context, path string) error {
	a := newSCTPArrivals()
	var stopped atomic.Bool
	stop := stopped.Load
	for _, family := range []int{syscall.AF_INET, syscall.AF_INET6} {
		fd, err := RawSCTPSocket(family)
		if err != nil {
			stopped.Store(true)
			return err
		}
		go ReadSCTPInits(fd, family, stop, a.arrived)
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
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go answerSCTP(ctx, c, a)
		}
	}()
	return nil
}
