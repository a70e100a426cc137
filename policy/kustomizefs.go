package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"syscall"

	"gopkg.in/yaml.v3"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kustomizeFS is the disk as kustomize sees it while netpact builds a kustomization: only what
// lies inside the bundle's root, judged after symlinks are resolved (kustomize's own root-only
// restriction follows a symlinked base folder anywhere), every file read through the tree's
// bounds and alias budget, and nothing written.
type kustomizeFS struct {
	t *tree
	// read holds the files read, by resolved path: a base that several overlays share is read
	// once, and the documents an object was built from are found here.
	read map[string][]byte
	// docs are the documents of files read, parsed when an object's origin is looked up.
	docs map[string][]*yaml.Node
	// checked are the folders whose kustomization was checked (kustomize.go), and what was found.
	checked map[string]kustomizationCheck
	// counts are the objects of each YAML file read, List items counted.
	counts map[string]int
	// replaced are contents kustomize reads instead of a file's: the kustomization being built,
	// with origin annotations switched on.
	replaced map[string][]byte
	// files and bytes count what the current build has read, each read of a shared file again:
	// a base included many times over multiplies what the build holds.
	files int
	bytes int64
	// refusal is the first read refused in the current build; it says more than kustomize's
	// wrapping of it.
	refusal error
	// expand rewrites each file read before kustomize parses it (LoadOptions.Expand).
	expand func(file string, data []byte) ([]byte, error)
}

func newKustomizeFS(t *tree) *kustomizeFS {
	return &kustomizeFS{t: t, read: map[string][]byte{}, docs: map[string][]*yaml.Node{}, checked: map[string]kustomizationCheck{}, counts: map[string]int{}, replaced: map[string][]byte{}}
}

var _ filesys.FileSystem = (*kustomizeFS)(nil)

var errReadOnly = errors.New("netpact builds kustomizations without writing files")

// startBuild resets what one build has read.
func (k *kustomizeFS) startBuild() {
	k.files, k.bytes, k.refusal = 0, 0, nil
}

// refuse records err as the build's first refusal unless it only says that the file is not
// there, which kustomize asks about as a matter of course (kustomization.yml, a folder read as
// a file).
func (k *kustomizeFS) refuse(path string, err error) error {
	if errors.Is(err, iofs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return err
	}
	err = fmt.Errorf("%s: %w", k.name(path), err)
	if k.refusal == nil {
		k.refusal = err
	}
	return err
}

// name is how messages name a path kustomize asks for: as the caller named the root.
func (k *kustomizeFS) name(path string) string {
	if abs, err := filepath.Abs(path); err == nil && k.t.inside(abs) {
		return k.t.display(abs)
	}
	return path
}

// load returns the contents of the resolved file, read once, through the tree's bounds; YAML
// whose aliases expand too far is refused before kustomize expands it.
func (k *kustomizeFS) load(resolved string) ([]byte, error) {
	if data, ok := k.read[resolved]; ok {
		return data, nil
	}
	if st, err := os.Stat(resolved); err == nil && st.IsDir() {
		return nil, &iofs.PathError{Op: "read", Path: resolved, Err: syscall.EISDIR}
	}
	data, err := k.t.read(resolved)
	if err != nil {
		return nil, err
	}
	if data, err = expand(k.expand, k.name(resolved), data); err != nil {
		return nil, err
	}
	count := 0
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if dec.Decode(&doc) != nil {
			break // the end, or not YAML: kustomize says so if it expected YAML
		}
		if line, col, err := aliasBudget(&doc); err != nil {
			return nil, fmt.Errorf("line %d column %d: %w", line, col, err)
		}
		count++
		if len(doc.Content) > 0 {
			if items := childNode(doc.Content[0], "items"); items != nil && items.Kind == yaml.SequenceNode {
				count += len(items.Content)
			}
		}
	}
	k.read[resolved], k.counts[resolved] = data, count
	return data, nil
}

