// Package reconciler is netpact's GitOps core: it watches a Git revision, validates the policy
// bundle at it as one unit, hands it to the targets and reports, in Flux's conventions, which
// revision is applied and which is enforced.
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"github.com/go-git/go-git/v5/storage/memory"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/netpact/netpact/api/v1alpha1"
)

// Auth is how to authenticate to the Git server: basic (a token is a password) over HTTPS, or
// an SSH private key with known_hosts.
type Auth struct {
	Username   string
	Password   string
	SSHKey     []byte
	KnownHosts []byte
	// CABundle (PEM) is trusted for an https server with a private CA (the Secret's ca.crt).
	CABundle []byte
}

// Source is a Git repository and the ref to follow.
type Source struct {
	URL     string
	Ref     v1alpha1.GitRef
	Auth    Auth
	Timeout time.Duration

	// Clones counts the clones made; polling an unchanged ref makes none.
	Clones int
}

// Revision is a resolved ref: the name Flux puts before the hash, and the commit.
type Revision struct {
	// Name is the branch or tag name, the full ref for a named ref, or "" for a commit.
	Name string
	Hash plumbing.Hash
	// full is the reference to clone (refs/heads/..., refs/tags/...), empty for a commit.
	full plumbing.ReferenceName
}

// String writes the revision as Flux does: main@sha1:<hex>, v1.2.0@sha1:<hex>,
// refs/heads/main@sha1:<hex>, or sha1:<hex> for a commit.
func (r Revision) String() string {
	if r.Name == "" {
		return "sha1:" + r.Hash.String()
	}
	return r.Name + "@sha1:" + r.Hash.String()
}

func (s *Source) auth() (transport.AuthMethod, error) {
	switch {
	case len(s.Auth.SSHKey) > 0:
		user := "git"
		if ep, err := transport.NewEndpoint(s.URL); err == nil && ep.User != "" {
			user = ep.User
		}
		keys, err := gitssh.NewPublicKeys(user, s.Auth.SSHKey, "")
		if err != nil {
			return nil, fmt.Errorf("read SSH key: %w", err)
		}
		if len(s.Auth.KnownHosts) == 0 {
			return nil, errors.New("an SSH key needs known_hosts: host keys are always checked")
		}
		cb, err := knownHostsCallback(s.Auth.KnownHosts)
		if err != nil {
			return nil, err
		}
		keys.HostKeyCallback = cb
		return keys, nil
	case s.Auth.Username != "" || s.Auth.Password != "":
		if strings.HasPrefix(strings.ToLower(s.URL), "http://") {
			return nil, errors.New("credentials are not sent over plain http: use https (ca.crt in the Secret for a private CA) or ssh")
		}
		user := s.Auth.Username
		if user == "" {
			user = "git" // a token alone: the user name is not checked by token-based servers
		}
		return &http.BasicAuth{Username: user, Password: s.Auth.Password}, nil
	}
	return nil, nil
}

func knownHostsCallback(data []byte) (ssh.HostKeyCallback, error) {
	f, err := os.CreateTemp("", "netpact-known-hosts-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	cb, err := knownhosts.New(f.Name())
	if err != nil {
		return nil, fmt.Errorf("read known_hosts: %w", err)
	}
	return cb, nil
}

func (s *Source) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return 60 * time.Second
}

