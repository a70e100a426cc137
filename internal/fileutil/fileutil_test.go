package fileutil

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestWriteAtomic: a new file and a replaced one hold the data with the mode asked for, whatever
// the umask, and no temporary file stays; a write that cannot finish leaves the old file whole.
func TestWriteAtomic(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "c1.json")
	for _, body := range []string{"first", "second"} {
		if err := WriteAtomic(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != body {
			t.Fatalf("read %q, %v; want %q", b, err, body)
		}
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, %v; want 0644", info.Mode().Perm(), err)
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "*")); len(names) != 1 {
		t.Errorf("files left: %v", names)
	}
	// A directory where the file should be: the rename fails, and the temporary file goes.
	if err := os.Mkdir(filepath.Join(dir, "busy"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "busy", "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(filepath.Join(dir, "busy"), []byte("x"), 0o644); err == nil {
		t.Error("a write over a non-empty directory succeeded")
	}
	if names, _ := filepath.Glob(filepath.Join(dir, ".*")); len(names) != 0 {
		t.Errorf("temporary files left: %v", names)
	}
	if b, _ := os.ReadFile(path); string(b) != "second" {
		t.Errorf("the file holds %q after another write failed", b)
	}
}
