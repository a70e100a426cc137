package reconciler

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/policy"
)

// ReconcileRequestAnnotation asks for a reconcile now (Flux's): its value is a timestamp, and
// status.lastHandledReconcileAt echoes it once acted on.
const ReconcileRequestAnnotation = meta.ReconcileRequestAnnotation

// Controller reconciles every PolicySource of the cluster: the Git source and validation of the
// local reconciler, a ClusterTarget applying through the API server, status with Flux's
// conditions and the nodes enforced, events on every transition, and metrics in Flux's shape.
type Controller struct {
	Client client.Client
	// APIReader reads the Secrets a source names, one by one from the API server (the manager's
	// GetAPIReader): the cached Client would list and watch every Secret of the cluster. Client
	// when nil.
	APIReader client.Reader
	Config    *rest.Config
	Events    events.EventRecorder
	// Namespace is the controller's own: its sources may write policy anywhere; a source of any
	// other namespace writes policy of its own namespace only. netpact-system when empty.
	Namespace string
	// Name names the controller (its metrics and logs); "policysource" when empty. Controllers
	// of one process need names of their own.
	Name string
	// WorkDir holds checkouts; EnforceTimeout bounds the wait for every node.
	WorkDir        string
	EnforceTimeout time.Duration
	Load           policy.LoadOptions

	mu      sync.Mutex
	sources map[types.NamespacedName]*sourceState
	// busy marks the namespaces one of whose sources a worker reconciles: a namespace has one
	// worker at a time, so a tenant's slow sources cannot hold all of them.
	busy map[string]bool
	// pokes asks for a reconcile of one source (the webhook receiver).
	pokes chan event.GenericEvent
}

type sourceState struct {
	key    string // what the reconciler was built from: spec and secrets
	rec    *Reconciler
	target *ClusterTarget
	// seenAt is when the newest revision was first seen, for push-to-enforced.
	seen   string
	seenAt time.Time
	// poke is the source's budget of reconciles pushes start (guarded by Controller.mu).
	poke pokeState
}

var (
	reconcileDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "gotk_reconcile_duration_seconds", Help: "How long a PolicySource reconcile took.",
		Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120},
	}, []string{"kind", "name", "namespace"})
	conditionGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gotk_reconcile_condition", Help: "The PolicySource's conditions (1 for the status it has).",
	}, []string{"kind", "name", "namespace", "type", "status"})
	pushToEnforced = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "netpact_push_to_enforced_seconds", Help: "From a revision first seen to enforced on every node.",
		Buckets: []float64{0.25, 0.5, 1, 2, 3, 5, 10, 30, 60},
	}, []string{"name", "namespace"})
	registerOnce sync.Once
)

