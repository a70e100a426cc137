// Package testenv checks a test's prerequisites the project's way: outside CI a missing one
// skips with a message that says how to get it; with CI=true it fails the test.
package testenv

import (
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// TB is what the checks need of a test: testing.TB and Ginkgo's GinkgoT() both have it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips, or fails in CI, naming what is missing and how to get it.
func Missing(t TB, what, how string) {
	t.Helper()
	if InCI() {
		t.Fatalf("missing prerequisite: %s (%s)", what, how)
	}
	t.Skipf("skipping: %s is missing (%s)", what, how)
}

// RequireRoot needs uid 0, for BPF, network namespaces and bpffs.
func RequireRoot(t TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root", "run the tests as root: sudo make test")
	}
}

// RequireBPF needs root and a kernel that loads BPF programs.
func RequireBPF(t TB) {
	t.Helper()
	RequireRoot(t)
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil {
		Missing(t, "/sys/fs/bpf", "a kernel with BPF and bpffs support")
	}
}

// RequireCommand needs a program on PATH.
func RequireCommand(t TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name, "apt-get install "+pkg)
	}
	return p
}
