package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/deploy"
)

func policySourceClient(cfg *rest.Config) (client.Client, error) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

// clusterHealth is the cluster's netpact health as `netpact status` reports it, as cilium status
// does for Cilium: the enforcer DaemonSet, the controller and the admission webhook, the
// PolicySources, and the nodes whose status reports errors. -o json and -o yaml print it as it is.
type clusterHealth struct {
	Healthy bool `json:"healthy"`
	// Namespace is the PolicySources' namespace; empty for all namespaces.
	Namespace  string           `json:"namespace,omitempty"`
	Enforcer   workloadHealth   `json:"enforcer"`
	Controller workloadHealth   `json:"controller"`
	Admission  workloadHealth   `json:"admission"`
	Sources    []sourceHealth   `json:"sources"`
	Nodes      nodeHealthCounts `json:"nodes"`
}

// workloadHealth is a DaemonSet's or a Deployment's: Desired, Ready, Available and UpToDate are
// its status's counts (a Deployment's Desired being its spec's replicas). Healthy is false for a
// workload not installed, though only the enforcer's absence makes the cluster unhealthy.
type workloadHealth struct {
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Installed bool   `json:"installed"`
	Healthy   bool   `json:"healthy"`
	Desired   int32  `json:"desired"`
	Ready     int32  `json:"ready"`
	Available int32  `json:"available"`
	UpToDate  int32  `json:"upToDate"`
}

// sourceHealth is a PolicySource's line: its Ready condition, how many nodes enforce it, at which
// revision, and whatever it says is wrong.
type sourceHealth struct {
	Namespace     string   `json:"namespace"`
	Name          string   `json:"name"`
	Ready         string   `json:"ready"`
	Reason        string   `json:"reason,omitempty"`
	Message       string   `json:"message,omitempty"`
	EnforcedNodes string   `json:"enforcedNodes,omitempty"`
	Revision      string   `json:"revision,omitempty"`
	LaggingNodes  []string `json:"laggingNodes,omitempty"`
	Warnings      []string `json:"warnings,omitempty"`
}

// nodeHealthCounts counts the nodes that report a NodePolicyStatus, and names those with errors.
type nodeHealthCounts struct {
	Reporting  int          `json:"reporting"`
	WithErrors []nodeErrors `json:"withErrors"`
}

type nodeErrors struct {
	Node   string   `json:"node"`
	Errors []string `json:"errors"`
}

// readClusterHealth reads the cluster's netpact health; namespace narrows the PolicySources
// down to one namespace's.
func readClusterHealth(ctx context.Context, cfg *rest.Config, namespace string) (*clusterHealth, error) {
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	cl, err := policySourceClient(cfg)
	if err != nil {
		return nil, err
	}
	h := &clusterHealth{Namespace: namespace, Sources: []sourceHealth{}, Nodes: nodeHealthCounts{WithErrors: []nodeErrors{}}}
	for _, step := range []func() error{
		func() error { return h.readEnforcer(ctx, kc) },
		func() error { return h.readDeployments(ctx, kc) },
		func() error { return h.readSources(ctx, cl) },
		func() error { return h.readNodes(ctx, cfg) },
	} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	h.Healthy = h.Enforcer.Healthy && h.Nodes.healthy()
	for _, d := range []workloadHealth{h.Controller, h.Admission} {
		// A controller or webhook not installed is a choice; one installed and not ready is not.
		h.Healthy = h.Healthy && (d.Healthy || !d.Installed)
	}
	for _, s := range h.Sources {
		h.Healthy = h.Healthy && s.healthy()
	}
	return h, nil
}

func (h *clusterHealth) readEnforcer(ctx context.Context, kc kubernetes.Interface) error {
	h.Enforcer = workloadHealth{Kind: "DaemonSet", Name: deploy.EnforcerName}
	ds, err := deploy.Enforcer(ctx, kc)
	switch {
	case errors.Is(err, deploy.ErrNotInstalled):
		return nil
	case err != nil:
		return fmt.Errorf("read the enforcer DaemonSet: %w", err)
	}
	h.Enforcer.Name = ds.Namespace + "/" + ds.Name
	s := ds.Status
	h.Enforcer.Installed = true
	h.Enforcer.Desired, h.Enforcer.Ready, h.Enforcer.Available, h.Enforcer.UpToDate =
		s.DesiredNumberScheduled, s.NumberReady, s.NumberAvailable, s.UpdatedNumberScheduled
	h.Enforcer.Healthy = s.DesiredNumberScheduled > 0 && s.NumberReady == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled
	return nil
}

func (h *clusterHealth) readDeployments(ctx context.Context, kc kubernetes.Interface) error {
	for _, d := range []struct {
		into       *workloadHealth
		name, what string
	}{
		{&h.Controller, deploy.ControllerName, "controller"},
		{&h.Admission, deploy.AdmissionName, "admission webhook"},
	} {
		*d.into = workloadHealth{Kind: "Deployment", Name: d.name}
		dep, err := deploy.Deployment(ctx, kc, d.name)
		switch {
		case errors.Is(err, deploy.ErrNotInstalled):
			continue
		case err != nil:
			return fmt.Errorf("read the %s Deployment: %w", d.what, err)
		}
		want := int32(1)
		if dep.Spec.Replicas != nil {
			want = *dep.Spec.Replicas
		}
		*d.into = workloadHealth{Kind: "Deployment", Name: dep.Namespace + "/" + dep.Name, Installed: true, Healthy: dep.Status.ReadyReplicas >= want && want > 0,
			Desired: want, Ready: dep.Status.ReadyReplicas, Available: dep.Status.AvailableReplicas, UpToDate: dep.Status.UpdatedReplicas}
	}
	return nil
}

