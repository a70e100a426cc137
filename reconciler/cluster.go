package reconciler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/policy"
)

// Labels and annotations the cluster target puts on what it applies, as Flux's
// kustomize-controller does with its own names.
const (
	// SourceNameLabel and SourceNamespaceLabel name the PolicySource an object belongs to.
	SourceNameLabel      = "netpact.io/source-name"
	SourceNamespaceLabel = "netpact.io/source-namespace"
	// PruneAnnotation set to "disabled" keeps an object when a revision no longer has it.
	PruneAnnotation = "netpact.io/prune"
)

var npsResource = schema.GroupVersionResource{Group: "netpact.io", Version: "v1alpha1", Resource: "nodepolicystatuses"}

// ClusterTarget applies bundles through the API server (server-side apply, field manager
// netpact) and counts a revision as enforced only once every node's NodePolicyStatus reports
// each applied object at its applied generation: applied is not enforced.
type ClusterTarget struct {
	Config *rest.Config
	// Source is the PolicySource the objects belong to (their owner labels).
	Source metav1.ObjectMeta
	// EnforceTimeout bounds the wait for every node; 2 minutes when zero.
	EnforceTimeout time.Duration
	// Prune deletes what the last revision applied and this one lacks.
	Prune bool
	// OwnNamespaceOnly confines the source to its own namespace (the controller loads its
	// bundles with that namespace as the default): objects of another namespace and cluster-wide
	// ones are refused. The
	// controller sets it for every source outside its own namespace, so that whoever may create
	// a PolicySource in a namespace cannot write policy for the rest of the cluster.
	OwnNamespaceOnly bool

	once    sync.Once
	initErr error
	applier *kubeapply.Applier
	dyn     dynamic.Interface
	client  kubernetes.Interface

	mu       sync.Mutex
	enforced string
	applied  string
	// inventory is what the cluster holds of the source, by inventory id, with the applied
	// generation and uid; lastGood the objects of the last enforced revision (for rollback).
	inventory map[string]appliedObject
	lastGood  []*unstructured.Unstructured
	nodes     nodeCount
	// rolledBack says what the last failed Apply did about the objects it had written.
	rolledBack string
	// refused are the objects of the last Apply left out because another source owns them.
	refused []string
}

type appliedObject struct {
	obj        *unstructured.Unstructured
	uid        string
	generation int64
}

type nodeCount struct {
	enforced, total int
	lagging         []string
}

func (t *ClusterTarget) Name() string { return "cluster" }

// Check refuses a bundle the source may not apply (a confined source's objects outside its
// namespace): nothing of it is written, and the revision is not retried.
func (t *ClusterTarget) Check(b *policy.Bundle) error {
	if !t.OwnNamespaceOnly {
		return nil
	}
	var bad []string
	for _, p := range b.Policies {
		switch {
		case p.Kind == policy.KindCCNP:
			bad = append(bad, fmt.Sprintf("%s: %s is cluster-wide", p.Source, p.Key))
		case p.Namespace != t.Source.Namespace:
			bad = append(bad, fmt.Sprintf("%s: %s is in namespace %s", p.Source, p.Key, p.Namespace))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("a PolicySource of namespace %s writes policy of its own namespace only (sources of the controller's namespace may write any): %s",
			t.Source.Namespace, strings.Join(bad, "; "))
	}
	return nil
}

func (t *ClusterTarget) init() error {
	t.once.Do(func() {
		if t.applier, t.initErr = kubeapply.New(t.Config); t.initErr != nil {
			return
		}
		if t.dyn, t.initErr = dynamic.NewForConfig(t.Config); t.initErr != nil {
			return
		}
		t.client, t.initErr = kubernetes.NewForConfig(t.Config)
	})
	return t.initErr
}

// inventoryID is Flux's "<namespace>_<name>_<group>_<kind>".
func inventoryID(o *unstructured.Unstructured) string {
	gvk := o.GroupVersionKind()
	return fmt.Sprintf("%s_%s_%s_%s", o.GetNamespace(), o.GetName(), gvk.Group, gvk.Kind)
}

// objects turns the bundle into the objects to apply, stamped with the revision and the owner.
func (t *ClusterTarget) objects(revision string, b *policy.Bundle) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	for _, p := range b.Policies {
		o := &unstructured.Unstructured{}
		if err := json.Unmarshal(p.Raw, &o.Object); err != nil {
			return nil, fmt.Errorf("%s (%s): %w", p.Key, p.Source, err)
		}
		if p.Kind != policy.KindCCNP {
			o.SetNamespace(p.Namespace)
		}
		labels := o.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[SourceNameLabel], labels[SourceNamespaceLabel] = t.Source.Name, t.Source.Namespace
		o.SetLabels(labels)
		ann := o.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann[v1alpha1.RevisionAnnotation] = revision
		if p.Origin != nil {
			maps.Copy(ann, p.Origin.Annotations())
		}
		o.SetAnnotations(ann)
		// What the API server owns is not the bundle's to say.
		// Nor are finalizers (a deletion that never ends) or owner references (garbage
		// collection of the policy with an object the bundle names).
		for _, f := range []string{"resourceVersion", "uid", "generation", "creationTimestamp", "managedFields",
			"finalizers", "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds"} {
			unstructured.RemoveNestedField(o.Object, "metadata", f)
		}
		unstructured.RemoveNestedField(o.Object, "status")
		out = append(out, o)
	}
	return out, nil
}

