package reconciler

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/policy"
)

// Target is where a bundle is enforced: the local node's enforcer now, the API server later.
type Target interface {
	Name() string
	// Apply makes the target enforce the bundle and returns once it does (or fails).
	Apply(ctx context.Context, revision string, b *policy.Bundle) error
	// Enforced is the revision the target's datapath holds.
	Enforced() string
}

// driftCorrector is a Target that can put back what drifted from the enforced revision.
type driftCorrector interface {
	CorrectDrift(ctx context.Context) (int, error)
}

// Node is what a NodeTarget drives: the local node's enforcer.
type Node interface {
	Enforce(c *policy.Cluster, policies []*policy.Policy) error
	// Verify reads the datapath maps back and checks they hold the enforced state.
	Verify() error
}

// NodeTarget enforces bundles on one node; a revision counts as enforced once the node's
// datapath maps are read back and hold it.
type NodeTarget struct {
	NodeName string
	Node     Node
	Cluster  func() *policy.Cluster

	mu       sync.Mutex
	enforced string
}

func (t *NodeTarget) Name() string { return "node/" + t.NodeName }

func (t *NodeTarget) Apply(ctx context.Context, revision string, b *policy.Bundle) error {
	if err := t.Node.Enforce(t.Cluster(), b.Policies); err != nil {
		return fmt.Errorf("%s: %w", t.Name(), err)
	}
	if err := t.Node.Verify(); err != nil {
		return fmt.Errorf("%s: %w", t.Name(), err)
	}
	t.mu.Lock()
	t.enforced = revision
	t.mu.Unlock()
	return nil
}

func (t *NodeTarget) Enforced() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.enforced
}

// Reconciler keeps one PolicySource enforced on its targets.
type Reconciler struct {
	Source  *Source
	Targets []Target
	// WorkDir holds fresh checkouts; os.TempDir() when empty.
	WorkDir string
	Load    policy.LoadOptions
	Now     func() time.Time

	// mu guards obj, and is held only to read or write it, never over network I/O.
	mu  sync.Mutex
	obj *v1alpha1.PolicySource
	// pass serializes reconciles; what follows is touched only inside one.
	pass sync.Mutex
	// Trigger asks for a reconcile now (the webhook receiver sends on it).
	trigger chan struct{}
	// stalledAt is a revision that failed in a way retrying cannot fix; it is not fetched again.
	stalledAt  string
	stalledErr error
	// enforcedNamespaces counts the policies per namespace of the last enforced bundle ("" for
	// cluster-wide ones), for the guard against a revision that removes all of them.
	enforcedNamespaces map[string]int
	// afterResolve, when set (tests), runs between resolving the ref and cloning it.
	afterResolve func()
}

// New returns a reconciler for obj.
func New(obj *v1alpha1.PolicySource, src *Source, targets ...Target) *Reconciler {
	return &Reconciler{Source: src, Targets: targets, obj: obj, Now: time.Now, trigger: make(chan struct{}, 1)}
}

// Status returns a copy of the object with its status, credentials of the source redacted.
func (r *Reconciler) Status() *v1alpha1.PolicySource {
	r.mu.Lock()
	obj := r.obj.DeepCopy()
	r.mu.Unlock()
	redactStatus(obj, r.Source)
	return obj
}

// store publishes the object a pass works on.
func (r *Reconciler) store(obj *v1alpha1.PolicySource) {
	r.mu.Lock()
	r.obj = obj.DeepCopy()
	r.mu.Unlock()
}

// Trigger asks for a reconcile as soon as possible.
func (r *Reconciler) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run reconciles at once, then every interval and on every trigger, until ctx is done.
func (r *Reconciler) Run(ctx context.Context, onResult func(*v1alpha1.PolicySource, error)) {
	interval := r.obj.Spec.Interval.Duration
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		err := r.Reconcile(ctx)
		if onResult != nil {
			onResult(r.Status(), err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.trigger:
		}
	}
}

