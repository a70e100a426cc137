// Package kubeapply applies Kubernetes objects from YAML with server-side apply and waits for
// what netpact needs to be ready: nodes, pods, DaemonSets, Deployments and StatefulSets.
package kubeapply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// FieldManager is the manager of the fields netpact applies.
const FieldManager = "netpact"

// Decode reads every object of a multi-document YAML stream; source names it in errors.
func Decode(source string, data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		if obj.GetKind() == "" || obj.GetAPIVersion() == "" {
			return nil, fmt.Errorf("%s: document %d: apiVersion and kind are required", source, i)
		}
		out = append(out, obj)
	}
}

// Applier applies objects to one cluster.
type Applier struct {
	dyn    dynamic.Interface
	mapper meta.ResettableRESTMapper
}

// New returns an applier for the cluster cfg points at.
func New(cfg *rest.Config) (*Applier, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	return &Applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, nil
}

// Apply server-side applies the objects in order (namespaces and CRDs first when listed first).
func (a *Applier) Apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	for _, obj := range objs {
		if err := a.apply(ctx, obj); err != nil {
			return fmt.Errorf("apply %s %s: %w", obj.GetKind(), name(obj), err)
		}
	}
	return nil
}

func name(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() != "" {
		return obj.GetNamespace() + "/" + obj.GetName()
	}
	return obj.GetName()
}

func (a *Applier) apply(ctx context.Context, obj *unstructured.Unstructured) error {
	_, err := a.ApplyOne(ctx, obj, FieldManager)
	return err
}

// resource is the dynamic client of an object's kind, in its namespace.
func (a *Applier) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		a.mapper.Reset()
		mapping, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, err
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := obj.GetNamespace()
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		return a.dyn.Resource(mapping.Resource).Namespace(ns), nil
	}
	return a.dyn.Resource(mapping.Resource), nil
}

// ApplyOne server-side applies one object as manager, with strict field validation (an unknown
// field is an error, not silently pruned), and returns the object the API server stored.
func (a *Applier) ApplyOne(ctx context.Context, obj *unstructured.Unstructured, manager string) (*unstructured.Unstructured, error) {
	return a.apply1(ctx, obj, manager, false)
}

// DryRunOne is ApplyOne with dryRun=All: the API server validates and admits the object
// (webhooks included) and stores nothing.
func (a *Applier) DryRunOne(ctx context.Context, obj *unstructured.Unstructured, manager string) (*unstructured.Unstructured, error) {
	return a.apply1(ctx, obj, manager, true)
}

func (a *Applier) apply1(ctx context.Context, obj *unstructured.Unstructured, manager string, dryRun bool) (*unstructured.Unstructured, error) {
	ri, err := a.resource(obj)
	if err != nil {
		return nil, err
	}
	data, err := obj.MarshalJSON()
	if err != nil {
		return nil, err
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: manager, Force: &force, FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, opts)
}

// Get reads an object as the API server has it (nil, nil when it does not exist).
func (a *Applier) Get(ctx context.Context, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	ri, err := a.resource(obj)
	if err != nil {
		return nil, err
	}
	got, err := ri.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return got, err
}

// Delete deletes an object; one already gone is not an error.
func (a *Applier) Delete(ctx context.Context, obj *unstructured.Unstructured) error {
	ri, err := a.resource(obj)
	if err != nil {
		return err
	}
	err = ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// poll calls check every interval until it reports done, fails, or ctx ends; the last reason why
// it was not done is in the timeout error.
func poll(ctx context.Context, what string, check func() (bool, string, error)) error {
	var last string
	for {
		done, why, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		last = why
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last seen: %s)", what, ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}

// WaitNodesReady waits for n nodes, all Ready.
func WaitNodesReady(ctx context.Context, c kubernetes.Interface, n int) error {
	return poll(ctx, fmt.Sprintf("%d nodes Ready", n), func() (bool, string, error) {
		list, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		var notReady []string
		for _, node := range list.Items {
			if !conditionTrue(node.Status.Conditions, corev1.NodeReady) {
				notReady = append(notReady, node.Name)
			}
		}
		if len(list.Items) < n {
			return false, fmt.Sprintf("%d of %d nodes registered", len(list.Items), n), nil
		}
		return len(notReady) == 0, "not Ready: " + strings.Join(notReady, ", "), nil
	})
}

func conditionTrue(conds []corev1.NodeCondition, t corev1.NodeConditionType) bool {
	for _, c := range conds {
		if c.Type == t {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitPodsReady waits until the namespace has pods and every one is Ready (Succeeded pods of
// finished jobs count as done).
func WaitPodsReady(ctx context.Context, c kubernetes.Interface, namespace string) error {
	return poll(ctx, "every pod of "+namespace+" Ready", func() (bool, string, error) {
		list, err := c.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(list.Items) == 0 {
			return false, "no pods", nil
		}
		var waiting []string
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodSucceeded {
				continue
			}
			if !PodReady(&p) {
				waiting = append(waiting, p.Name+" ("+podState(&p)+")")
			}
		}
		return len(waiting) == 0, "not Ready: " + strings.Join(waiting, ", "), nil
	})
}

// PodReady reports the pod's Ready condition.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podState(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			return w.Reason + ": " + w.Message
		}
	}
	return string(p.Status.Phase)
}

// WaitWorkloads waits for the DaemonSets, Deployments and StatefulSets among objs to have every
// replica ready at their current generation.
func WaitWorkloads(ctx context.Context, c kubernetes.Interface, objs []*unstructured.Unstructured) error {
	for _, obj := range objs {
		ns, n := obj.GetNamespace(), obj.GetName()
		var check func() (bool, string, error)
		switch obj.GetKind() {
		case "DaemonSet":
			check = func() (bool, string, error) {
				d, err := c.AppsV1().DaemonSets(ns).Get(ctx, n, metav1.GetOptions{})
				if err != nil {
					return false, err.Error(), nil
				}
				s := d.Status
				return d.Generation == s.ObservedGeneration && s.DesiredNumberScheduled > 0 &&
						s.NumberReady == s.DesiredNumberScheduled && s.UpdatedNumberScheduled == s.DesiredNumberScheduled,
					fmt.Sprintf("%d/%d ready", s.NumberReady, s.DesiredNumberScheduled), nil
			}
		case "Deployment":
			check = func() (bool, string, error) {
				d, err := c.AppsV1().Deployments(ns).Get(ctx, n, metav1.GetOptions{})
				if err != nil {
					return false, err.Error(), nil
				}
				want := int32(1)
				if d.Spec.Replicas != nil {
					want = *d.Spec.Replicas
				}
				s := d.Status
				return d.Generation == s.ObservedGeneration && s.ReadyReplicas == want && s.UpdatedReplicas == want,
					fmt.Sprintf("%d/%d ready", s.ReadyReplicas, want), nil
			}
		case "StatefulSet":
			check = func() (bool, string, error) {
				d, err := c.AppsV1().StatefulSets(ns).Get(ctx, n, metav1.GetOptions{})
				if err != nil {
					return false, err.Error(), nil
				}
				want := int32(1)
				if d.Spec.Replicas != nil {
					want = *d.Spec.Replicas
				}
				return statefulSetReady(d, want), fmt.Sprintf("%d/%d ready", d.Status.ReadyReplicas, want), nil
			}
		default:
			continue
		}
		if err := poll(ctx, obj.GetKind()+" "+name(obj), check); err != nil {
			return err
		}
	}
	return nil
}

func statefulSetReady(d *appsv1.StatefulSet, want int32) bool {
	return d.Generation == d.Status.ObservedGeneration && d.Status.ReadyReplicas == want
}