func (h *clusterHealth) readSources(ctx context.Context, cl client.Client) error {
	list, err := listPolicySources(ctx, cl, h.Namespace)
	if err != nil {
		return err
	}
	for i := range list {
		h.Sources = append(h.Sources, healthOf(&list[i]))
	}
	return nil
}

// listPolicySources lists the PolicySources of namespace, of every namespace when empty.
func listPolicySources(ctx context.Context, cl client.Client, namespace string) ([]v1alpha1.PolicySource, error) {
	var list v1alpha1.PolicySourceList
	if err := cl.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list PolicySources: %w", err)
	}
	return list.Items, nil
}

func healthOf(ps *v1alpha1.PolicySource) sourceHealth {
	s := sourceHealth{Namespace: ps.Namespace, Name: ps.Name, Ready: string(metav1.ConditionUnknown),
		EnforcedNodes: ps.Status.EnforcedNodes, Revision: ps.Status.LastEnforcedRevision,
		LaggingNodes: ps.Status.LaggingNodes, Warnings: ps.Status.Warnings}
	if ready := conditions.Get(ps, meta.ReadyCondition); ready != nil {
		s.Ready, s.Reason, s.Message = string(ready.Status), ready.Reason, ready.Message
	}
	return s
}

func (s sourceHealth) healthy() bool { return s.Ready == string(metav1.ConditionTrue) }

func (h *clusterHealth) readNodes(ctx context.Context, cfg *rest.Config) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	npsList, err := dyn.Resource(v1alpha1.GroupVersion.WithResource("nodepolicystatuses")).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list NodePolicyStatuses: %w", err)
	}
	h.Nodes.Reporting = len(npsList.Items)
	for _, u := range npsList.Items {
		var nps v1alpha1.NodePolicyStatus
		raw, _ := json.Marshal(u.Object)
		if json.Unmarshal(raw, &nps) != nil {
			continue
		}
		if why := nodeTroubles(&nps); len(why) > 0 {
			h.Nodes.WithErrors = append(h.Nodes.WithErrors, nodeErrors{Node: nps.Name, Errors: why})
		}
	}
	sort.Slice(h.Nodes.WithErrors, func(i, j int) bool { return h.Nodes.WithErrors[i].Node < h.Nodes.WithErrors[j].Node })
	return nil
}

func (n nodeHealthCounts) healthy() bool { return len(n.WithErrors) == 0 }

// nodeTroubles are the errors a node's status reports: its sync's, its policies', its pods'.
func nodeTroubles(nps *v1alpha1.NodePolicyStatus) []string {
	var why []string
	if nps.Status.Error != "" {
		why = append(why, nps.Status.Error)
	}
	for _, p := range nps.Status.Policies {
		if p.Error != "" {
			why = append(why, fmt.Sprintf("%s %s/%s: %s", p.Kind, p.Namespace, p.Name, p.Error))
		}
	}
	for _, e := range nps.Status.EndpointErrors {
		why = append(why, fmt.Sprintf("pod %s failed closed: %s", e.Pod, e.Error))
	}
	return why
}

// print writes the health on one screen, a line not healthy marked.
func (h *clusterHealth) print(w io.Writer) {
	e := h.Enforcer
	if e.Installed {
		fmt.Fprintf(w, "enforcer:    DaemonSet %s desired %d, ready %d, available %d, up to date %d%s\n",
			e.Name, e.Desired, e.Ready, e.Available, e.UpToDate, notHealthy(e.Healthy))
	} else {
		fmt.Fprintf(w, "enforcer:    not installed (%s DaemonSet)%s\n", e.Name, notHealthy(false))
	}
	for _, d := range []struct {
		label string
		w     workloadHealth
	}{{"controller: ", h.Controller}, {"admission:  ", h.Admission}} {
		if d.w.Installed {
			fmt.Fprintf(w, "%s Deployment %s ready %d/%d%s\n", d.label, d.w.Name, d.w.Ready, d.w.Desired, notHealthy(d.w.Healthy))
		} else {
			fmt.Fprintf(w, "%s not installed (%s; deploy/reconciler)\n", d.label, d.w.Name)
		}
	}
	in := ""
	if h.Namespace != "" {
		in = " in " + h.Namespace
	}
	fmt.Fprintf(w, "sources:     %d PolicySource(s)%s\n", len(h.Sources), in)
	for _, s := range h.Sources {
		fmt.Fprintf(w, "  %s/%s: Ready %s, enforced on %s nodes, revision %s%s\n", s.Namespace, s.Name, s.Ready,
			orDash(s.EnforcedNodes), orDash(s.Revision), notHealthy(s.healthy()))
		if !s.healthy() && s.Message != "" {
			fmt.Fprintf(w, "    %s\n", s.Message)
		}
		for _, l := range s.LaggingNodes {
			fmt.Fprintf(w, "    lagging: %s\n", l)
		}
		for _, warning := range s.Warnings {
			fmt.Fprintf(w, "    warning: %s\n", warning)
		}
	}
	fmt.Fprintf(w, "nodes:       %d report status, %d with errors%s\n", h.Nodes.Reporting, len(h.Nodes.WithErrors), notHealthy(h.Nodes.healthy()))
	for _, n := range h.Nodes.WithErrors {
		fmt.Fprintf(w, "  %s: %s\n", n.Node, strings.Join(n.Errors, "; "))
	}
}

// notHealthy is the end of a line: a marker when the line is not healthy.
func notHealthy(ok bool) string {
	if !ok {
		return "  <- not healthy"
	}
	return ""
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
