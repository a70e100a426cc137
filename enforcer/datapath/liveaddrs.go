package datapath

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
)

// Conntrack flags (bpf/lib/conntrack.h) the liveness of a flow depends on.
const (
	ctSeenReply = 1
	ctClosing   = 2
	ctRevoked   = 4
)

// ctTimeout is conntrack.h's ct_timeout: how long an entry lives after its last packet.
func ctTimeout(proto uint8, flags uint32) time.Duration {
	if proto == 6 {
		switch {
		case flags&ctClosing != 0:
			return 10 * time.Second
		case flags&ctSeenReply != 0:
			return 6 * time.Hour
		}
	}
	return time.Minute
}

// LiveAddrs says which of addrs an open flow of a pod of this node still talks to: a conntrack
// entry, not revoked and not timed out, with the address at either end. What DNS taught the
// node is kept for such addresses past its TTL, so that open connections are not cut (Cilium
// #20650). It walks the whole conntrack map: call it when something is to be forgotten, not per
// packet.
func (d *Datapath) LiveAddrs(addrs map[netip.Addr]bool) (map[netip.Addr]bool, error) {
	live := map[netip.Addr]bool{}
	if len(addrs) == 0 {
		return live, nil
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("read the monotonic clock: %w", err)
	}
	now := uint64(ts.Nano())
	var k bpf.TcCtKey
	var v bpf.TcCtValue
	it := d.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		// A signed age, as the programs compare it (ct_live): an entry a program stamped after
		// this read of the clock is live, not ancient.
		if v.Flags&ctRevoked != 0 || int64(now-v.LastSeen) > int64(ctTimeout(k.Proto, v.Flags)) {
			continue
		}
		for _, raw := range [][16]uint8{k.Saddr, k.Daddr} {
			a := netip.AddrFrom16(raw)
			if k.Family == familyV4 {
				a = netip.AddrFrom4([4]byte(raw[:4]))
			}
			if addrs[a] {
				live[a] = true
			}
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("walk conntrack: %w", err)
	}
	return live, nil
}
