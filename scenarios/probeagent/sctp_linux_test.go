package probeagent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/internal/testenv"
)

// TestSCTPArrivals sends INITs on raw sockets in a network namespace of its own and asks the
// listener, as a cluster's SCTP probe does: the tag sent arrives, one never sent does not.
func TestSCTPArrivals(t *testing.T) {
	testenv.RequireRoot(t)
	n := testenv.NetNS(t)
	path := filepath.Join(t.TempDir(), "sctp.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := n.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		return serveSCTP(ctx, path)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")} {
		tag := uint32(0x5ca1ab1e) + uint32(to.BitLen())
		if err := n.Do(func(ns.NetNS) error { return SendSCTPInit(to, 40000, 5000, tag) }); err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
		sent := SCTPInit{Src: to, SPort: 40000, DPort: 5000, Tag: tag}
		other := func(f func(*SCTPInit)) SCTPInit { i := sent; f(&i); return i }
		ask := []SCTPInit{
			sent,
			other(func(i *SCTPInit) { i.Tag = 7 }), // never sent
			other(func(i *SCTPInit) { i.SPort = 40001 }), // the tag from another socket
			other(func(i *SCTPInit) { i.DPort = 5001 }),  // the tag to another port
			other(func(i *SCTPInit) { i.Src = netip.MustParseAddr("10.9.9.9") }),
		}
		got, err := AskSCTPArrivals(path, ask, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []bool{true, false, false, false, false}) {
			t.Errorf("to %s: arrived %v, want only the INIT sent, %+v", to, got, sent)
		}
	}
}

// TestSCTPArrivalsBounded: whoever sends INITs to a pod cannot grow what it remembers, and a
// caller of the question socket cannot make it wait or read without bound.
func TestSCTPArrivalsBounded(t *testing.T) {
	a := newSCTPArrivals()
	in := func(tag uint32) SCTPInit {
		return SCTPInit{Src: netip.MustParseAddr("10.0.0.1"), SPort: 1, DPort: 2, Tag: tag}
	}
	for tag := range uint32(maxArrivals + 10) {
		a.arrived(in(tag + 1))
	}
	if len(a.seen) != maxArrivals || len(a.ring) != maxArrivals {
		t.Fatalf("holds %d INITs (ring %d), want at most %d", len(a.seen), len(a.ring), maxArrivals)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, err := a.wait(ctx, []SCTPInit{in(1), in(maxArrivals + 10)})
	if err != nil || !slices.Equal(got, []bool{false, true}) {
		t.Errorf("after %d arrivals: %v %v, want the oldest forgotten and the newest kept", maxArrivals+10, got, err)
	}
	if len(a.waiting) != 0 {
		t.Errorf("%d waits left behind after the question ended", len(a.waiting))
	}
	a.failed(errors.New("socket gone"))
	if _, err := a.wait(context.Background(), []SCTPInit{in(1)}); err == nil {
		t.Error("a question after the reader stopped got an answer, not the reader's error")
	}

	path := filepath.Join(t.TempDir(), "q.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			answerSCTP(context.Background(), c, a)
		}
	}()
	inits := make([]SCTPInit, maxQuestionInits+1)
	_, err = AskSCTPArrivals(path, inits, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "at most 4096 INITs") {
		t.Errorf("a question of %d INITs: %v, want it refused", len(inits), err)
	}
}