// Apply writes the bundle: every object is first dry-run through the API server (schema,
// admission) and nothing is written unless all pass; then each is applied, and a failure part
// way restores the last enforced revision's objects and deletes those this attempt created, so
// the cluster goes back to the last good state. Then what the last revision had and this one
// lacks is pruned, and Apply waits until every node enforces the applied generations.
func (t *ClusterTarget) Apply(ctx context.Context, revision string, b *policy.Bundle) error {
	if err := t.init(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	objs, err := t.objects(revision, b)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	t.mu.Lock()
	t.rolledBack = ""
	prev := t.inventory
	t.mu.Unlock()
	if prev == nil {
		if prev, err = t.readInventory(ctx); err != nil {
			return fmt.Errorf("cluster: read what the source applied before: %w", err)
		}
	}
	// Ownership comes from inventories, which only the controller writes (the sources' status),
	// not from labels, which whoever may edit the object controls: an object in this source's
	// inventory is this source's, whatever its labels say; one that another source's inventory
	// lists is that source's, and is left out of this revision alone (server-side apply with
	// force would take it over); a label no inventory backs claims nothing.
	var refused []string
	mine := objs[:0:0]
	for _, o := range objs {
		if _, ours := prev[inventoryID(o)]; !ours {
			cur, err := t.applier.Get(ctx, o)
			if err != nil {
				return fmt.Errorf("cluster: read %s %s: %w", o.GetKind(), objName(o), err)
			}
			if owner := t.otherOwner(ctx, cur); owner != "" {
				refused = append(refused, fmt.Sprintf("%s %s belongs to PolicySource %s, not to this one (left out)", o.GetKind(), objName(o), owner))
				continue
			}
		}
		mine = append(mine, o)
	}
	objs = mine
	for _, o := range objs {
		if _, err := t.applier.DryRunOne(ctx, o, kubeapply.FieldManager); err != nil {
			return fmt.Errorf("cluster: the API server refuses %s %s (dry run; nothing applied): %w", o.GetKind(), objName(o), err)
		}
	}
	t.mu.Lock()
	t.refused = refused
	t.mu.Unlock()
	next := map[string]appliedObject{}
	var created []*unstructured.Unstructured
	for _, o := range objs {
		id := inventoryID(o)
		got, err := t.applier.ApplyOne(ctx, o, kubeapply.FieldManager)
		if err != nil {
			what := t.rollback(ctx, created)
			return fmt.Errorf("cluster: apply %s %s: %w; %s", o.GetKind(), objName(o), err, what)
		}
		if _, had := prev[id]; !had {
			created = append(created, o)
		}
		next[id] = appliedObject{obj: o, uid: string(got.GetUID()), generation: got.GetGeneration()}
	}
	gone := map[string]bool{} // uids pruned: no node may still enforce them
	if t.Prune {
		for id, old := range prev {
			if _, keep := next[id]; keep {
				continue
			}
			cur, err := t.applier.Get(ctx, old.obj)
			if err != nil {
				return fmt.Errorf("cluster: prune %s: %w", id, err)
			}
			if cur == nil || cur.GetAnnotations()[PruneAnnotation] == "disabled" {
				continue
			}
			if err := t.applier.Delete(ctx, old.obj); err != nil {
				return fmt.Errorf("cluster: prune %s %s: %w", old.obj.GetKind(), objName(old.obj), err)
			}
			gone[string(cur.GetUID())] = true
		}
	}
	t.mu.Lock()
	t.inventory, t.applied = next, revision
	t.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, t.enforceTimeout())
	defer cancel()
	if err := t.waitEnforced(wctx, next, gone); err != nil {
		return fmt.Errorf("cluster: revision %s applied, not enforced: %w", revision, err)
	}
	t.mu.Lock()
	t.enforced, t.lastGood = revision, objs
	t.mu.Unlock()
	return nil
}

