// Package datapathtest is what benchmarks of the flow event path share, in package datapath and
// in the packages above it (the node's pipeline in package enforcer): a datapath opened in a pin
// directory of its own, a host veth, a frame, a producer that runs tc_to_pod on the frame at an
// offered rate with BPF_PROG_TEST_RUN, and the accounting of every event it made (read, lost,
// held back by the rate limit) with the CPU it cost. Only tests import it.
//
// The producer reaches the program and the maps it needs (settings, event_ratelimit) through the
// datapath's pin directory rather than through methods of Datapath: the pins are already the
// datapath's contract with the next process (Open adopts them), so the benchmarks need no
// test-only API on the production type.
package datapathtest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/internal/testenv"
)

// Open opens a datapath pinned in a directory of its own, torn down when the test ends, and
// returns it with that directory.
func Open(tb testing.TB, opts datapath.Options) (*datapath.Datapath, string) {
	tb.Helper()
	testenv.RequireBPF(tb)
	if opts.PinPath == "" {
		name := strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
				return r
			}
			return '_'
		}, tb.Name())
		opts.PinPath = filepath.Join(datapath.DefaultPinPath+"-test", fmt.Sprintf("%s-%d", name, os.Getpid()))
	}
	os.RemoveAll(opts.PinPath)
	d, err := datapath.Open(opts)
	if err != nil {
		tb.Fatalf("open datapath: %v", err)
	}
	tb.Cleanup(func() {
		if err := d.Teardown(); err != nil {
			tb.Errorf("teardown: %v", err)
		}
	})
	return d, opts.PinPath
}

// Link creates a veth pair in this network namespace and removes it when the test ends, and
// returns the index of name: a test run of a tc program must name a real device.
func Link(tb testing.TB, name string) int {
	tb.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	netlink.LinkDel(veth)
	if err := netlink.LinkAdd(veth); err != nil {
		tb.Fatalf("create veth %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		tb.Fatalf("veth %s: %v", name, err)
	}
	tb.Cleanup(func() { netlink.LinkDel(l) })
	return l.Attrs().Index
}

// SYN is an Ethernet frame of a TCP SYN from src to dst (IPv4 or IPv6).
func SYN(tb testing.TB, src, dst netip.AddrPort) []byte {
	tb.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), SYN: true, Window: 1000}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		v4 := &layers.IPv4{Version: 4, TTL: 64, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), Protocol: layers.IPProtocolTCP}
		tcp.SetNetworkLayerForChecksum(v4)
		ip = v4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(), NextHeader: layers.IPProtocolTCP}
		tcp.SetNetworkLayerForChecksum(v6)
		ip = v6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		tb.Fatalf("build frame: %v", err)
	}
	return buf.Bytes()
}

// Producer makes flow events: each run of tc_to_pod on its frame, as if it arrived on its
// device, is a default-deny drop and one event (or one counted loss, or one event the rate limit
// held back).
type Producer struct {
	d         *datapath.Datapath
	prog      *ebpf.Program
	settings  *ebpf.Map
	ratelimit *ebpf.Map
	ctx       []uint32
	frame     []byte
}

// NewProducer opens tc_to_pod and the maps it needs from the pin directory of d and checks that
// one run on frame is a default-deny drop: the benchmark would time another case.
func NewProducer(tb testing.TB, d *datapath.Datapath, pinPath string, ifindex int, frame []byte) *Producer {
	tb.Helper()
	p := &Producer{d: d, frame: frame}
	var err error
	if p.prog, err = ebpf.LoadPinnedProgram(filepath.Join(pinPath, "progs", "tc_to_pod"), nil); err != nil {
		tb.Fatalf("pinned tc_to_pod: %v", err)
	}
	tb.Cleanup(func() { p.prog.Close() })
	for name, m := range map[string]**ebpf.Map{"settings": &p.settings, "event_ratelimit": &p.ratelimit} {
		if *m, err = ebpf.LoadPinnedMap(filepath.Join(pinPath, name), nil); err != nil {
			tb.Fatalf("pinned %s: %v", name, err)
		}
		mp := *m
		tb.Cleanup(func() { mp.Close() })
	}
	// __sk_buff up to and including ifindex; the kernel wants the other fields zero.
	p.ctx = make([]uint32, 11)
	p.ctx[10] = uint32(ifindex)
	made0, err := p.made()
	if err != nil {
		tb.Fatal(err)
	}
	ret, err := p.prog.Run(&ebpf.RunOptions{Data: frame, Context: p.ctx})
	if err != nil {
		tb.Fatalf("prog.Run: %v", err)
	}
	made1, err := p.made()
	if err != nil {
		tb.Fatal(err)
	}
	if ret != 2 || made1 == made0 { // TC_ACT_SHOT
		tb.Fatalf("verdict %d, %d default-deny drops: want one default-deny drop", ret, made1-made0)
	}
	return p
}

