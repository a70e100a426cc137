package testenv

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Median is the middle of a benchmark's measurements (the upper one of an even count).
func Median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// Spread renders measurements as "min / median / max", as the benchmarks print them.
func Spread(xs []float64) string {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return fmt.Sprintf("%s / %s / %s", num(s[0]), num(Median(s)), num(s[len(s)-1]))
}

// num prints three significant digits, without an exponent for large values.
func num(x float64) string {
	if x >= 1000 || x <= -1000 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.3g", x)
}

// Percentile is the p-th percentile (0 <= p < 100) of latencies, the nearest rank below.
func Percentile(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)*p/100]
}

// CPU is a reading of the machine's CPU time counters (/proc/stat, in USER_HZ ticks): busy is
// user, nice, system, irq and softirq of every CPU (traffic between namespaces is spent in
// softirq), total every field.
type CPU struct{ busy, total uint64 }

// ReadCPU reads the counters; a benchmark that cannot read them fails.
func ReadCPU(t TB) CPU {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatalf("read the CPU counters: %v", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		t.Fatalf("read the CPU counters: unexpected /proc/stat line %q", line)
	}
	var c CPU
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("read the CPU counters: field %d of %q: %v", i+1, line, err)
		}
		c.total += v
		switch i {
		case 0, 1, 2, 5, 6: // user nice system irq softirq
			c.busy += v
		}
	}
	return c
}

// BusySeconds is the machine's busy CPU time so far, in seconds.
func (c CPU) BusySeconds() float64 { return float64(c.busy) / 100 }

// BusySince is the share of the machine's CPU time that was busy between c and now (0 to 1).
func (c CPU) BusySince(t TB) float64 {
	t.Helper()
	now := ReadCPU(t)
	if now.total <= c.total {
		t.Fatalf("the CPU counters did not advance")
	}
	return float64(now.busy-c.busy) / float64(now.total-c.total)
}
