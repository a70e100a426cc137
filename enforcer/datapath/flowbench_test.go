package datapath

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// flowRun is one measurement of the flow event path at one offered rate.
type flowRun struct {
	made, read, lost, limited, readerLost uint64
	elapsed                               time.Duration // from the first packet to the last event read
	cpu                                   time.Duration // user+sys of the process
}

// flowSink is the benchmark's consumer for now: it counts the events and keeps the last ones
// in a bounded ring, as the node's flow log does. The node's pipeline (Hubble conversion,
// ring, metrics) can be passed to measureFlowEvents instead.
type flowSink struct {
	ring []Flow
	next int
	n    uint64
}

func (s *flowSink) consume(f Flow) {
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, f)
	} else {
		s.ring[s.next] = f
	}
	s.next = (s.next + 1) % cap(s.ring)
	s.n++
}

// flowBench is a datapath with pod a programmed and a frame that default deny drops: each run
// of the program on it makes one flow event (or one counted loss, or one event the rate limit
// held back).
type flowBench struct {
	d       *Datapath
	fr      *FlowReader
	ifindex int
	frame   []byte
}

func newFlowBench(b *testing.B) *flowBench {
	d := openTest(b, Options{})
	ifindex := testLink(b, fmt.Sprintf("npfb%d", os.Getpid()%100000))
	programA(b, d, compileYAML(b, unitCluster(), unitPolicies), ifindex)
	frame := pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 41002, dport: 80, syn: true}.build(b)
	if got := runProg(b, d.objs.TcToPod, ifindex, frame); got != tcShot {
		b.Fatalf("verdict %d, want a default-deny drop: the benchmark would time another case", got)
	}
	fr, err := d.Flows()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fr.Close() })
	return &flowBench{d: d, fr: fr, ifindex: ifindex, frame: frame}
}

// produce runs the program on the frame at rate runs per second (0: as fast as it goes) for
// dur, in batches of test runs paced against the clock, and returns the runs made.
func (fb *flowBench) produce(rate float64, dur time.Duration) (uint64, error) {
	// prog.Run runs on the calling thread's CPU; one thread keeps the producer on one CPU at a time.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ctx := make([]uint32, 11)
	ctx[10] = uint32(fb.ifindex)
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
		if _, err := fb.d.objs.TcToPod.Run(&ebpf.RunOptions{Data: fb.frame, Context: ctx, Repeat: uint32(n)}); err != nil {
			return done, fmt.Errorf("prog.Run: %w", err)
		}
		done += n
	}
}

// drain reads and discards what earlier runs left in the ring buffer.
func (fb *flowBench) drain() error {
	for {
		_, err := fb.fr.Read(time.Now().Add(100 * time.Millisecond))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("drain: %w", err)
		}
	}
}

// flowIdle is how long the reader waits for more events once the producer stopped.
const flowIdle = 200 * time.Millisecond