// SetEventRate writes the per-endpoint flow event limit (0: none, which datapath.Options cannot
// ask for) and empties the endpoints' buckets, so that a limited run starts as a fresh
// endpoint's. It writes the settings map behind the Datapath's back: the Datapath writes its own
// limit again at its next policy change, which the benchmarks do not make while they measure.
func (p *Producer) SetEventRate(perSec uint64) error {
	var cfg bpf.TcConfig
	if err := p.settings.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("read settings: %w", err)
	}
	cfg.EventsPerSec = perSec
	if err := p.settings.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	var keys []uint32
	var k uint32
	var v []bpf.TcRatelimit
	it := p.ratelimit.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list event_ratelimit: %w", err)
	}
	for _, k := range keys {
		if err := p.ratelimit.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear event_ratelimit: %w", err)
		}
	}
	return nil
}

// made is the number of default-deny drops so far: each made one event (or a counted loss).
func (p *Producer) made() (uint64, error) {
	c, err := p.d.Counters()
	if err != nil {
		return 0, err
	}
	return c[datapath.ReasonDropDefaultDeny].Packets, nil
}

// Produce runs the program on the frame at rate runs per second (0: as fast as it goes) for dur,
// in batches of test runs paced against the clock, and returns the runs made.
func (p *Producer) Produce(rate float64, dur time.Duration) (uint64, error) {
	// prog.Run runs on the calling thread's CPU; one thread keeps the producer on one CPU at a time.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const maxBatch = 256 // a flat-out batch: short enough for the reader to run alongside
	var done uint64
	start := time.Now()
	for {
		el := time.Since(start)
		if el >= dur {
			return done, nil
		}
		n := uint64(maxBatch)
		if rate > 0 {
			want := uint64(rate * el.Seconds())
			if want <= done {
				time.Sleep(100 * time.Microsecond)
				continue
			}
			n = min(want-done, maxBatch)
		}
		if _, err := p.prog.Run(&ebpf.RunOptions{Data: p.frame, Context: p.ctx, Repeat: uint32(n)}); err != nil {
			return done, fmt.Errorf("prog.Run: %w", err)
		}
		done += n
	}
}

// ProducerCost is the CPU one program run costs the process on its own: the same runs at the
// same rate with every event held back by a limit of 1 a second, so that nothing reaches the
// reader (which idles meanwhile). It leaves the limit at 1.
func (p *Producer) ProducerCost(rate float64, dur time.Duration) (time.Duration, error) {
	if err := p.SetEventRate(1); err != nil {
		return 0, err
	}
	runs0, err := p.made()
	if err != nil {
		return 0, err
	}
	cpu0, err := CPU()
	if err != nil {
		return 0, err
	}
	if _, err := p.Produce(rate, dur); err != nil {
		return 0, err
	}
	cpu1, err := CPU()
	if err != nil {
		return 0, err
	}
	runs1, err := p.made()
	if err != nil {
		return 0, err
	}
	if runs1 == runs0 {
		return 0, errors.New("producer alone: no program run")
	}
	return (cpu1 - cpu0) / time.Duration(runs1-runs0), nil
}

// Reader is the reading side under measurement: it reads the events all along and hands each
// to its consumers.
type Reader interface {
	// Handed is how many events were handed to the consumers so far, and when the last was.
	Handed() (uint64, time.Time)
	// Lost is how many events the reader lost (after the datapath wrote them) so far.
	Lost() uint64
	// Sync waits until every event written before the call was handed on; false when that did
	// not happen within timeout.
	Sync(timeout time.Duration) bool
}

// Run is one measurement of the flow event path at one offered rate.
type Run struct {
	Made, Read, Lost, Limited, ReaderLost uint64
	Elapsed                               time.Duration // from the first run to the last event handed on
	CPU                                   time.Duration // user+sys of the process
}

// ReadRate is the events handed on per second.
func (r Run) ReadRate() float64 { return float64(r.Read) / r.Elapsed.Seconds() }

// CPUPer1k is the CPU in ms per 1,000 events handed on; less producerPerRun for each run made,
// what the events themselves cost.
func (r Run) CPUPer1k(producerPerRun time.Duration) float64 {
	return (r.CPU - producerPerRun*time.Duration(r.Made)).Seconds() * 1000 * 1000 / float64(r.Read)
}

// syncTimeout bounds the wait for a reader to catch up once the producer stopped: the ring
// buffer holds about 12,000 events, which a reader that is alive reads well within it.
const syncTimeout = 10 * time.Second

