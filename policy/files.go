package policy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Bounds of what a bundle may be: policy repositories are text written by people, and the loader
// reads them as root, so a hostile repository must not be able to make it read forever, read
// outside the bundle, or run out of memory.
const (
	// maxFileSize bounds a single policy file.
	maxFileSize = 16 << 20
	// maxBundleFiles and maxBundleBytes bound a whole bundle.
	maxBundleFiles = 10000
	maxBundleBytes = 64 << 20
	// maxAliasNodes bounds how many nodes YAML aliases may add to one document when expanded
	// (a "billion laughs" file is 1 KB and expands to billions).
	maxAliasNodes = 10000
	// maxBuildObjects bounds the objects one kustomization may read and build: kustomize's time
	// grows with the square of them (2000 take it about 3 s). Its output is also held to
	// maxBundleBytes, and what the build reads to maxBundleFiles and maxBundleBytes counting each
	// read: a few lines of patches or bases included many times over multiply what it holds.
	maxBuildObjects = 2000
)

// tree is what a Load call may read: the resolved path of each argument and the folders and
// kustomizations it is in the middle of reading (to find cycles) or has read.
type tree struct {
	root   string          // resolved argument being loaded: a folder, or one file
	given  string          // the same, absolute but as given (before symlinks are resolved)
	name   string          // the same as the caller named it, for messages
	active map[string]bool // resolved folders being read, outermost first in stack
	stack  []string
	done   map[string]bool
	files  int
	bytes  int64
}

func newTree() *tree {
	return &tree{active: map[string]bool{}, done: map[string]bool{}}
}

func within(p, root string) bool {
	return p == root || strings.HasPrefix(p, strings.TrimSuffix(root, "/")+"/")
}

// inside reports whether the resolved path p is the root or below it.
func (t *tree) inside(p string) bool { return within(p, t.root) }

// display names a resolved path inside the root as the caller named the root.
func (t *tree) display(resolved string) string {
	rel, err := filepath.Rel(t.root, resolved)
	if err != nil || !t.inside(resolved) {
		return resolved
	}
	return filepath.Join(t.name, rel)
}

// resolve follows symlinks (and ..) of path and refuses anything that ends outside the root;
// a path that leaves it by name is refused before anything outside is looked at.
func (t *tree) resolve(path string) (string, error) {
	outside := fmt.Errorf("leads outside %s (a symlink or .. may not leave the bundle being loaded)", t.root)
	if abs, err := filepath.Abs(path); err == nil && !within(abs, t.given) && !within(abs, t.root) {
		return "", outside
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		if errors.Is(err, errSymlinkLoop) || strings.Contains(err.Error(), "too many links") {
			return "", errors.New("cannot read: a symlink loop")
		}
		return "", fmt.Errorf("cannot read: %w", unwrapPathError(err))
	}
	resolved, err = filepath.Abs(resolved)
	if err != nil {
		return "", fmt.Errorf("cannot read: %w", err)
	}
	if !t.inside(resolved) {
		return "", outside
	}
	return resolved, nil
}

// read returns the contents of the regular file at the resolved path, counted against the
// bundle's bounds. FIFOs, devices and sockets are refused without being opened for reading
// in a way that could block.
func (t *tree) read(resolved string) ([]byte, error) {
	f, err := os.OpenFile(resolved, os.O_RDONLY|openFlags, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", unwrapPathError(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", unwrapPathError(err))
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s): refused", fileType(st.Mode()))
	}
	if st.Size() > maxFileSize {
		return nil, fmt.Errorf("file is larger than %d MiB", maxFileSize>>20)
	}
	t.files++
	if t.files > maxBundleFiles {
		return nil, fmt.Errorf("the bundle has more than %d files", maxBundleFiles)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", unwrapPathError(err))
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("file is larger than %d MiB", maxFileSize>>20)
	}
	t.bytes += int64(len(data))
	if t.bytes > maxBundleBytes {
		return nil, fmt.Errorf("the bundle is larger than %d MiB in all", maxBundleBytes>>20)
	}
	return data, nil
}

func fileType(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a folder"
	}
	return "special"
}

// enter marks a resolved folder as being read; an error names a cycle or a second visit.
func (t *tree) enter(dir string) error {
	if !t.active[dir] && t.done[dir] {
		return fmt.Errorf("folder %s is reached a second time (through a symlink)", dir)
	}
	return t.push(dir)
}

func (t *tree) leave(dir string) {
	t.pop(dir)
	t.done[dir] = true
}

// push marks a resolved folder as being read without counting it as read: a kustomization's
// base may be read by every overlay, but never by itself.
func (t *tree) push(dir string) error {
	if t.active[dir] {
		chain := append(append([]string{}, t.stack[max(0, slices.Index(t.stack, dir)):]...), dir)
		return fmt.Errorf("a cycle: %s", strings.Join(chain, " -> "))
	}
	t.active[dir] = true
	t.stack = append(t.stack, dir)
	return nil
}

func (t *tree) pop(dir string) {
	delete(t.active, dir)
	t.stack = t.stack[:len(t.stack)-1]
}

// aliasBudget refuses a document whose aliases expand it by more than maxAliasNodes nodes,
// naming the alias that crosses the limit.
func aliasBudget(doc *yaml.Node) (line, col int, err error) {
	memo := map[*yaml.Node]int{}
	var size func(n *yaml.Node, depth int) int
	size = func(n *yaml.Node, depth int) int {
		if depth > 1000 {
			return maxAliasNodes + 1
		}
		if v, ok := memo[n]; ok {
			return v
		}
		s := 1
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			s = size(n.Alias, depth+1)
		}
		for _, c := range n.Content {
			s += size(c, depth+1)
			if s > 1<<40 {
				break
			}
		}
		memo[n] = s
		return s
	}
	literal := 0
	var first *yaml.Node
	var count func(n *yaml.Node)
	count = func(n *yaml.Node) {
		literal++
		if n.Kind == yaml.AliasNode && n.Alias != nil && first == nil && size(n.Alias, 0) > maxAliasNodes/10 {
			first = n
		}
		for _, c := range n.Content {
			count(c)
		}
	}
	count(doc)
	if extra := size(doc, 0) - literal; extra > maxAliasNodes {
		at := doc
		if first != nil {
			at = first
		}
		return at.Line, at.Column, fmt.Errorf("YAML aliases expand this document by more than %d nodes (alias *%s): refused", maxAliasNodes, printable(at.Value, 40))
	}
	return 0, 0, nil
}

// printable makes s safe to print on a terminal and short: its first line only, control and
// other non-printing characters escaped, at most max runes (an ellipsis marks a cut).
func printable(s string, max int) string {
	cut := false
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s, cut = s[:i], true
	}
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n >= max {
			cut = true
			break
		}
		n++
		switch {
		case r == utf8.RuneError:
			b.WriteString(`\ufffd`)
		case unicode.IsPrint(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
	}
	if cut {
		b.WriteString("...")
	}
	return b.String()
}
