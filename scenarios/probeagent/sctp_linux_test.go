package probeagent

import (
	"context"
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
		got, err := AskSCTPArrivals(path, []uint32{tag, 7}, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []uint32{tag}) {
			t.Errorf("to %s: arrived %v, want only the tag sent, %#x", to, got, tag)
		}
	}
}

// TestSCTPArrivalsBounded: whoever sends INITs to a pod cannot grow what it remembers, and a
// caller of the question socket cannot make it wait or read without bound.
func TestSCTPArrivalsBounded(t *testing.T) {
	a := newSCTPArrivals()
	for tag := range uint32(maxArrivals + 10) {
		a.arrived(tag + 1)
	}
	if len(a.seen) != maxArrivals || len(a.ring) != maxArrivals {
		t.Fatalf("holds %d tags (ring %d), want at most %d", len(a.seen), len(a.ring), maxArrivals)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := a.wait(ctx, []uint32{1, maxArrivals + 10}); !slices.Equal(got, []uint32{maxArrivals + 10}) {
		t.Errorf("after %d arrivals: %v remembered, want the oldest forgotten and the newest kept", maxArrivals+10, got)
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
	tags := make([]uint32, maxQuestionTags+1)
	_, err = AskSCTPArrivals(path, tags, time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "at most 4096 tags") {
		t.Errorf("a question of %d tags: %v, want it refused", len(tags), err)
	}
}
