//go:build unix

package policy

import "golang.org/x/sys/unix"

// openFlags open a bundle file without following a final symlink and without blocking on a FIFO.
const openFlags = unix.O_NOFOLLOW | unix.O_NONBLOCK

// errSymlinkLoop is what resolving a path caught in a symlink loop fails with.
var errSymlinkLoop error = unix.ELOOP