// SetupWithManager registers the controller: PolicySources, on a change of generation or of
// the reconcile-request annotation, and pokes from the webhook receiver.
func (c *Controller) SetupWithManager(mgr ctrl.Manager) error {
	registerOnce.Do(func() { metrics.Registry.MustRegister(reconcileDuration, conditionGauge, pushToEnforced) })
	c.sources = map[types.NamespacedName]*sourceState{}
	c.pokes = make(chan event.GenericEvent, 64)
	name := c.Name
	if name == "" {
		name = "policysource"
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named(name).
		For(&v1alpha1.PolicySource{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{},
			predicate.AnnotationChangedPredicate{}))).
		WatchesRawSource(source.Channel(c.pokes, &handler.EnqueueRequestForObject{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Complete(c)
}

// Pushes start at most one reconcile of a source per pokeEvery, after a burst of pokeBurst: a
// replayed or flooded notification costs no more fetches than a short interval would.
const (
	pokeEvery = 2 * time.Second
	pokeBurst = 30
)

// pokeState is a source's budget of pokes, and whether one waits for the budget.
type pokeState struct {
	limit   *rate.Limiter
	pending bool
}

// Poke asks for a reconcile of one source now, or, past its budget, once the budget allows
// (pokes in between are folded into that one). Only a source the controller has reconciled has a
// budget: a poke for any other name (the hook's path is the sender's to choose) does nothing, and
// a new source is reconciled when it is created anyway.
func (c *Controller) Poke(namespace, name string) {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	c.mu.Lock()
	src := c.sources[key]
	if src == nil || src.poke.pending {
		c.mu.Unlock()
		return
	}
	if src.poke.limit == nil {
		src.poke.limit = rate.NewLimiter(rate.Every(pokeEvery), pokeBurst)
	}
	delay := src.poke.limit.Reserve().Delay()
	src.poke.pending = delay > 0
	c.mu.Unlock()
	send := func() {
		obj := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
		select {
		case c.pokes <- event.GenericEvent{Object: obj}:
		default:
		}
	}
	if delay == 0 {
		send()
		return
	}
	time.AfterFunc(delay, func() {
		c.mu.Lock()
		src.poke.pending = false
		c.mu.Unlock()
		send()
	})
}

// Reconcile is one pass for one PolicySource.
func (c *Controller) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	start := time.Now()
	var obj v1alpha1.PolicySource
	if err := c.Client.Get(ctx, req.NamespacedName, &obj); err != nil {
		if apierrors.IsNotFound(err) {
			c.mu.Lock()
			delete(c.sources, req.NamespacedName)
			c.mu.Unlock()
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !obj.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, c.finalize(ctx, &obj)
	}
	if !controllerutil.ContainsFinalizer(&obj, PruneFinalizer) {
		// Added before anything is applied: what the source applies is pruned when it is deleted.
		controllerutil.AddFinalizer(&obj, PruneFinalizer)
		if err := c.Client.Update(ctx, &obj); err != nil {
			return ctrl.Result{}, err
		}
	}
	if !c.acquire(req.Namespace) {
		// Another source of the namespace holds a worker: this one waits its turn, and the
		// other namespaces' sources go on.
		return ctrl.Result{RequeueAfter: namespaceRetry}, nil
	}
	defer c.release(req.Namespace)
	before := obj.DeepCopy()
	// The status is written once, whatever the steps below did, as Flux's controllers patch it
	// in a deferred call: conditions, metrics and events follow from it.
	defer c.finish(ctx, before, &obj, start)
	return c.reconcile(ctx, &obj, before, start), nil
}

// reconcile is one pass of a source the caller holds a worker for: fetch, verify, validate,
// apply and wait for the nodes (the source's Reconciler), then the status from the target.
// Each failure marks a condition with its reason; the caller writes the status.
func (c *Controller) reconcile(ctx context.Context, obj, before *v1alpha1.PolicySource, start time.Time) ctrl.Result {
	interval := boundInterval(obj.Spec.Interval.Duration)
	obj.Status.ObservedGeneration = obj.Generation
	st, err := c.state(ctx, obj)
	if err != nil {
		conditions.MarkFalse(obj, meta.ReadyCondition, v1alpha1.GitOperationFailedReason, "%s", err.Error())
		conditions.MarkStalled(obj, v1alpha1.GitOperationFailedReason, "%s", err.Error())
		return ctrl.Result{RequeueAfter: interval}
	}
	// The reconciler works on the object as the API server has it (status included).
	work := obj.DeepCopy()
	kr, err := c.keyring(ctx, obj)
	if err != nil {
		conditions.MarkFalse(obj, meta.ReadyCondition, v1alpha1.VerificationFailedReason, "%s", err.Error())
		conditions.MarkStalled(obj, v1alpha1.VerificationFailedReason, "%s", err.Error())
		return ctrl.Result{RequeueAfter: interval}
	}
	work.Spec.VerifyKeyring = kr
	st.rec.store(work)
	rerr := st.rec.Reconcile(ctx)
	c.report(obj, st, rerr)
	rev := obj.Status.LastAttemptedRevision
	c.mu.Lock()
	if rev != st.seen {
		st.seen, st.seenAt = rev, start
	}
	seenAt := st.seenAt
	c.mu.Unlock()
	if rerr == nil && obj.Status.LastEnforcedRevision == rev && before.Status.LastEnforcedRevision != rev {
		pushToEnforced.WithLabelValues(obj.Name, obj.Namespace).Observe(time.Since(seenAt).Seconds())
	}
	if applied := st.target.Applied(); applied != "" && st.target.Enforced() != applied && interval > 10*time.Second {
		// Applied and waiting for nodes (one down, one slow): look again soon, not at the
		// next interval.
		return ctrl.Result{RequeueAfter: 10 * time.Second}
	}
	return ctrl.Result{RequeueAfter: interval}
}

// report puts into the source's status what its reconciler and its cluster target say: the
// revisions and conditions, the inventory, the nodes that enforce it, what was left out because
// other sources own it, and a rollback.
func (c *Controller) report(obj *v1alpha1.PolicySource, st *sourceState, rerr error) {
	out := st.rec.Status()
	obj.Status = out.Status
	obj.Status.ObservedGeneration = obj.Generation
	obj.Status.Inventory = st.target.Inventory()
	enf, total, lagging := st.target.Nodes()
	if total > 0 {
		obj.Status.EnforcedNodes, obj.Status.LaggingNodes = fmt.Sprintf("%d/%d", enf, total), lagging
	}
	if applied := st.target.Applied(); applied != "" {
		obj.Status.LastAppliedRevision = applied
		if st.target.Enforced() == applied {
			conditions.MarkTrue(obj, v1alpha1.EnforcedCondition, v1alpha1.EnforcedReason, "revision %s is enforced on %d/%d nodes", applied, enf, total)
		} else {
			conditions.MarkFalse(obj, v1alpha1.EnforcedCondition, meta.ProgressingReason, "revision %s is applied, enforced on %d/%d nodes; lagging: %s",
				applied, enf, total, strings.Join(lagging, "; "))
		}
	}
	if v, ok := obj.Annotations[ReconcileRequestAnnotation]; ok {
		obj.Status.LastHandledReconcileAt = v
	}
	if refused := st.target.Refused(); rerr == nil && len(refused) > 0 {
		// Enforced without what other sources own: said where the source's status is read.
		if ready := conditions.Get(obj, meta.ReadyCondition); ready != nil && ready.Status == metav1.ConditionTrue {
			conditions.MarkTrue(obj, meta.ReadyCondition, ready.Reason, "%s; left out: %s", ready.Message, strings.Join(refused, "; "))
		}
	}
	if rb := st.target.RolledBack(); rerr != nil && rb != "" {
		conditions.MarkFalse(obj, meta.ReadyCondition, v1alpha1.ApplyFailedReason, "%s", rerr.Error())
	}
}

// PruneFinalizer keeps a PolicySource until the controller has deleted what it applied (unless
// spec.prune is false), as Flux garbage-collects a deleted Kustomization's objects.
const PruneFinalizer = "netpact.io/prune"

// finalize deletes what a deleted source applied (its status inventory; objects annotated
// netpact.io/prune: disabled are kept; spec.prune: false keeps everything) and lets it go.
func (c *Controller) finalize(ctx context.Context, obj *v1alpha1.PolicySource) error {
	if !controllerutil.ContainsFinalizer(obj, PruneFinalizer) {
		return nil
	}
	nn := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
	if (obj.Spec.Prune == nil || *obj.Spec.Prune) && obj.Status.Inventory != nil {
		target := &ClusterTarget{Config: c.Config, Source: metav1.ObjectMeta{Namespace: obj.Namespace, Name: obj.Name}}
		if err := target.init(); err != nil {
			return err
		}
		inv, err := target.adoptInventory(ctx, obj.Status.Inventory.Entries)
		if err != nil {
			return fmt.Errorf("prune the deleted source's objects: %w", err)
		}
		for _, o := range inv {
			l := o.obj.GetLabels()
			if o.obj.GetAnnotations()[PruneAnnotation] == "disabled" || l[SourceNameLabel] != obj.Name || l[SourceNamespaceLabel] != obj.Namespace {
				continue // kept on purpose, or applied by another source since
			}
			if err := target.applier.Delete(ctx, o.obj); err != nil {
				return fmt.Errorf("prune %s of the deleted source: %w", o.obj.GetName(), err)
			}
		}
	}
	controllerutil.RemoveFinalizer(obj, PruneFinalizer)
	if err := c.Client.Update(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	c.mu.Lock()
	delete(c.sources, nn)
	c.mu.Unlock()
	return nil
}

// sourceWorkDir is a source's own 0700 directory under the controller's work directory (the
// system's temporary directory when empty), named by a hash so that no name can climb out.
func sourceWorkDir(parent string, nn types.NamespacedName) string {
	if parent == "" {
		parent = os.TempDir()
	}
	sum := sha256.Sum256([]byte(nn.String()))
	dir := filepath.Join(parent, fmt.Sprintf("source-%x", sum[:8]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return parent // the checkout is still a 0700 directory of its own (os.MkdirTemp)
	}
	return dir
}

// HookSecret is the secret that signs the webhook deliveries of a source: its own
// (spec.webhookSecretRef's token) when it names one, else shared. A source that names a Secret
// that cannot be read gets none: every delivery is refused.
func (c *Controller) HookSecret(ctx context.Context, namespace, name string, shared []byte) []byte {
	var obj v1alpha1.PolicySource
	if c.Client == nil {
		return shared
	}
	if err := c.Client.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &obj); err != nil || obj.Spec.WebhookSecretRef == nil {
		return shared
	}
	var sec corev1.Secret
	if err := c.secrets().Get(ctx, types.NamespacedName{Namespace: namespace, Name: obj.Spec.WebhookSecretRef.Name}, &sec); err != nil {
		return nil
	}
	return sec.Data["token"]
}

// secrets reads a Secret uncached (APIReader), with get alone.
func (c *Controller) secrets() client.Reader {
	if c.APIReader != nil {
		return c.APIReader
	}
	return c.Client
}

// namespaceRetry is how soon a source whose namespace's worker is busy is tried again.
const namespaceRetry = 2 * time.Second

func (c *Controller) acquire(ns string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy == nil {
		c.busy = map[string]bool{}
	}
	if c.busy[ns] {
		return false
	}
	c.busy[ns] = true
	return true
}

func (c *Controller) release(ns string) {
	c.mu.Lock()
	delete(c.busy, ns)
	c.mu.Unlock()
}

// boundInterval keeps an interval within the CRD's bounds (an object stored before them, or a
// zero one: a minute).
func boundInterval(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return time.Minute
	case d < v1alpha1.MinInterval:
		return v1alpha1.MinInterval
	case d > v1alpha1.MaxInterval:
		return v1alpha1.MaxInterval
	}
	return d
}

// boundTimeout keeps a Git operation's timeout within the CRD's bound (0: the source's default).
func boundTimeout(d time.Duration) time.Duration {
	if d > v1alpha1.MaxTimeout {
		return v1alpha1.MaxTimeout
	}
	return d
}

// finish writes the status when it changed, records an event for a Ready transition, and the
// metrics.
func (c *Controller) finish(ctx context.Context, before, obj *v1alpha1.PolicySource, start time.Time) {
	reconcileDuration.WithLabelValues("PolicySource", obj.Name, obj.Namespace).Observe(time.Since(start).Seconds())
	for _, t := range []string{meta.ReadyCondition, meta.ReconcilingCondition, meta.StalledCondition, v1alpha1.EnforcedCondition} {
		for _, s := range []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown} {
			v := 0.0
			if c := conditions.Get(obj, t); c != nil && c.Status == s {
				v = 1
			}
			conditionGauge.WithLabelValues("PolicySource", obj.Name, obj.Namespace, t, string(s)).Set(v)
		}
	}
	b1, _ := json.Marshal(before.Status)
	b2, _ := json.Marshal(obj.Status)
	if string(b1) != string(b2) {
		if err := c.Client.Status().Update(ctx, obj); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			ctrl.LoggerFrom(ctx).Error(err, "write status")
		}
	}
	old, now := conditions.Get(before, meta.ReadyCondition), conditions.Get(obj, meta.ReadyCondition)
	if now != nil && (old == nil || old.Status != now.Status || old.Reason != now.Reason || old.Message != now.Message) && c.Events != nil {
		kind := corev1.EventTypeNormal
		if now.Status != metav1.ConditionTrue {
			kind = corev1.EventTypeWarning
		}
		c.Events.Eventf(obj, nil, kind, now.Reason, "Reconcile", "revision %s: %s", obj.Status.LastAttemptedRevision, now.Message)
	}
}

// state is the source's reconciler, rebuilt when its spec or secrets change.
func (c *Controller) state(ctx context.Context, obj *v1alpha1.PolicySource) (*sourceState, error) {
	auth, authVersion, err := c.auth(ctx, obj)
	if err != nil {
		return nil, err
	}
	specJSON, _ := json.Marshal(obj.Spec)
	sum := sha256.Sum256(append(specJSON, []byte(authVersion)...))
	key := fmt.Sprintf("%x", sum)
	nn := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.sources[nn]; ok && st.key == key {
		return st, nil
	}
	prune := obj.Spec.Prune == nil || *obj.Spec.Prune
	own := c.Namespace
	if own == "" {
		own = "netpact-system"
	}
	target := &ClusterTarget{Config: c.Config, Source: metav1.ObjectMeta{Namespace: obj.Namespace, Name: obj.Name},
		EnforceTimeout: c.EnforceTimeout, Prune: prune, OwnNamespaceOnly: obj.Namespace != own}
	src := &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Auth: auth, Timeout: boundTimeout(obj.Spec.Timeout.Duration)}
	rec := New(obj.DeepCopy(), src, target)
	// Each source checks out in a directory of its own, which only the controller reads.
	rec.WorkDir, rec.Load = sourceWorkDir(c.WorkDir, nn), c.Load
	if target.OwnNamespaceOnly {
		rec.Load.DefaultNamespace = obj.Namespace // an object naming no namespace is the source's
	}
	if old, ok := c.sources[nn]; ok {
		// The same cluster state: keep what is enforced and the guard's memory.
		target.inventory, target.lastGood, target.enforced = old.target.inventory, old.target.lastGood, old.target.enforced
		rec.enforcedNamespaces = old.rec.enforcedNamespaces
	} else if err := target.init(); err == nil {
		// After a restart the guard starts from what the cluster holds of the source: the
		// inventory its status records (which only the controller writes), else its labels.
		inv, err := target.readInventory(ctx)
		if obj.Status.Inventory != nil {
			inv, err = target.adoptInventory(ctx, obj.Status.Inventory.Entries)
			if err == nil {
				target.inventory = inv
			}
		}
		if err == nil && len(inv) > 0 {
			rec.enforcedNamespaces = map[string]int{}
			for _, o := range inv {
				rec.enforcedNamespaces[o.obj.GetNamespace()]++
			}
		}
	}
	st := &sourceState{key: key, rec: rec, target: target}
	c.sources[nn] = st
	return st, nil
}