// measureFlowEvents offers flow events at rate per second (0: flat out) for dur while a reader
// goroutine hands each event read to consume, and returns what was made, read, lost and limited,
// and the process's CPU time. Every event made must be read or counted (lost or held back by
// the rate limit): anything else is an error, as is reading nothing.
func measureFlowEvents(fb *flowBench, rate float64, dur time.Duration, consume func(Flow)) (flowRun, error) {
	var r flowRun
	if err := fb.drain(); err != nil {
		return r, err
	}
	c, err := fb.d.Counters()
	if err != nil {
		return r, err
	}
	made0 := c[ReasonDropDefaultDeny].Packets
	lost0, err := totalLost(fb.d)
	if err != nil {
		return r, err
	}
	limited0, err := totalLimited(fb.d)
	if err != nil {
		return r, err
	}
	readerLost0 := fb.fr.Lost()

	var producerDone sync.WaitGroup
	producerDone.Add(1)
	stopped := make(chan struct{})
	var read uint64
	var last time.Time
	var readErr error
	readerDone := make(chan struct{})
	cpu0, err := rusageCPU()
	if err != nil {
		return r, err
	}
	start := time.Now()
	go func() {
		defer close(readerDone)
		for {
			f, err := fb.fr.Read(time.Now().Add(flowIdle))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				select {
				case <-stopped:
					return
				default:
					continue
				}
			}
			if err != nil {
				readErr = err
				return
			}
			consume(f)
			read++
			last = time.Now()
		}
	}()
	var runs uint64
	var prodErr error
	go func() {
		defer producerDone.Done()
		runs, prodErr = fb.produce(rate, dur)
	}()
	producerDone.Wait()
	close(stopped)
	<-readerDone
	cpu1, err := rusageCPU()
	if err != nil {
		return r, err
	}
	if prodErr != nil {
		return r, prodErr
	}
	if readErr != nil {
		return r, fmt.Errorf("read after %d events: %w", read, readErr)
	}
	r.cpu = cpu1 - cpu0
	r.read = read
	r.elapsed = last.Sub(start)
	if c, err = fb.d.Counters(); err != nil {
		return r, err
	}
	r.made = c[ReasonDropDefaultDeny].Packets - made0
	lost, err := totalLost(fb.d)
	if err != nil {
		return r, err
	}
	limited, err := totalLimited(fb.d)
	if err != nil {
		return r, err
	}
	r.lost, r.limited, r.readerLost = lost-lost0, limited-limited0, fb.fr.Lost()-readerLost0
	switch {
	case r.read == 0:
		return r, fmt.Errorf("no flow event read (%d made, %d lost, %d limited)", r.made, r.lost, r.limited)
	case r.made < runs:
		// More is fine: a test run a signal interrupts is run again in full (cilium/ebpf retries
		// on EINTR), so the counters, not the runs asked for, are the events made.
		return r, fmt.Errorf("counters saw %d default-deny drops for %d program runs", r.made, runs)
	case r.read+r.lost+r.limited+r.readerLost != r.made:
		return r, fmt.Errorf("%d events made, %d read, %d lost, %d limited, %d lost by the reader: %d unaccounted",
			r.made, r.read, r.lost, r.limited, r.readerLost, int64(r.made)-int64(r.read+r.lost+r.limited+r.readerLost))
	}
	return r, nil
}

func totalLost(d *Datapath) (uint64, error) {
	per, err := d.EventsLost()
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, err
}

func totalLimited(d *Datapath) (uint64, error) {
	per, err := d.EventsLimited()
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, err
}

