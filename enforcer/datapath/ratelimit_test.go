package datapath

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/policy"
)

// TestFlowEventsLimitedPerEndpoint: on one CPU, a pod that floods past the event rate holds back
// its own events only; the next pod's drop still makes an event, and the held-back events are
// counted for the pod that made them. Before, one bucket per CPU served every pod: the flood
// left none for the others.
func TestFlowEventsLimitedPerEndpoint(t *testing.T) {
	// prog.Run runs on the calling CPU: both pods' packets go through the same CPU's buckets.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var one unix.CPUSet
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	d := openTest(t, Options{EventsPerSecond: 5})
	st := compileYAML(t, unitCluster(), unitPolicies)
	a := programA(t, d, st, testLink(t, fmt.Sprintf("npla%d", os.Getpid()%100000)))
	bKey := policy.EndpointKey{Namespace: "app", Name: "b"}
	es, _ := st.Endpoint(bKey)
	ident, _ := st.Identity(bKey)
	b := Endpoint{Ifindex: testLink(t, fmt.Sprintf("nplb%d", os.Getpid()%100000)), Ifname: "b", ID: 2, Identity: ident.ID,
		IPv4: netip.MustParseAddr("10.0.0.2"), IPv6: netip.MustParseAddr("fd00::2")}
	if err := d.UpsertEndpoint(b, es); err != nil {
		t.Fatal(err)
	}
	flows, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	toA := pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 1, dport: 80, syn: true}.build(t)
	start := time.Now()
	for i := 0; i < 100; i++ {
		runProg(t, d.objs.TcToPod, a.Ifindex, toA)
	}
	// a's bucket: 5 at the start, and 5 a second while the loop ran (however slow the machine).
	bound := 5 * (1 + int(math.Ceil(time.Since(start).Seconds())))
	toB := pkt{src: "8.8.8.8", dst: "10.0.0.2", proto: policy.ProtoTCP, sport: 1, dport: 4444, syn: true}.build(t)
	runProg(t, d.objs.TcToPod, b.Ifindex, toB)
	fromA, fromB := 0, 0
	for {
		f, err := flows.Read(time.Now().Add(300 * time.Millisecond))
		if err != nil {
			break
		}
		switch f.Dst {
		case netip.MustParseAddr("10.0.0.1"):
			fromA++
		case netip.MustParseAddr("10.0.0.2"):
			fromB++
		}
	}
	if fromA == 0 || fromA > bound {
		t.Errorf("%d events for a's 100 drops at 5 per second (at most %d)", fromA, bound)
	}
	if fromB != 1 {
		t.Errorf("%d events for b's one drop after a's flood, want 1: a's flood held back b's events", fromB)
	}
	limited, err := d.EventsLimited()
	if err != nil {
		t.Fatal(err)
	}
	if int(limited[a.ID]) != 100-fromA || limited[b.ID] != 0 {
		t.Errorf("held back: a %d, b %d; want a %d (its drops without an event) and b 0 (%v)", limited[a.ID], limited[b.ID], 100-fromA, limited)
	}
}
