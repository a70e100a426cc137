package datapath

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// TestLiveAddrsAgeIsSigned: an entry a program stamped after LiveAddrs read the clock (here, a
// second ahead) is a live flow, not one that timed out 2^64 ns ago; one stamped past its timeout
// is not live.
func TestLiveAddrsAgeIsSigned(t *testing.T) {
	d, _, ep := unitSetup(t, unitPolicies)
	if v := runProg(t, d.objs.TcFromPod, ep.Ifindex, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: policy.ProtoTCP,
		sport: 42000, dport: 443, syn: true}.build(t)); v != tcOK {
		t.Fatalf("SYN: %d", v)
	}
	peer := netip.MustParseAddr("10.0.0.2")
	stamp := func(shift time.Duration) {
		t.Helper()
		var k bpf.TcCtKey
		var v bpf.TcCtValue
		var keys []bpf.TcCtKey
		var vals []bpf.TcCtValue
		for it := d.objs.Conntrack.Iterate(); it.Next(&k, &v); {
			keys, vals = append(keys, k), append(vals, v)
		}
		if len(keys) == 0 {
			t.Fatal("the SYN left no conntrack entry")
		}
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
			t.Fatal(err)
		}
		now := uint64(ts.Nano())
		for i := range keys {
			vals[i].LastSeen = uint64(int64(now) + int64(shift))
			if err := d.objs.Conntrack.Put(keys[i], vals[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	stamp(time.Second)
	live, err := d.LiveAddrs(map[netip.Addr]bool{peer: true})
	if err != nil {
		t.Fatal(err)
	}
	if !live[peer] {
		t.Error("a flow stamped a second after the clock was read is not live")
	}
	stamp(-time.Hour)
	if live, err = d.LiveAddrs(map[netip.Addr]bool{peer: true}); err != nil || live[peer] {
		t.Errorf("a flow last seen an hour ago is live (%v)", err)
	}
}
