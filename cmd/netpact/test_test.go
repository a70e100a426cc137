//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
)

// TestTestCommandIsAGate: `netpact test` is the CI gate of a policy repository: exit 0 (with a
// compact matrix per step) when every step's expected, predicted and observed matrices agree,
// exit 1 (with the three tables, again at the end) when one does not, and the summary file says
// which, with the failing tables.
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
	if !strings.Contains(string(data), "0 failed") || strings.Contains(string(data), "== failures") {
		t.Errorf("summary of a scenario that holds:\n%s", data)
	}
	if !strings.Contains(stdout, "    from \\ to        80/TCP  8080/TCP\n") || strings.Contains(stdout, "expected  predicted") {
		t.Errorf("a scenario that holds is not shown as compact matrices:\n%s", stdout)
	}
	stdout, _, code = run(t, "test", "--summary", summary, filepath.Join("..", "..", "scenarios", "testdata", "wrong-expectation.yaml"))
	if code != 1 {
		t.Fatalf("a scenario with a wrong expectation: exit %d, want 1\n%s", code, stdout)
	}
	tables := "from \\ to      expected  predicted  observed"
	_, failures, _ := strings.Cut(stdout, "== failures\n")
	if strings.Count(stdout, tables) != 2 || !strings.Contains(failures, tables) ||
		!strings.HasSuffix(stdout, "1 failed; 3 probes, 1 wrong\n") {
		t.Errorf("the failure does not show the tables where it ran and before the totals:\n%s", stdout)
	}
	data, _ = os.ReadFile(summary)
	if _, failures, _ := strings.Cut(string(data), "== failures\n"); !strings.Contains(string(data), "FAIL     the wrong step: 1 of 3 probes wrong") ||
		!strings.Contains(failures, tables) || !strings.Contains(failures, "wrong: galaxy/curl -> echo/echo 80/TCP") {
		t.Errorf("summary of a failing scenario lacks its tables:\n%s", data)
	}
}

// TestPendingStepsFailUnderCI: a pending step is listed in the totals; it fails the run when
// --fail-on-pending is set, which CI=true makes the default.
func TestPendingStepsFailUnderCI(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	file := filepath.Join("..", "..", "scenarios", "testdata", "pending-step.yaml")
	stdout, stderr, code := run(t, "test", "--fail-on-pending=false", file)
	if code != 0 || !strings.Contains(stdout, "pending (not checked): a step that is not checked yet / not yet: waits for a feature\n") {
		t.Fatalf("--fail-on-pending=false: exit %d, want 0 and the step listed\n%s%s", code, stdout, stderr)
	}
	t.Setenv("CI", "true")
	stdout, stderr, code = run(t, "test", file)
	if code != 1 || !strings.Contains(stderr, "1 pending steps were not checked") {
		t.Fatalf("CI=true: exit %d, want 1 naming the pending step\n%s%s", code, stdout, stderr)
	}
}