// policySourceGVR is where the sources' inventories are.
var policySourceGVR = schema.GroupVersionResource{Group: v1alpha1.GroupVersion.Group, Version: v1alpha1.GroupVersion.Version, Resource: "policysources"}

// otherOwner names the other PolicySource ("namespace/name") whose inventory lists cur, as its
// labels claim; "" when cur is nil, unclaimed, this source's, or claimed by a label that the
// named source's inventory does not back.
func (t *ClusterTarget) otherOwner(ctx context.Context, cur *unstructured.Unstructured) string {
	if cur == nil {
		return ""
	}
	l := cur.GetLabels()
	n, ns := l[SourceNameLabel], l[SourceNamespaceLabel]
	if n == "" || (n == t.Source.Name && ns == t.Source.Namespace) {
		return ""
	}
	src, err := t.dyn.Resource(policySourceGVR).Namespace(ns).Get(ctx, n, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return ""
		}
		return ns + "/" + n // unreadable: left out, failing closed
	}
	entries, _, _ := unstructured.NestedSlice(src.Object, "status", "inventory", "entries")
	id := inventoryID(cur)
	for _, e := range entries {
		if m, ok := e.(map[string]any); ok && m["id"] == id {
			return ns + "/" + n
		}
	}
	return ""
}

// Refused lists the objects the last Apply left out because another source owns them.
func (t *ClusterTarget) Refused() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.refused)
}

// CorrectDrift applies the objects of the enforced revision again, as Flux does every interval:
// one deleted or edited behind the source's back is put back (server-side apply of an unchanged
// object changes nothing). It returns how many it applied.
func (t *ClusterTarget) CorrectDrift(ctx context.Context) (int, error) {
	if err := t.init(); err != nil {
		return 0, err
	}
	t.mu.Lock()
	good := t.lastGood
	t.mu.Unlock()
	var errs []error
	for _, o := range good {
		if _, err := t.applier.ApplyOne(ctx, o, kubeapply.FieldManager); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", o.GetKind(), objName(o), err))
		}
	}
	return len(good), errors.Join(errs...)
}

func (t *ClusterTarget) enforceTimeout() time.Duration {
	if t.EnforceTimeout > 0 {
		return t.EnforceTimeout
	}
	return 2 * time.Minute
}

// rollback puts back the last enforced revision's objects and deletes the ones this attempt
// created; it says what it did.
func (t *ClusterTarget) rollback(ctx context.Context, created []*unstructured.Unstructured) string {
	t.mu.Lock()
	good := t.lastGood
	rev := t.enforced
	t.mu.Unlock()
	var errs []error
	for _, o := range created {
		errs = append(errs, t.applier.Delete(ctx, o))
	}
	for _, o := range good {
		_, err := t.applier.ApplyOne(ctx, o, kubeapply.FieldManager)
		errs = append(errs, err)
	}
	what := "rolled back to the objects of the last enforced revision " + rev
	if rev == "" {
		what = "deleted what this attempt created (no revision was enforced before)"
	}
	if err := errors.Join(errs...); err != nil {
		what += " (incompletely: " + err.Error() + ")"
	}
	t.mu.Lock()
	t.rolledBack = what
	t.mu.Unlock()
	return what
}