// Measure offers events at rate per second (0: flat out) for dur while rd reads them, and
// returns what was made, read, lost and limited, and the process's CPU time. Every event made
// must be read or counted (lost or held back by the rate limit): anything else is an error, as
// is reading nothing.
func (p *Producer) Measure(rate float64, dur time.Duration, rd Reader) (Run, error) {
	var r Run
	// What earlier runs left is read before the counters are taken.
	if !rd.Sync(syncTimeout) {
		return r, errors.New("the reader did not catch up with earlier runs")
	}
	made0, err := p.made()
	if err != nil {
		return r, err
	}
	lost0, limited0, err := lostLimited(p.d)
	if err != nil {
		return r, err
	}
	read0, _ := rd.Handed()
	readerLost0 := rd.Lost()
	cpu0, err := CPU()
	if err != nil {
		return r, err
	}
	start := time.Now()
	runs, err := p.Produce(rate, dur)
	if err != nil {
		return r, err
	}
	synced := rd.Sync(syncTimeout)
	cpu1, err := CPU()
	if err != nil {
		return r, err
	}
	read1, last := rd.Handed()
	made1, err := p.made()
	if err != nil {
		return r, err
	}
	lost1, limited1, err := lostLimited(p.d)
	if err != nil {
		return r, err
	}
	r = Run{Made: made1 - made0, Read: read1 - read0, Lost: lost1 - lost0, Limited: limited1 - limited0,
		ReaderLost: rd.Lost() - readerLost0, Elapsed: last.Sub(start), CPU: cpu1 - cpu0}
	switch {
	case !synced:
		return r, fmt.Errorf("the reader did not catch up within %s of the producer's end (%d made, %d read)", syncTimeout, r.Made, r.Read)
	case r.Read == 0:
		return r, fmt.Errorf("no flow event read (%d made, %d lost, %d limited)", r.Made, r.Lost, r.Limited)
	case r.Made < runs:
		// More is fine: a test run a signal interrupts is run again in full (cilium/ebpf retries
		// on EINTR), so the counters, not the runs asked for, are the events made.
		return r, fmt.Errorf("counters saw %d default-deny drops for %d program runs", r.Made, runs)
	case r.Read+r.Lost+r.Limited+r.ReaderLost != r.Made:
		return r, fmt.Errorf("%d events made, %d read, %d lost, %d limited, %d lost by the reader: %d unaccounted",
			r.Made, r.Read, r.Lost, r.Limited, r.ReaderLost, int64(r.Made)-int64(r.Read+r.Lost+r.Limited+r.ReaderLost))
	}
	return r, nil
}

func lostLimited(d *datapath.Datapath) (lost, limited uint64, err error) {
	perCPU, err := d.EventsLost()
	if err != nil {
		return 0, 0, err
	}
	for _, v := range perCPU {
		lost += v
	}
	perEndpoint, err := d.EventsLimited()
	if err != nil {
		return 0, 0, err
	}
	for _, v := range perEndpoint {
		limited += v
	}
	return lost, limited, nil
}

// CPU is the user and system CPU time of the whole process so far.
func CPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// RawReader reads a FlowReader on a goroutine of its own and hands each event to one consumer:
// the baseline the node's pipeline is measured against.
type RawReader struct {
	fr      *datapath.FlowReader
	consume func(datapath.Flow)
	// mu is held from the read of an event until the consumer has it, so that Sync can tell
	// when nothing is in flight.
	mu     sync.Mutex
	handed atomic.Uint64
	last   atomic.Int64 // unix ns
	err    atomic.Pointer[error]
	done   chan struct{}
}

// NewRawReader starts reading fr; Close stops it.
func NewRawReader(fr *datapath.FlowReader, consume func(datapath.Flow)) *RawReader {
	r := &RawReader{fr: fr, consume: consume, done: make(chan struct{})}
	go r.run()
	return r
}

// Close closes the flow reader and waits for the goroutine.
func (r *RawReader) Close() error {
	err := r.fr.Close()
	<-r.done
	return err
}

// rawPoll bounds how long the reader holds mu while it waits for an event.
const rawPoll = 20 * time.Millisecond

func (r *RawReader) run() {
	defer close(r.done)
	for {
		r.mu.Lock()
		f, err := r.fr.Read(time.Now().Add(rawPoll))
		if err == nil {
			r.consume(f)
			r.handed.Add(1)
			r.last.Store(time.Now().UnixNano())
		}
		r.mu.Unlock()
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, datapath.ErrClosed):
			return
		default:
			r.err.Store(&err)
			return
		}
	}
}

// Handed implements Reader.
func (r *RawReader) Handed() (uint64, time.Time) {
	return r.handed.Load(), time.Unix(0, r.last.Load())
}

// Lost implements Reader.
func (r *RawReader) Lost() uint64 { return r.fr.Lost() }

// Sync implements Reader; false too when the reader stopped on an error (Err says which).
func (r *RawReader) Sync(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-r.done:
			return false
		default:
		}
		r.mu.Lock()
		pending := r.fr.Pending()
		r.mu.Unlock()
		if pending == 0 {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// Err is the error the reader stopped on, if any.
func (r *RawReader) Err() error {
	if p := r.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Sink is a consumer that counts the events and keeps the last ones in a bounded ring, as a
// flow log does.
type Sink struct {
	ring []datapath.Flow
	next int
	N    uint64
}

// NewSink keeps the last n events.
func NewSink(n int) *Sink { return &Sink{ring: make([]datapath.Flow, 0, n)} }

// Consume keeps f.
func (s *Sink) Consume(f datapath.Flow) {
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, f)
	} else {
		s.ring[s.next] = f
	}
	s.next = (s.next + 1) % cap(s.ring)
	s.N++
}
