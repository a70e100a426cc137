package testenv

import (
	"fmt"
	"sort"
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
