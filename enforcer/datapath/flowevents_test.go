package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// setEventRate writes the per-endpoint flow event rate to the settings map (0: no limit, which
// Options cannot ask for: there 0 means the default).
func setEventRate(t testing.TB, d *Datapath, rate uint64) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cfg.EventsPerSec = rate
	if err := d.objs.Settings.Put(uint32(0), d.cfg); err != nil {
		t.Fatalf("write settings: %v", err)
	}
}

func sumLost(t testing.TB, d *Datapath) uint64 {
	t.Helper()
	per, err := d.EventsLost()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// defaultDenied is the number of packets dropped by default deny so far: each makes one flow
// event, or one lost event.
func defaultDenied(t testing.TB, d *Datapath) uint64 {
	t.Helper()
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c[ReasonDropDefaultDeny].Packets
}

// TestEventsLostWhenRingFull fills the events ring buffer with no one reading: every event that
// did not fit is counted in events_lost, so that the events made (one per default-deny drop, as
// the counters say) are exactly those read afterwards plus those counted lost.
func TestEventsLostWhenRingFull(t *testing.T) {
	d := openTest(t, Options{})
	ifindex := testLink(t, fmt.Sprintf("npfl%d", os.Getpid()%100000))
	programA(t, d, compileYAML(t, unitCluster(), unitPolicies), ifindex)
	setEventRate(t, d, 0)
	frame := pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 1, dport: 80, syn: true}.build(t)
	if got := runProg(t, d.objs.TcToPod, ifindex, frame); got != tcShot {
		t.Fatalf("verdict %d, want a default-deny drop", got)
	}
	// Each record is the event and the ring buffer's 8-byte header: this many fit in 1 MiB.
	capacity := uint64(d.objs.Events.MaxEntries()) / uint64(8+flowEventSize)
	made0, lost0 := defaultDenied(t, d), sumLost(t, d)
	ctx := make([]uint32, 11)
	ctx[10] = uint32(ifindex)
	const runs = 30000 // well over the capacity
	if _, err := d.objs.TcToPod.Run(&ebpf.RunOptions{Data: frame, Context: ctx, Repeat: runs}); err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	made := defaultDenied(t, d) - made0 + 1 // and the one checked above
	lost := sumLost(t, d) - lost0
	// At least: a test run a signal interrupts is run again in full (cilium/ebpf retries on
	// EINTR), so the counters are what counts.
	if made < runs+1 {
		t.Fatalf("counters saw %d default-deny drops, want at least %d", made, runs+1)
	}
	fr, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	var read uint64
	for {
		f, err := fr.Read(time.Now().Add(300 * time.Millisecond))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("read after %d events: %v", read, err)
		}
		if f.Reason != ReasonDropDefaultDeny {
			t.Fatalf("event %d: %v, want a default-deny drop", read, f)
		}
		read++
	}
	if lost == 0 {
		t.Fatalf("%d events made, %d read, none counted lost", made, read)
	}
	if read+lost != made {
		t.Errorf("%d events made, %d read and %d counted lost: %d unaccounted", made, read, lost, int64(made)-int64(read+lost))
	}
	if read != capacity {
		t.Errorf("%d events read from a full ring buffer, want its capacity %d", read, capacity)
	}
	if n := fr.Lost(); n != 0 {
		t.Errorf("reader lost %d records", n)
	}
}

// TestDecodeFlowEvent: the field-by-field decoder reads what binary.Read reads, and refuses a
// record of another size instead of reading part of it.
func TestDecodeFlowEvent(t *testing.T) {
	want := bpf.TcFlowEvent{Timestamp: 0x0102030405060708, Ifindex: 9, EpId: 10, SrcIdentity: 11, DstIdentity: 12,
		RuleId: 13, Direction: 1, Verdict: 2, Reason: 3, Proto: 6, Family: 10, TcpFlags: 0x12, Pad: [2]uint8{15, 16},
		Sport: 0x1234, Dport: 0x5678, Service: 17, Pad2: 18}
	for i := range want.Saddr {
		want.Saddr[i], want.Daddr[i] = uint8(i+20), uint8(i+40)
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &want); err != nil {
		t.Fatal(err)
	}
	var got bpf.TcFlowEvent
	if err := decodeFlowEvent(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
	for _, n := range []int{0, flowEventSize - 8, flowEventSize + 8} {
		if err := decodeFlowEvent(make([]byte, n), &got); err == nil {
			t.Errorf("a %d-byte record decoded", n)
		}
	}
}

// TestEventsLostPinReplaced: events_lost holds only statistics. A pin set from before it existed
// gets it, and one whose layout differs from the programs' is replaced instead of stopping Open.
func TestEventsLostPinReplaced(t *testing.T) {
	d := openTest(t, Options{})
	dir := d.opts.PinPath
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "events_lost")
	if err := os.Remove(path); err != nil {
		t.Fatalf("remove events_lost pin: %v", err)
	}
	stale, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"absent", "another layout"} {
		if name == "another layout" {
			if err := stale.Pin(path); err != nil {
				t.Fatal(err)
			}
		}
		d2, err := Open(Options{PinPath: dir})
		if err != nil {
			t.Fatalf("%s events_lost pin: open: %v", name, err)
		}
		if _, err := d2.EventsLost(); err != nil {
			t.Errorf("%s events_lost pin: %v", name, err)
		}
		if err := d2.Close(); err != nil {
			t.Fatal(err)
		}
		if name == "absent" {
			if err := os.Remove(path); err != nil {
				t.Fatalf("%s events_lost pin: Open did not pin it: %v", name, err)
			}
		}
	}
	stale.Close()
	d3, err := Open(Options{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := d3.Teardown(); err != nil {
		t.Fatal(err)
	}
}

// TestL7EventsLostCounted: L7 events published while the reader does not keep up are dropped,
// and the reader's Lost counts them.
func TestL7EventsLostCounted(t *testing.T) {
	d := openTest(t, Options{})
	fr, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	for i := 0; i < l7Buffer+5; i++ {
		d.PublishL7(Flow{L7: &L7Flow{Method: "GET"}})
	}
	if n := fr.Lost(); n != 5 {
		t.Errorf("reader lost %d L7 events, want 5 (the buffer holds %d)", n, l7Buffer)
	}
}
