// Package deploy names what the manifests and the Helm chart install, and finds it on a cluster
// in whatever namespace it was installed: kube-system (the plain manifests), or the Helm
// release's namespace.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The app.kubernetes.io/name label of each part's workload and pods.
const (
	EnforcerName   = "netpact"
	ControllerName = "netpact-reconciler"
	AdmissionName  = "netpact-admission"
	// EnforcerContainer is the enforcer DaemonSet's container that runs the node agent.
	EnforcerContainer = "enforcer"
)

// Selector is the label selector of a part's workload and pods.
func Selector(name string) string { return "app.kubernetes.io/name=" + name }

// ErrNotInstalled is what Enforcer and Deployment wrap when the part is not on the cluster.
var ErrNotInstalled = errors.New("not installed")

// Enforcer is the enforcer DaemonSet (named netpact), in any namespace; exactly one may be
// installed.
func Enforcer(ctx context.Context, kc kubernetes.Interface) (*appsv1.DaemonSet, error) {
	list, err := kc.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + EnforcerName})
	if err != nil {
		return nil, fmt.Errorf("find the enforcer DaemonSet: %w", err)
	}
	return one("enforcer DaemonSet", EnforcerName, list.Items)
}

// Deployment is the controller's or the admission webhook's Deployment (name is ControllerName
// or AdmissionName), in any namespace; exactly one may be installed.
func Deployment(ctx context.Context, kc kubernetes.Interface, name string) (*appsv1.Deployment, error) {
	list, err := kc.AppsV1().Deployments("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		return nil, fmt.Errorf("find the %s Deployment: %w", name, err)
	}
	return one(name+" Deployment", name, list.Items)
}

// one is the item named name: an error wrapping ErrNotInstalled without one, an error naming
// them with several.
func one[T any, P interface {
	*T
	GetName() string
	GetNamespace() string
}](what, name string, items []T) (P, error) {
	var found []P
	for i := range items {
		if P(&items[i]).GetName() == name {
			found = append(found, P(&items[i]))
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("the %s (%s) in any namespace: %w", what, name, ErrNotInstalled)
	case 1:
		return found[0], nil
	}
	names := make([]string, len(found))
	for i, o := range found {
		names[i] = o.GetNamespace() + "/" + o.GetName()
	}
	return nil, fmt.Errorf("find the %s: %d installed (%s); install netpact once", what, len(found), strings.Join(names, ", "))
}