// Reconcile does one pass: resolve the ref; if it moved, fetch, verify, validate the whole
// bundle, apply it to every target and record what is enforced. Any failure leaves the targets
// on the last good revision. The pass works on its own copy of the object and publishes it at
// each step, so Status never waits for the network.
func (r *Reconciler) Reconcile(ctx context.Context) error {
	r.pass.Lock()
	defer r.pass.Unlock()
	r.mu.Lock()
	obj := r.obj.DeepCopy()
	r.mu.Unlock()
	defer func() { r.store(obj) }()
	if obj.Spec.Suspend {
		conditions.MarkFalse(obj, meta.ReadyCondition, meta.SuspendedReason, "reconciliation is suspended")
		return nil
	}
	conditions.MarkReconciling(obj, meta.ProgressingReason, "checking %s", redactURL(r.Source.URL))
	r.store(obj)
	rev, err := r.Source.Resolve(ctx)
	if err != nil {
		return r.fail(obj, v1alpha1.GitOperationFailedReason, false, err)
	}
	revision := rev.String()
	obj.Status.LastAttemptedRevision = revision
	if revision == r.stalledAt {
		conditions.Delete(obj, meta.ReconcilingCondition)
		return r.stalledErr
	}
	if revision == obj.Status.LastEnforcedRevision && r.allEnforce(revision) {
		// The same revision: what drifted (an object deleted or edited behind the source's
		// back) is put back, every interval, as Flux does.
		for _, t := range r.Targets {
			if dc, ok := t.(driftCorrector); ok {
				if _, err := dc.CorrectDrift(ctx); err != nil {
					return r.fail(obj, v1alpha1.ApplyFailedReason, false, fmt.Errorf("revision %s: put back what drifted: %w", revision, err))
				}
			}
		}
		r.succeed(obj, revision)
		return nil
	}
	r.store(obj)
	if r.afterResolve != nil {
		r.afterResolve()
	}
	parent := r.WorkDir
	if parent == "" {
		parent = os.TempDir()
	}
	dir, commit, err := r.Source.Fetch(ctx, parent, rev)
	if err != nil {
		return r.fail(obj, v1alpha1.GitOperationFailedReason, false, err)
	}
	defer os.RemoveAll(dir)
	// The ref may have moved between listing and cloning: what is recorded, verified and
	// enforced is the commit actually checked out.
	if commit.Hash != rev.Hash {
		rev.Hash = commit.Hash
		revision = rev.String()
		obj.Status.LastAttemptedRevision = revision
		if revision == r.stalledAt {
			conditions.Delete(obj, meta.ReconcilingCondition)
			return r.stalledErr
		}
	}
	if kr := obj.Spec.VerifyKeyring; kr != "" {
		if err := VerifyCommit(commit, kr); err != nil {
			return r.fail(obj, v1alpha1.VerificationFailedReason, true, fmt.Errorf("revision %s: %w", revision, err))
		}
	}
	bundle, err := r.load(obj, dir, revision)
	if err != nil {
		return err
	}
	if err := r.guardEmpty(obj, bundle); err != nil {
		return r.fail(obj, v1alpha1.EmptyBundleReason, true, fmt.Errorf("revision %s: %w", revision, err))
	}
	for _, t := range r.Targets {
		if c, ok := t.(interface{ Check(*policy.Bundle) error }); ok {
			if err := c.Check(bundle); err != nil {
				return r.fail(obj, v1alpha1.ValidationFailedReason, true, fmt.Errorf("revision %s: %w; nothing of it was applied", revision, err))
			}
		}
	}
	for _, t := range r.Targets {
		if err := t.Apply(ctx, revision, bundle); err != nil {
			return r.fail(obj, v1alpha1.ApplyFailedReason, false, fmt.Errorf("revision %s: %w", revision, err))
		}
	}
	obj.Status.LastAppliedRevision = revision
	if !r.allEnforce(revision) {
		return r.fail(obj, v1alpha1.ApplyFailedReason, false, fmt.Errorf("revision %s applied but not enforced by every target", revision))
	}
	now := metav1.NewTime(r.Now())
	obj.Status.LastEnforcedRevision, obj.Status.LastEnforcedAt = revision, &now
	r.enforcedNamespaces = namespacesOf(bundle)
	r.succeed(obj, revision)
	return nil
}

// namespacesOf counts the policies of a bundle per namespace ("" for cluster-wide ones).
func namespacesOf(b *policy.Bundle) map[string]int {
	out := map[string]int{}
	for _, p := range b.Policies {
		out[p.Namespace]++
	}
	return out
}

// guardEmpty refuses, unless the source allows it, a bundle without any policy, or one that
// leaves without policy a namespace whose policies the last enforced bundle held: applying it
// would silently open everything they closed. Flux has no such guard.
func (r *Reconciler) guardEmpty(obj *v1alpha1.PolicySource, b *policy.Bundle) error {
	if obj.Spec.AllowEmpty {
		return nil
	}
	if len(b.Policies) == 0 {
		return errors.New("the bundle has no policy: applying it would remove every policy and open everything; set spec.allowEmpty to allow that")
	}
	now := namespacesOf(b)
	var emptied []string
	for ns := range r.enforcedNamespaces {
		if now[ns] == 0 {
			if ns == "" {
				ns = "(cluster-wide)"
			}
			emptied = append(emptied, ns)
		}
	}
	if len(emptied) > 0 {
		sort.Strings(emptied)
		return fmt.Errorf("the bundle removes every policy of namespace %s, which would open everything they closed; set spec.allowEmpty to allow that", strings.Join(emptied, ", "))
	}
	return nil
}

