package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
)

// TestPinDirectoryOwnership: bpffs is world-writable, so another user can create netpact's pin
// directory first and fill it with maps of their own; Open refuses a pin directory that is not
// this process's user's or that others may write, and a symlink in its place.
func TestPinDirectoryOwnership(t *testing.T) {
	testenv.RequireBPF(t)
	base := filepath.Join(DefaultPinPath+"-test", fmt.Sprintf("owner-%d", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(base); os.Remove(DefaultPinPath + "-test") })
	for _, c := range []struct {
		name  string
		setup func(dir string) error
		want  string
	}{
		{"another user's", func(dir string) error {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			return os.Chown(dir, 65534, 65534)
		}, "belongs to uid 65534"},
		{"writable by others", func(dir string) error {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			return os.Chmod(dir, 0o777)
		}, "writable by group or others"},
		{"a symlink", func(dir string) error {
			if err := os.MkdirAll(dir+"-target", 0o755); err != nil {
				return err
			}
			return os.Symlink(dir+"-target", dir)
		}, "is not a directory"},
	} {
		dir := filepath.Join(base, strings.ReplaceAll(c.name, " ", "-"))
		if err := c.setup(dir); err != nil {
			t.Fatal(err)
		}
		d, err := Open(Options{PinPath: dir})
		if err == nil {
			d.Teardown()
			t.Errorf("%s pin directory: adopted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s pin directory: %v, want %q", c.name, err, c.want)
		}
	}
}