// auth reads the source's Git credentials from its secret, and the secret's version.
func (c *Controller) auth(ctx context.Context, obj *v1alpha1.PolicySource) (Auth, string, error) {
	if obj.Spec.SecretRef == nil {
		return Auth{}, "", nil
	}
	var sec corev1.Secret
	if err := c.secrets().Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: obj.Spec.SecretRef.Name}, &sec); err != nil {
		return Auth{}, "", fmt.Errorf("secretRef %s: %w", obj.Spec.SecretRef.Name, err)
	}
	a := Auth{Username: string(sec.Data["username"]), Password: string(sec.Data["password"]),
		SSHKey: sec.Data["identity"], KnownHosts: sec.Data["known_hosts"], CABundle: sec.Data["ca.crt"]}
	if a.Password == "" {
		a.Password = string(sec.Data["token"])
	}
	return a, sec.ResourceVersion, nil
}

// keyring is the armored keyring of spec.verify's secret (spec.verifyKeyring without verify). A
// secret that cannot be read, or holds no keyring, is an error: the source is not reconciled,
// and its Ready condition says why (VerificationFailed).
func (c *Controller) keyring(ctx context.Context, obj *v1alpha1.PolicySource) (string, error) {
	if obj.Spec.Verify == nil {
		return obj.Spec.VerifyKeyring, nil
	}
	name := obj.Spec.Verify.SecretRef.Name
	var sec corev1.Secret
	if err := c.secrets().Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: name}, &sec); err != nil {
		return "", fmt.Errorf("verify: read the keyring secret %s: %w", name, err)
	}
	if kr := string(sec.Data["keyring"]); kr != "" {
		return kr, nil
	}
	return "", fmt.Errorf("verify: the keyring secret %s has no keyring: nothing could be trusted", name)
}