// Resolve lists the remote's refs (no objects are fetched) and returns the revision the ref
// points at: cheap polling, as Flux does it.
func (s *Source) Resolve(ctx context.Context) (Revision, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	if s.Ref.Commit != "" {
		if !plumbing.IsHash(s.Ref.Commit) {
			return Revision{}, fmt.Errorf("commit %q is not a full SHA-1", s.Ref.Commit)
		}
		return Revision{Hash: plumbing.NewHash(s.Ref.Commit)}, nil
	}
	auth, err := s.auth()
	if err != nil {
		return Revision{}, err
	}
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{s.URL}})
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: auth, PeelingOption: git.AppendPeeled, CABundle: s.Auth.CABundle})
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		refs, err = nil, nil // no refs at all: the ref lookup below names what is missing
	}
	if err != nil {
		if ctx.Err() != nil {
			return Revision{}, fmt.Errorf("list refs of %s: timed out after %s", s.URL, s.timeout())
		}
		return Revision{}, fmt.Errorf("list refs of %s: %w", s.URL, err)
	}
	byName := map[string]plumbing.Hash{}
	for _, r := range refs {
		byName[r.Name().String()] = r.Hash()
	}
	// An annotated tag's commit is its peeled entry.
	tagHash := func(name string) (plumbing.Hash, bool) {
		if h, ok := byName["refs/tags/"+name+"^{}"]; ok {
			return h, true
		}
		h, ok := byName["refs/tags/"+name]
		return h, ok
	}
	switch {
	case s.Ref.Branch != "":
		full := plumbing.NewBranchReferenceName(s.Ref.Branch)
		h, ok := byName[full.String()]
		if !ok {
			return Revision{}, fmt.Errorf("branch %q does not exist in %s", s.Ref.Branch, s.URL)
		}
		return Revision{Name: s.Ref.Branch, Hash: h, full: full}, nil
	case s.Ref.Tag != "":
		h, ok := tagHash(s.Ref.Tag)
		if !ok {
			return Revision{}, fmt.Errorf("tag %q does not exist in %s", s.Ref.Tag, s.URL)
		}
		return Revision{Name: s.Ref.Tag, Hash: h, full: plumbing.NewTagReferenceName(s.Ref.Tag)}, nil
	case s.Ref.SemVer != "":
		c, err := semver.NewConstraint(s.Ref.SemVer)
		if err != nil {
			return Revision{}, fmt.Errorf("semver range %q: %w", s.Ref.SemVer, err)
		}
		type tv struct {
			name string
			v    *semver.Version
		}
		var matching []tv
		for name := range byName {
			tag, ok := strings.CutPrefix(name, "refs/tags/")
			if !ok || strings.HasSuffix(tag, "^{}") {
				continue
			}
			if v, err := semver.NewVersion(tag); err == nil && c.Check(v) {
				matching = append(matching, tv{tag, v})
			}
		}
		if len(matching) == 0 {
			return Revision{}, fmt.Errorf("no tag of %s matches %q", s.URL, s.Ref.SemVer)
		}
		sort.Slice(matching, func(i, j int) bool { return matching[i].v.GreaterThan(matching[j].v) })
		h, _ := tagHash(matching[0].name)
		return Revision{Name: matching[0].name, Hash: h, full: plumbing.NewTagReferenceName(matching[0].name)}, nil
	case s.Ref.Name != "":
		h, ok := byName[s.Ref.Name]
		if !ok {
			return Revision{}, fmt.Errorf("ref %q does not exist in %s", s.Ref.Name, s.URL)
		}
		return Revision{Name: s.Ref.Name, Hash: h, full: plumbing.ReferenceName(s.Ref.Name)}, nil
	}
	full := plumbing.NewBranchReferenceName("main")
	h, ok := byName[full.String()]
	if !ok {
		return Revision{}, fmt.Errorf("no ref given and %s has no main branch", s.URL)
	}
	return Revision{Name: "main", Hash: h, full: full}, nil
}

// Fetch makes a fresh shallow clone of the revision in a new directory under parent (updating a
// shallow clone in place is where go-git's "object not found" bugs live) and returns the directory
// and the commit. The caller removes the directory.
func (s *Source) Fetch(ctx context.Context, parent string, rev Revision) (string, *object.Commit, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	auth, err := s.auth()
	if err != nil {
		return "", nil, err
	}
	s.Clones++
	dir, err := os.MkdirTemp(parent, "checkout-")
	if err != nil {
		return "", nil, fmt.Errorf("make checkout directory: %w", err)
	}
	// No checkout by go-git: checkOut writes the tree itself, within bounds.
	opts := &git.CloneOptions{URL: s.URL, Auth: auth, Tags: git.NoTags, NoCheckout: true, CABundle: s.Auth.CABundle}
	if rev.full != "" {
		opts.ReferenceName, opts.SingleBranch, opts.Depth = rev.full, true, 1
	}
	repo, err := git.PlainCloneContext(ctx, dir, false, opts)
	if err != nil {
		os.RemoveAll(dir)
		if ctx.Err() != nil {
			return "", nil, fmt.Errorf("clone %s: timed out after %s", s.URL, s.timeout())
		}
		return "", nil, fmt.Errorf("clone %s at %s: %w", s.URL, rev, err)
	}
	hash := rev.Hash
	if rev.full != "" {
		head, err := repo.Head()
		if err != nil {
			os.RemoveAll(dir)
			return "", nil, fmt.Errorf("read HEAD of the clone: %w", err)
		}
		hash = head.Hash()
	}
	commit, err := repo.CommitObject(hash)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("read commit %s: %w", hash, err)
	}
	if err := checkOut(commit, dir); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("check out commit %s: %w", hash, err)
	}
	return dir, commit, nil
}

