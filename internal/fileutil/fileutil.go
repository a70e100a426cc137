// Package fileutil writes files that another process may read at any moment, such as the CNI
// plugin's endpoint records that the enforcer lists.
package fileutil

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
)

// WriteAtomic writes data to path with mode perm (whatever the umask) through a temporary file
// in the same directory renamed over path, so that a reader sees the old file or the new one,
// never a part of it. The temporary file is named ".<base>.<random>.tmp", which globs for the
// real files skip, and is removed when a step fails.
func WriteAtomic(path string, data []byte, perm os.FileMode) error {
	return WriteAtomicFrom(path, bytes.NewReader(data), perm)
}

// WriteAtomicFrom is WriteAtomic with what r reads (a binary copied as it is read).
func WriteAtomicFrom(path string, r io.Reader, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
