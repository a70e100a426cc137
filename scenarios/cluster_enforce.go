package scenarios

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/policy"
)

// scenarioLabel marks the policy objects a scenario run applied, so that the next run removes
// what a killed one left.
const scenarioLabel = "netpact.io/scenario"

// scenarioManager is the server-side apply field manager of the scenario runner.
const scenarioManager = "netpact-scenarios"

var npsResource = schema.GroupVersionResource{Group: "netpact.io", Version: "v1alpha1", Resource: "nodepolicystatuses"}

// appliedPolicy is a policy object the backend applied, as the API server stored it.
type appliedPolicy struct {
	obj        *unstructured.Unstructured
	uid        string
	generation int64
}

// Enforce makes the cluster's policies exactly the given ones, through the API server: each is
// server-side applied, those of the previous step that are gone are deleted. It returns once
// every node's NodePolicyStatus reports each policy at the generation applied and none of the
// deleted ones, so that a probe never races the enforcers.
func (c *Cluster) Enforce(pc *policy.Cluster, policies []*policy.Policy) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.EnforceTimeout)
	defer cancel()
	if err := c.ensureApplier(); err != nil {
		return err
	}
	version, err := c.relabel(ctx, pc)
	if err != nil {
		return err
	}
	c.minVersion = max(c.minVersion, version)
	want := map[policy.Key]*unstructured.Unstructured{}
	for _, p := range policies {
		obj, err := policyObject(p)
		if err != nil {
			return err
		}
		want[p.Key] = obj
	}
	var gone []string
	for k, ap := range c.applied {
		if _, ok := want[k]; ok {
			continue
		}
		if err := c.applier.Delete(ctx, ap.obj); err != nil {
			return fmt.Errorf("delete %s: %w", k, err)
		}
		gone = append(gone, ap.uid)
		delete(c.applied, k)
	}
	keys := make([]policy.Key, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		got, err := c.applier.ApplyOne(ctx, want[k], scenarioManager)
		if err != nil {
			return fmt.Errorf("apply %s: %w", k, err)
		}
		if prev, ok := c.applied[k]; ok && prev.uid != string(got.GetUID()) {
			gone = append(gone, prev.uid)
		}
		c.applied[k] = appliedPolicy{obj: want[k], uid: string(got.GetUID()), generation: got.GetGeneration()}
	}
	return c.waitEnforced(ctx, gone)
}

// policyObject is a policy as the object to apply: as written, in its namespace, labeled.
func policyObject(p *policy.Policy) (*unstructured.Unstructured, error) {
	if len(p.Raw) == 0 {
		return nil, fmt.Errorf("policy %s has no object to apply", p.Key)
	}
	obj := &unstructured.Unstructured{}
	if err := json.Unmarshal(p.Raw, &obj.Object); err != nil {
		return nil, fmt.Errorf("policy %s: %w", p.Key, err)
	}
	if p.Namespace != "" {
		obj.SetNamespace(p.Namespace)
	}
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[scenarioLabel] = "true"
	obj.SetLabels(labels)
	// Where the policy was written, as the reconciler writes a Git origin (without repository
	// or revision): the enforcers' flows then end each deciding policy with "at file:line", so
	// a failing step's flow lines say which rule of which file decided. Annotations the policy
	// has of its own win.
	if p.Origin == nil && p.Source.File != "" {
		ann := obj.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		o := &policy.Origin{Path: p.Source.File, Line: p.Source.Line, RuleLines: p.RuleLines()}
		for k, v := range o.Annotations() {
			if _, ok := ann[k]; !ok {
				ann[k] = v
			}
		}
		obj.SetAnnotations(ann)
	}
	return obj, nil
}

func (c *Cluster) ensureApplier() error {
	if c.applier != nil {
		return nil
	}
	a, err := kubeapply.New(c.opts.Config)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(c.opts.Config)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	c.applier, c.dyn = a, dyn
	return nil
}