// objects counts the objects of the resolved file, reading it; 0 when it cannot be read.
func (k *kustomizeFS) objects(resolved string) int {
	if _, err := k.load(resolved); err != nil {
		return 0
	}
	return k.counts[resolved]
}

func (k *kustomizeFS) ReadFile(path string) ([]byte, error) {
	resolved, err := k.t.resolve(path)
	if err != nil {
		return nil, k.refuse(path, err)
	}
	data, ok := k.replaced[resolved]
	if !ok {
		if data, err = k.load(resolved); err != nil {
			if errors.Is(err, syscall.EISDIR) {
				return nil, err
			}
			return nil, k.refuse(path, err)
		}
	}
	k.files++
	k.bytes += int64(len(data))
	if k.files > maxBundleFiles || k.bytes > maxBundleBytes {
		return nil, k.refuse(path, fmt.Errorf("the build reads more than %d files or %d MiB, counting a file again each time a base includes it", maxBundleFiles, maxBundleBytes>>20))
	}
	return data, nil
}

// CleanedAbs is kustomize's way to resolve a path: the folder it is in (or itself, for a
// folder), symlinks resolved, and the file's name.
func (k *kustomizeFS) CleanedAbs(path string) (filesys.ConfirmedDir, string, error) {
	resolved, err := k.t.resolve(path)
	if err != nil {
		return "", "", k.refuse(path, err)
	}
	if st, err := os.Stat(resolved); err == nil && st.IsDir() {
		return filesys.ConfirmedDir(resolved), "", nil
	}
	return filesys.ConfirmedDir(filepath.Dir(resolved)), filepath.Base(resolved), nil
}

func (k *kustomizeFS) stat(path string) (os.FileInfo, error) {
	resolved, err := k.t.resolve(path)
	if err != nil {
		return nil, k.refuse(path, err)
	}
	return os.Stat(resolved)
}

func (k *kustomizeFS) IsDir(path string) bool {
	st, err := k.stat(path)
	return err == nil && st.IsDir()
}

func (k *kustomizeFS) Exists(path string) bool {
	_, err := k.stat(path)
	return err == nil
}

func (k *kustomizeFS) ReadDir(path string) ([]string, error) {
	resolved, err := k.t.resolve(path)
	if err != nil {
		return nil, k.refuse(path, err)
	}
	entries, err := os.ReadDir(resolved)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}

// Open, Glob and Walk are not used by the builds netpact runs; refusing them keeps every read
// going through ReadFile's bounds.
func (k *kustomizeFS) Open(path string) (filesys.File, error) {
	return nil, k.refuse(path, errors.New("netpact reads files whole, not opened"))
}

func (k *kustomizeFS) Glob(pattern string) ([]string, error) {
	return nil, k.refuse(pattern, errors.New("netpact does not expand file patterns in kustomizations"))
}

func (k *kustomizeFS) Walk(path string, _ filepath.WalkFunc) error {
	return k.refuse(path, errors.New("netpact does not walk folders for kustomize"))
}

func (k *kustomizeFS) Create(path string) (filesys.File, error) {
	return nil, k.refuse(path, errReadOnly)
}
func (k *kustomizeFS) Mkdir(path string) error               { return k.refuse(path, errReadOnly) }
func (k *kustomizeFS) MkdirAll(path string) error            { return k.refuse(path, errReadOnly) }
func (k *kustomizeFS) RemoveAll(path string) error           { return k.refuse(path, errReadOnly) }
func (k *kustomizeFS) WriteFile(path string, _ []byte) error { return k.refuse(path, errReadOnly) }

// documents are the YAML documents of a file the build read, parsed once.
func (k *kustomizeFS) documents(resolved string) []*yaml.Node {
	if docs, ok := k.docs[resolved]; ok {
		return docs
	}
	var docs []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(k.read[resolved]))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if !errors.Is(err, io.EOF) {
				docs = nil // kustomize read it, so this does not happen; no guess then
			}
			break
		}
		if len(doc.Content) > 0 {
			docs = append(docs, doc.Content[0])
		}
	}
	k.docs[resolved] = docs
	return docs
}