// rusageCPU is the user and system CPU time of the whole process so far.
func rusageCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// BenchmarkFlowEvents measures the flow events per second the node reads, the events lost
// (counted by the datapath when the ring buffer is full, and by the reader), and the CPU they
// cost, at offered rates of 10k, 50k and 200k events per second and flat out. The tc program
// runs in the kernel with BPF_PROG_TEST_RUN on a frame that default deny drops, each run making
// one event, while a reader goroutine reads them through FlowReader and hands each to a
// consumer (the node's pipeline can take the flowSink's place). The per-endpoint rate limit is
// off for these runs; the default-limit runs show what the default limit of 10,000 per second
// per endpoint and CPU does at 50k/s and flat out.
//
// CPU is getrusage(RUSAGE_SELF) user+sys over a run, per 1,000 events read; the producer's own
// share is measured in the same rounds by the same producer at the same rate with events held
// back by a limit of 1 per second and no reader, and subtracted per program run: what is left is
// what the events cost (the kernel's reserve, submit and wakeup, the reader and the consumer).
// Run it with -benchtime 1x: at least 5 rounds interleaving the rates, each rate's min, median
// and max printed, the medians reported. A run that reads nothing, or in which an event is
// neither read nor counted, fails the benchmark.
func BenchmarkFlowEvents(b *testing.B) {
	fb := newFlowBench(b)
	const dur = time.Second
	type config struct {
		name  string
		rate  float64 // offered events per second, 0: flat out
		limit uint64  // events_per_sec in the settings map, 0: no limit (10,000: Open's default)
	}
	configs := []config{
		{name: "10k", rate: 10000},
		{name: "50k", rate: 50000},
		{name: "200k", rate: 200000},
		{name: "flat-out"},
		{name: "default-limit-50k", rate: 50000, limit: 10000},
		{name: "default-limit-flat-out", limit: 10000},
	}
	type sample struct{ offered, readRate, lost, limited, cpuPer1k, prodPer1kRuns, eventPer1k []float64 }
	samples := make([]sample, len(configs))
	rounds := max(5, b.N)
	sink := &flowSink{ring: make([]Flow, 0, 4096)}
	for round := 0; round < rounds; round++ {
		for i, cfg := range configs {
			// The producer alone: the same runs with events held back, no one reading.
			setEventRate(b, fb.d, 1)
			runs0 := defaultDenied(b, fb.d)
			cpu0, err := rusageCPU()
			if err != nil {
				b.Fatal(err)
			}
			if _, err := fb.produce(cfg.rate, dur); err != nil {
				b.Fatal(err)
			}
			cpu1, err := rusageCPU()
			if err != nil {
				b.Fatal(err)
			}
			runs := defaultDenied(b, fb.d) - runs0
			if runs == 0 {
				b.Fatal("producer alone: no program run")
			}
			prodPerRun := float64(cpu1-cpu0) / float64(runs) // ns
			// Clear the per-endpoint buckets, so that a limited run starts as a fresh endpoint's.
			if err := clearRatelimit(fb.d); err != nil {
				b.Fatal(err)
			}
			setEventRate(b, fb.d, cfg.limit)
			r, err := measureFlowEvents(fb, cfg.rate, dur, sink.consume)
			if err != nil {
				b.Fatalf("%s: %v", cfg.name, err)
			}
			s := &samples[i]
			s.offered = append(s.offered, float64(r.made)/dur.Seconds())
			s.readRate = append(s.readRate, float64(r.read)/r.elapsed.Seconds())
			s.lost = append(s.lost, float64(r.lost+r.readerLost))
			s.limited = append(s.limited, float64(r.limited))
			s.cpuPer1k = append(s.cpuPer1k, 1000*r.cpu.Seconds()*1000/float64(r.read))
			s.prodPer1kRuns = append(s.prodPer1kRuns, prodPerRun*1000/1e6)
			s.eventPer1k = append(s.eventPer1k, (float64(r.cpu)-prodPerRun*float64(r.made))*1000/float64(r.read)/1e6)
		}
	}
	if sink.n == 0 {
		b.Fatal("the consumer got no event")
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("BenchmarkFlowEvents: %d rounds of %s per rate, %d CPUs; min / median / max\n", rounds, dur, ncpu)
	for i, cfg := range configs {
		s := samples[i]
		for _, m := range []struct {
			name string
			xs   []float64
		}{{"offered-events/s", s.offered}, {"read-events/s", s.readRate}, {"lost", s.lost}, {"limited", s.limited},
			{"cpu-ms/1k-events", s.cpuPer1k}, {"producer-cpu-ms/1k-runs", s.prodPer1kRuns}, {"event-cpu-ms/1k-events", s.eventPer1k}} {
			fmt.Printf("  %-24s %-24s %s\n", cfg.name, m.name, spread(m.xs))
		}
		b.Run(cfg.name, func(b *testing.B) {
			b.ReportMetric(median(s.offered), "offered-events/s")
			b.ReportMetric(median(s.readRate), "events/s")
			b.ReportMetric(median(s.lost), "lost")
			b.ReportMetric(median(s.limited), "limited")
			b.ReportMetric(median(s.cpuPer1k), "cpu-ms/1k-events")
			b.ReportMetric(median(s.eventPer1k), "event-cpu-ms/1k-events")
		})
	}
}

// clearRatelimit empties the per-endpoint event buckets.
func clearRatelimit(d *Datapath) error {
	var keys []uint32
	var k uint32
	var v []bpf.TcRatelimit
	it := d.objs.EventRatelimit.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list event_ratelimit: %w", err)
	}
	for _, k := range keys {
		if err := d.objs.EventRatelimit.Delete(k); err != nil {
			return fmt.Errorf("clear event_ratelimit: %w", err)
		}
	}
	return nil
}
