package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeQuickStart runs the README's "Try it in 30 seconds" commands as a user would, with
// this build as bin/netpact, from the repository root and without root: each must exit 0, but
// plan, whose exit 2 says that cells change (as the README's table says). The build line is the
// test binary itself; /tmp/before is a scratch folder.
func TestReadmeQuickStart(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(raw), "## Try it in 30 seconds (no root)")
	if !ok {
		t.Fatal("the README has no quick start")
	}
	_, block, ok := strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatal("the quick start has no sh block")
	}
	block, _, _ = strings.Cut(block, "```")
	bin := netpactOnPath(t)
	scratch := t.TempDir()
	ran := 0
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		if strings.HasPrefix(line, "go build ") {
			continue // the test binary is that build
		}
		want := 0
		if strings.HasPrefix(line, "bin/netpact plan ") {
			want = 2
		}
		line = strings.ReplaceAll(line, "bin/netpact", filepath.Join(bin, "netpact"))
		line = strings.ReplaceAll(line, "/tmp/before", filepath.Join(scratch, "before"))
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", line)
		cmd.Dir = filepath.Join("..", "..")
		cmd.Env = append(os.Environ(), asCLI+"=1")
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != want {
			t.Errorf("README quick start: %s: exit %d, want %d\n%s", line, code, want, out)
		}
		ran++
	}
	if ran < 4 {
		t.Errorf("the quick start ran %d commands", ran)
	}
}