// waitEnforced polls the nodes' status objects until every node enforces what was applied.
func (c *Cluster) waitEnforced(ctx context.Context, gone []string) error {
	goneSet := map[string]bool{}
	for _, u := range gone {
		goneSet[u] = true
	}
	var last string
	for {
		lagging, err := c.lagging(ctx, goneSet)
		if err == nil && len(lagging) == 0 {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = strings.Join(lagging, "; ")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the nodes do not enforce the step's policies after %s: %s", c.opts.EnforceTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// lagging says which node does not report which applied policy (or still reports a deleted one).
func (c *Cluster) lagging(ctx context.Context, gone map[string]bool) ([]string, error) {
	var out []string
	for _, n := range c.nodes {
		u, err := c.dyn.Resource(npsResource).Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			out = append(out, fmt.Sprintf("node %s: %v", n.Name, err))
			continue
		}
		var nps v1alpha1.NodePolicyStatus
		raw, _ := json.Marshal(u.Object)
		if err := json.Unmarshal(raw, &nps); err != nil {
			return nil, fmt.Errorf("node %s status: %w", n.Name, err)
		}
		if nps.Status.ObservedVersion < c.minVersion {
			out = append(out, fmt.Sprintf("node %s: has not seen the label changes yet", n.Name))
		}
		if nps.Status.ServicesObservedVersion < c.minServicesVersion {
			out = append(out, fmt.Sprintf("node %s: does not translate the scenario's services yet", n.Name))
		}
		have := map[string]v1alpha1.EnforcedPolicy{}
		for _, ep := range nps.Status.Policies {
			have[ep.UID] = ep
		}
		for k, ap := range c.applied {
			ep, ok := have[ap.uid]
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("node %s: %s not seen yet", n.Name, k))
			case ep.Error != "":
				return nil, fmt.Errorf("node %s refuses %s: %s", n.Name, k, ep.Error)
			case ep.Generation < ap.generation:
				out = append(out, fmt.Sprintf("node %s: %s at generation %d, not %d", n.Name, k, ep.Generation, ap.generation))
			}
		}
		for uid := range gone {
			if ep, ok := have[uid]; ok {
				out = append(out, fmt.Sprintf("node %s: still has %s %s/%s", n.Name, ep.Kind, ep.Namespace, ep.Name))
			}
		}
		for _, ee := range nps.Status.EndpointErrors {
			for _, p := range c.pods {
				for _, pod := range p {
					if pod.Spec.NodeName == n.Name && ee.Pod == pod.Namespace+"/"+pod.Name {
						return nil, fmt.Errorf("node %s failed pod %s closed: %s", n.Name, ee.Pod, ee.Error)
					}
				}
			}
		}
	}
	return out, nil
}

// removePolicies deletes every policy a scenario run applied (this one's, or a killed run's) and
// returns their uids.
func (c *Cluster) removePolicies(ctx context.Context) ([]string, error) {
	if err := c.ensureApplier(); err != nil {
		return nil, err
	}
	var errs []error
	var uids []string
	for _, gvr := range []schema.GroupVersionResource{
		{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
		{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
		{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"},
	} {
		list, err := c.dyn.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: scenarioLabel})
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s: %w", gvr.Resource, err))
			continue
		}
		for i := range list.Items {
			it := &list.Items[i]
			var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
			if it.GetNamespace() != "" {
				ri = c.dyn.Resource(gvr).Namespace(it.GetNamespace())
			}
			if err := ri.Delete(ctx, it.GetName(), metav1.DeleteOptions{}); err != nil {
				errs = append(errs, fmt.Errorf("delete %s %s: %w", it.GetKind(), it.GetName(), err))
				continue
			}
			uids = append(uids, string(it.GetUID()))
		}
	}
	c.applied = map[policy.Key]appliedPolicy{}
	return uids, errors.Join(errs...)
}
