package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
)

// TestTestCommandIsAGate: `netpact test` is the CI gate of a policy repository: exit 0 when
// every step's expected, predicted and observed matrices agree, exit 1 (with the tables) when
// one does not, and the summary file says which.
func TestTestCommandIsAGate(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	testenv.RequireCommand(t, "nginx", "nginx-light")
	summary := filepath.Join(t.TempDir(), "summary")
	stdout, stderr, code := run(t, "test", "--summary", summary, filepath.Join("..", "..", "scenarios", "seeds", "003-knp-universe-to-echo.yaml"))
	if code != 0 {
		t.Fatalf("a scenario that holds: exit %d\n%s%s", code, stdout, stderr)
	}
	data, err := os.ReadFile(summary)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "0 failed") {
		t.Errorf("summary of a scenario that holds:\n%s", data)
	}
	stdout, _, code = run(t, "test", "--summary", summary, filepath.Join("..", "..", "scenarios", "testdata", "wrong-expectation.yaml"))
	if code != 1 {
		t.Fatalf("a scenario with a wrong expectation: exit %d, want 1\n%s", code, stdout)
	}
	if !strings.Contains(stdout, "FAIL") || !strings.Contains(stdout, "expected") {
		t.Errorf("the failure does not show the tables:\n%s", stdout)
	}
	if data, _ := os.ReadFile(summary); !strings.Contains(string(data), "FAIL") {
		t.Errorf("summary of a failing scenario:\n%s", data)
	}
}
