package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// TestSoftMemoryLimit: the enforcer's Go soft limit is 90% of its container's memory.max, none
// without a limit, and GOMEMLIMIT wins.
func TestSoftMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOMEMLIMIT", "")
	os.Unsetenv("GOMEMLIMIT")
	file := filepath.Join(t.TempDir(), "memory.max")
	for _, tc := range []struct {
		content string
		want    int64
	}{{"1073741824\n", 1073741824 / 10 * 9}, {"max\n", 0}} {
		if err := os.WriteFile(file, []byte(tc.content), 0o644); err != nil {
			t.Fatal(err)
		}
		debug.SetMemoryLimit(math.MaxInt64)
		got, ok := softMemoryLimit(file)
		if ok != (tc.want != 0) || got != tc.want {
			t.Errorf("memory.max %q: %d %v, want %d", tc.content, got, ok, tc.want)
		}
		if now := debug.SetMemoryLimit(-1); tc.want != 0 && now != tc.want {
			t.Errorf("memory.max %q: Go's limit is %d, want %d", tc.content, now, tc.want)
		}
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if _, ok := softMemoryLimit(file); ok {
		t.Errorf("GOMEMLIMIT set: the limit was changed")
	}
}