// adoptInventory reads back the objects a source's status inventory lists (Flux's ids, with
// their versions); those gone since are left out.
func (t *ClusterTarget) adoptInventory(ctx context.Context, entries []v1alpha1.ResourceRef) (map[string]appliedObject, error) {
	out := map[string]appliedObject{}
	for _, e := range entries {
		parts := strings.Split(e.ID, "_")
		if len(parts) != 4 {
			continue
		}
		o := &unstructured.Unstructured{}
		o.SetGroupVersionKind(schema.GroupVersionKind{Group: parts[2], Version: e.V, Kind: parts[3]})
		o.SetNamespace(parts[0])
		o.SetName(parts[1])
		cur, err := t.applier.Get(ctx, o)
		if meta.IsNoMatchError(err) {
			continue // its kind is gone from the cluster (a CRD removed): nothing of it is left
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", e.ID, err)
		}
		if cur != nil {
			out[e.ID] = appliedObject{obj: cur, uid: string(cur.GetUID()), generation: cur.GetGeneration()}
		}
	}
	return out, nil
}

// readInventory finds what the source applied before (its owner labels): after a restart the
// controller prunes against the cluster, not an empty memory.
func (t *ClusterTarget) readInventory(ctx context.Context) (map[string]appliedObject, error) {
	out := map[string]appliedObject{}
	sel := metav1.ListOptions{LabelSelector: SourceNameLabel + "=" + t.Source.Name + "," + SourceNamespaceLabel + "=" + t.Source.Namespace}
	for _, gvr := range []schema.GroupVersionResource{
		{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
		{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"},
		{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	} {
		list, err := t.dyn.Resource(gvr).List(ctx, sel)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", gvr.Resource, err)
		}
		for i := range list.Items {
			o := &list.Items[i]
			out[inventoryID(o)] = appliedObject{obj: o, uid: string(o.GetUID()), generation: o.GetGeneration()}
		}
	}
	return out, nil
}

// waitEnforced polls every node's NodePolicyStatus until each reports every applied object at
// its generation (or refuses one: an error at once) and none of the pruned ones.
func (t *ClusterTarget) waitEnforced(ctx context.Context, want map[string]appliedObject, gone map[string]bool) error {
	for {
		nc, err := t.countNodes(ctx, want, gone)
		if err != nil {
			return err
		}
		t.mu.Lock()
		t.nodes = nc
		t.mu.Unlock()
		if nc.total > 0 && nc.enforced == nc.total {
			return nil
		}
		select {
		case <-ctx.Done():
			if nc.total == 0 {
				return errors.New("no node reports a NodePolicyStatus (is the netpact enforcer running?)")
			}
			return fmt.Errorf("enforced on %d/%d nodes; lagging: %s", nc.enforced, nc.total, strings.Join(nc.lagging, "; "))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// refusedError is a node refusing an applied object: waiting longer cannot help.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

func (t *ClusterTarget) countNodes(ctx context.Context, want map[string]appliedObject, gone map[string]bool) (nodeCount, error) {
	nodes, err := t.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nodeCount{}, fmt.Errorf("list nodes: %w", err)
	}
	// Every node's status in one read: polling stays two requests however many nodes.
	list, err := t.dyn.Resource(npsResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nodeCount{}, fmt.Errorf("list node policy statuses: %w", err)
	}
	statuses := map[string]*unstructured.Unstructured{}
	for i := range list.Items {
		statuses[list.Items[i].GetName()] = &list.Items[i]
	}
	var nc nodeCount
	for _, n := range nodes.Items {
		if !nodeReady(n) {
			continue // a node that is down enforces nothing new; it is not waited for
		}
		nc.total++
		why, err := nodeLag(n.Name, statuses[n.Name], want, gone)
		if err != nil {
			return nodeCount{}, err
		}
		if why == "" {
			nc.enforced++
		} else {
			nc.lagging = append(nc.lagging, n.Name+": "+why)
		}
	}
	sort.Strings(nc.lagging)
	return nc, nil
}

func nodeReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// nodeLag says what a node does not enforce yet ("" when it enforces everything).
func nodeLag(node string, u *unstructured.Unstructured, want map[string]appliedObject, gone map[string]bool) (string, error) {
	if u == nil {
		return "no NodePolicyStatus yet", nil
	}
	var nps v1alpha1.NodePolicyStatus
	raw, _ := json.Marshal(u.Object)
	if err := json.Unmarshal(raw, &nps); err != nil {
		return "", fmt.Errorf("node %s status: %w", node, err)
	}
	have := map[string]v1alpha1.EnforcedPolicy{}
	for _, p := range nps.Status.Policies {
		have[p.UID] = p
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		w := want[id]
		p, ok := have[w.uid]
		switch {
		case ok && p.Error != "" && p.ObservedGeneration >= w.generation:
			return "", &refusedError{fmt.Sprintf("node %s refuses %s %s: %s", node, w.obj.GetKind(), objName(w.obj), p.Error)}
		case !ok:
			return fmt.Sprintf("%s %s not seen yet", w.obj.GetKind(), objName(w.obj)), nil
		case p.Generation < w.generation:
			return fmt.Sprintf("%s %s at generation %d, not %d", w.obj.GetKind(), objName(w.obj), p.Generation, w.generation), nil
		case p.Audit && !policy.AuditAnnotated(w.obj.GetAnnotations()):
			// Server-side apply does not remove an annotation another writer added: a policy
			// put in audit mode outside Git stays so, and its denies are not enforced. Said, not
			// counted as enforced.
			return fmt.Sprintf("%s %s is in audit mode on node %s, but not in Git (an audit annotation was added outside Git: its denies pass); remove the annotation",
				w.obj.GetKind(), objName(w.obj), node), nil
		case p.Revision != w.obj.GetAnnotations()[v1alpha1.RevisionAnnotation]:
			// A change of annotations only (audit mode, the rules' Git lines) keeps the
			// generation: the revision the node loaded says whether it has the change.
			return fmt.Sprintf("%s %s at revision %s, not %s", w.obj.GetKind(), objName(w.obj), p.Revision,
				w.obj.GetAnnotations()[v1alpha1.RevisionAnnotation]), nil
		}
	}
	for uid := range gone {
		if p, ok := have[uid]; ok {
			return fmt.Sprintf("pruned %s %s still enforced", p.Kind, p.Name), nil
		}
	}
	return "", nil
}

// Applied is the revision last written to the API server (enforced or not yet).
func (t *ClusterTarget) Applied() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.applied
}

func (t *ClusterTarget) Enforced() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.enforced
}

// Inventory is what the last applied revision put in the cluster, as Flux writes it.
func (t *ClusterTarget) Inventory() *v1alpha1.ResourceInventory {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inventory == nil {
		return nil
	}
	inv := &v1alpha1.ResourceInventory{Entries: []v1alpha1.ResourceRef{}}
	for id, o := range t.inventory {
		inv.Entries = append(inv.Entries, v1alpha1.ResourceRef{ID: id, V: o.obj.GroupVersionKind().Version})
	}
	sort.Slice(inv.Entries, func(i, j int) bool { return inv.Entries[i].ID < inv.Entries[j].ID })
	return inv
}

// Nodes says on how many nodes the last applied revision is enforced, and which lag.
func (t *ClusterTarget) Nodes() (enforced, total int, lagging []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nodes.enforced, t.nodes.total, append([]string(nil), t.nodes.lagging...)
}

// RolledBack says what the last failed Apply did with the objects it had written ("" when it
// wrote none).
func (t *ClusterTarget) RolledBack() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rolledBack
}

func objName(o *unstructured.Unstructured) string {
	if o.GetNamespace() != "" {
		return o.GetNamespace() + "/" + o.GetName()
	}
	return o.GetName()
}