// RequestReconcile sets the reconcile-request annotation of a PolicySource to now and returns
// the value set.
func RequestReconcile(ctx context.Context, cl client.Client, key types.NamespacedName) (string, error) {
	at := time.Now().UTC().Format(time.RFC3339Nano)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{ReconcileRequestAnnotation: at}}})
	obj := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if err := cl.Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return "", fmt.Errorf("request a reconcile of %s: %w", key, err)
	}
	return at, nil
}

// ReconcileNow requests a reconcile and waits until the controller reports it handled (what
// `netpact reconcile source` does), returning the PolicySource as it was then. onRead, unless
// nil, is given the source each time it is read while waiting: a wait of minutes can show how
// it goes.
func ReconcileNow(ctx context.Context, cl client.Client, key types.NamespacedName, onRead func(*v1alpha1.PolicySource)) (*v1alpha1.PolicySource, error) {
	at, err := RequestReconcile(ctx, cl, key)
	if err != nil {
		return nil, err
	}
	for {
		var cur v1alpha1.PolicySource
		if err := cl.Get(ctx, key, &cur); err != nil {
			return nil, fmt.Errorf("read %s: %w", key, err)
		}
		if onRead != nil {
			onRead(&cur)
		}
		if cur.Status.LastHandledReconcileAt == at && conditions.Get(&cur, meta.ReconcilingCondition) == nil {
			return &cur, nil
		}
		select {
		case <-ctx.Done():
			return &cur, fmt.Errorf("%s: the controller did not handle the request in time (is netpact-reconciler running?): %w", key, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
