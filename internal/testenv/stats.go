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

// P99 is the 99th percentile of latencies.
func P99(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)*99/100]
}

// CPU is a reading of the machine's CPU time counters (/proc/stat), for telling whether a
// benchmark's measurement kept the CPUs busy.
type CPU struct{ busy, total uint64 }

// ReadCPU reads the counters; a zero CPU when they cannot be read.
func ReadCPU() CPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var c CPU
	for i, s := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		c.total += v
		if i != 3 && i != 4 { // idle, iowait
			c.busy += v
		}
	}
	return c
}

// BusySince is the share of the machine's CPU time that was busy between c and now (0 to 1).
func (c CPU) BusySince() float64 {
	now := ReadCPU()
	if now.total <= c.total {
		return 0
	}
	return float64(now.busy-c.busy) / float64(now.total-c.total)
}
