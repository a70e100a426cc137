package policy

import "syscall"

// openFlags add nothing on Windows, which has neither O_NOFOLLOW nor O_NONBLOCK: the path is
// already resolved inside the bundle (tree.resolve), and a file that is not regular is refused
// after Stat, before it is read.
const openFlags = 0

// errSymlinkLoop is Go's stand-in errno on Windows; resolve also matches the "too many links"
// text that filepath.EvalSymlinks gives there.
var errSymlinkLoop error = syscall.ELOOP