// CheckOutLocal writes the tree of a revision of the local repository around path (found as git
// does, from path upwards) into dir, within the bounds a fetched checkout has, and returns the
// repository's top folder and the commit. The revision is anything go-git resolves: a branch, a
// tag, a hash, HEAD~1.
func CheckOutLocal(path, rev, dir string) (string, *object.Commit, error) {
	repo, err := git.PlainOpenWithOptions(path, &git.PlainOpenOptions{DetectDotGit: true, EnableDotGitCommonDir: true})
	if err != nil {
		return "", nil, fmt.Errorf("open the git repository at %s: %w", path, err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		return "", nil, fmt.Errorf("open the git repository at %s: %w", path, err)
	}
	hash, err := repo.ResolveRevision(plumbing.Revision(rev))
	if err != nil {
		return "", nil, fmt.Errorf("resolve revision %q: %w", rev, err)
	}
	commit, err := repo.CommitObject(*hash)
	if err != nil {
		return "", nil, fmt.Errorf("read commit %s: %w", hash, err)
	}
	if err := checkOut(commit, dir); err != nil {
		return "", nil, fmt.Errorf("check out %s (%s): %w", rev, hash.String()[:12], err)
	}
	return wt.Filesystem.Root(), commit, nil
}

// Bounds of a checkout: a small repository can hold blobs that inflate to gigabytes, and the
// controller's scratch directory is the node's disk.
const (
	maxCheckoutFile  = 16 << 20 // the loader's own bound on a policy file
	maxCheckoutBytes = 128 << 20
	maxCheckoutFiles = 20000
)

// checkOut writes the commit's tree into dir: regular files and symlinks, each blob's declared
// size checked against the bounds before a byte of it is inflated, and paths kept beneath dir.
func checkOut(commit *object.Commit, dir string) error {
	tree, err := commit.Tree()
	if err != nil {
		return err
	}
	// Written through os.Root: no path, and no symlink the tree made before it, leads a file
	// outside the checkout.
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var total int64
	files := 0
	return tree.Files().ForEach(func(f *object.File) error {
		if files++; files > maxCheckoutFiles {
			return fmt.Errorf("the repository has more than %d files", maxCheckoutFiles)
		}
		rel := filepath.Clean(f.Name)
		if rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) || strings.Contains("/"+rel+"/", "/.git/") {
			return fmt.Errorf("the tree has a path outside the checkout: %q", f.Name)
		}
		if f.Size > maxCheckoutFile {
			return fmt.Errorf("%s is %d bytes, more than the %d a file may have", f.Name, f.Size, maxCheckoutFile)
		}
		if total += f.Size; total > maxCheckoutBytes {
			return fmt.Errorf("the repository's files are more than %d bytes in all", maxCheckoutBytes)
		}
		if parent := filepath.Dir(rel); parent != "." {
			if err := root.MkdirAll(parent, 0o700); err != nil {
				return fmt.Errorf("%s: %w", f.Name, err)
			}
		}
		switch f.Mode {
		case filemode.Symlink:
			target, err := f.Contents()
			if err != nil {
				return err
			}
			return root.Symlink(target, rel) // never followed out of the checkout (os.Root, the loader)
		case filemode.Regular, filemode.Executable, filemode.Deprecated:
			r, err := f.Reader()
			if err != nil {
				return err
			}
			defer r.Close()
			out, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("%s: %w", f.Name, err)
			}
			n, err := io.Copy(out, io.LimitReader(r, f.Size+1))
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err == nil && n != f.Size {
				err = fmt.Errorf("%s: %d bytes, not the %d declared", f.Name, n, f.Size)
			}
			return err
		}
		return nil // submodules: nothing to write
	})
}

// ErrUnverifiable is returned for signatures go-git cannot check (SSH, x509).
var ErrUnverifiable = errors.New("signature cannot be verified")

// VerifyCommit accepts a commit only when an OpenPGP key of the armored keyring signed it.
func VerifyCommit(c *object.Commit, keyring string) error {
	sig := strings.TrimSpace(c.PGPSignature)
	switch {
	case sig == "":
		return fmt.Errorf("commit %s is not signed", c.Hash)
	case strings.HasPrefix(sig, "-----BEGIN SSH SIGNATURE-----"):
		return fmt.Errorf("commit %s has an SSH signature, which go-git cannot verify: %w; sign with OpenPGP", c.Hash, ErrUnverifiable)
	case strings.HasPrefix(sig, "-----BEGIN SIGNED MESSAGE-----"):
		return fmt.Errorf("commit %s has an x509 signature, which go-git cannot verify: %w; sign with OpenPGP", c.Hash, ErrUnverifiable)
	}
	entity, err := c.Verify(keyring)
	if err != nil {
		return fmt.Errorf("commit %s is not signed by a trusted key: %w", c.Hash, err)
	}
	_ = entity
	return nil
}