// load reads the bundle at the source path inside the checkout; errors name files relative to
// the repository root.
func (r *Reconciler) load(obj *v1alpha1.PolicySource, dir, revision string) (*policy.Bundle, error) {
	rel := filepath.Clean("/" + obj.Spec.Path)[1:]
	root := filepath.Join(dir, rel)
	// Resolved beneath the checkout (os.Root refuses a path that leaves it through a symlink,
	// such as a committed .p -> ..): a repository cannot point the loader at what is around its
	// checkout, other sources' checkouts included.
	if rel != "" {
		checkout, err := os.OpenRoot(dir)
		if err != nil {
			return nil, r.fail(obj, meta.InvalidPathReason, true, fmt.Errorf("revision %s: open the checkout: %w", revision, errors.Unwrap(err)))
		}
		_, err = checkout.Stat(rel)
		checkout.Close()
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, r.fail(obj, meta.InvalidPathReason, true, fmt.Errorf("revision %s: path %q does not exist", revision, obj.Spec.Path))
		case err != nil:
			return nil, r.fail(obj, meta.InvalidPathReason, true, fmt.Errorf("revision %s: path %q leaves the repository (through a symlink): refused", revision, obj.Spec.Path))
		}
	}
	// The checkout is the root, as for Flux's kustomize-controller: an overlay at spec.path reads
	// its base anywhere in the repository, and nothing around it.
	lo := r.Load
	lo.Root = dir
	bundle, err := policy.Load([]string{root}, lo)
	var list policy.ErrorList
	if errors.As(err, &list) {
		obj.Status.Errors = nil
		for _, e := range list {
			e.File = strings.TrimPrefix(e.File, dir+string(filepath.Separator))
			obj.Status.Errors = append(obj.Status.Errors, strings.ReplaceAll(e.Error(), dir+string(filepath.Separator), ""))
		}
		return nil, r.fail(obj, v1alpha1.ValidationFailedReason, true, fmt.Errorf("revision %s has %d errors; nothing of it was applied: %s", revision, len(list), obj.Status.Errors[0]))
	}
	if err != nil {
		return nil, r.fail(obj, v1alpha1.ValidationFailedReason, true, fmt.Errorf("revision %s: %w", revision, err))
	}
	// Each policy carries where it came from, down to its rules' lines: the enforcers name them
	// in every verdict.
	for _, p := range bundle.Policies {
		rel, err := filepath.Rel(dir, p.Source.File)
		if err != nil {
			rel = p.Source.File
		}
		p.SetOrigin(redactURL(obj.Spec.URL), filepath.ToSlash(rel), revision)
	}
	obj.Status.Warnings = nil
	for _, n := range bundle.AllNotices(nil) {
		if n.Warning {
			n.File = strings.TrimPrefix(n.File, dir+string(filepath.Separator))
			obj.Status.Warnings = append(obj.Status.Warnings, n.Located())
		}
	}
	return bundle, nil
}

func (r *Reconciler) allEnforce(revision string) bool {
	for _, t := range r.Targets {
		if t.Enforced() != revision {
			return false
		}
	}
	return len(r.Targets) > 0
}

// fail records a failed reconcile; stalled means retrying the same revision cannot help.
func (r *Reconciler) fail(obj *v1alpha1.PolicySource, reason string, stalled bool, err error) error {
	msg := err.Error()
	if enf := obj.Status.LastEnforcedRevision; enf != "" {
		msg += "; still enforcing " + enf
	}
	conditions.MarkFalse(obj, meta.ReadyCondition, reason, "%s", msg)
	conditions.Delete(obj, meta.ReconcilingCondition)
	if stalled {
		conditions.MarkStalled(obj, reason, "%s", err.Error())
		r.stalledAt, r.stalledErr = obj.Status.LastAttemptedRevision, err
	} else {
		conditions.Delete(obj, meta.StalledCondition)
	}
	return err
}

func (r *Reconciler) succeed(obj *v1alpha1.PolicySource, revision string) {
	obj.Status.Errors = nil
	conditions.MarkTrue(obj, v1alpha1.EnforcedCondition, v1alpha1.EnforcedReason, "revision %s is enforced by %d target(s)", revision, len(r.Targets))
	conditions.MarkTrue(obj, meta.ReadyCondition, meta.SucceededReason, "enforced revision %s", revision)
	conditions.Delete(obj, meta.ReconcilingCondition)
	conditions.Delete(obj, meta.StalledCondition)
}
