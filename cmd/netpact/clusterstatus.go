package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/reconciler"
)

func policySourceClient(cfg *rest.Config) (client.Client, error) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(cfg, client.Options{Scheme: scheme})
}

func newReconcileCommand() *cobra.Command {
	var namespace string
	var timeout time.Duration
	var kube *clusterFlags
	cmd := &cobra.Command{Use: "reconcile", Short: "Ask the cluster controller to reconcile now"}
	src := &cobra.Command{
		Use:   "source NAME",
		Short: "Reconcile a PolicySource now and wait for the result (as flux reconcile does)",
		Long: `reconcile source sets the reconcile.fluxcd.io/requestedAt annotation of the PolicySource, waits
until the controller reports it handled, and prints the outcome: exit 0 when Ready, 1 otherwise.
The cluster is the one kubectl would talk to: --kubeconfig, else KUBECONFIG, else ~/.kube/config,
else the pod's in-cluster configuration; --context picks a context of it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := kube.restConfig()
			if err != nil {
				return err
			}
			cl, err := policySourceClient(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			st, err := reconciler.ReconcileNow(ctx, cl, ktypes.NamespacedName{Namespace: namespace, Name: args[0]})
			if err != nil {
				return err
			}
			printStatus(cmd.OutOrStdout(), st)
			if !conditions.IsReady(st) {
				return exitError{1}
			}
			return nil
		},
	}
	kube = addClusterFlags(src.Flags())
	src.Flags().StringVarP(&namespace, "namespace", "n", "netpact-system", "the PolicySource's namespace")
	src.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "how long to wait for the result")
	cmd.AddCommand(src)
	return cmd
}

// clusterStatus prints the cluster's netpact health on one screen, as cilium status does for
// Cilium: the enforcer DaemonSet, the controller, every PolicySource, and nodes with errors.
// It reports whether everything is healthy.
func clusterStatus(ctx context.Context, cfg *rest.Config, w io.Writer) (bool, error) {
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false, err
	}
	r := &statusReport{w: w, healthy: true}
	for _, step := range []func() error{
		func() error { return r.enforcer(ctx, kc) },
		func() error { return r.deployments(ctx, kc) },
		func() error { return r.sources(ctx, cfg) },
		func() error { return r.nodes(ctx, cfg) },
	} {
		if err := step(); err != nil {
			return false, err
		}
	}
	return r.healthy, nil
}

// statusReport is clusterStatus's screen, and whether a line of it was not healthy.
type statusReport struct {
	w       io.Writer
	healthy bool
}

// bad is the end of a line: a marker when the line is not healthy.
func (r *statusReport) bad(ok bool) string {
	if !ok {
		r.healthy = false
		return "  <- not healthy"
	}
	return ""
}

func (r *statusReport) enforcer(ctx context.Context, kc kubernetes.Interface) error {
	ds, err := kc.AppsV1().DaemonSets("kube-system").Get(ctx, "netpact", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		fmt.Fprintf(r.w, "enforcer:    not installed (kube-system/netpact DaemonSet)%s\n", r.bad(false))
	case err != nil:
		return fmt.Errorf("read the enforcer DaemonSet: %w", err)
	default:
		s := ds.Status
		ok := s.DesiredNumberScheduled > 0 && s.NumberReady == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled
		fmt.Fprintf(r.w, "enforcer:    DaemonSet kube-system/netpact desired %d, ready %d, available %d, up to date %d%s\n",
			s.DesiredNumberScheduled, s.NumberReady, s.NumberAvailable, s.UpdatedNumberScheduled, r.bad(ok))
	}
	return nil
}

func (r *statusReport) deployments(ctx context.Context, kc kubernetes.Interface) error {
	for _, d := range []struct{ label, name, what string }{
		{"controller: ", "netpact-reconciler", "controller"},
		{"admission:  ", "netpact-admission", "admission webhook"},
	} {
		dep, err := kc.AppsV1().Deployments("netpact-system").Get(ctx, d.name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			fmt.Fprintf(r.w, "%s not installed (netpact-system/%s; deploy/reconciler)\n", d.label, d.name)
		case err != nil:
			return fmt.Errorf("read the %s Deployment: %w", d.what, err)
		default:
			want := int32(1)
			if dep.Spec.Replicas != nil {
				want = *dep.Spec.Replicas
			}
			fmt.Fprintf(r.w, "%s Deployment netpact-system/%s ready %d/%d%s\n", d.label, d.name,
				dep.Status.ReadyReplicas, want, r.bad(dep.Status.ReadyReplicas >= want && want > 0))
		}
	}
	return nil
}

func (r *statusReport) sources(ctx context.Context, cfg *rest.Config) error {
	cl, err := policySourceClient(cfg)
	if err != nil {
		return err
	}
	var list v1alpha1.PolicySourceList
	if err := cl.List(ctx, &list); err != nil {
		return fmt.Errorf("list PolicySources: %w", err)
	}
	fmt.Fprintf(r.w, "sources:     %d PolicySource(s)\n", len(list.Items))
	for i := range list.Items {
		ps := &list.Items[i]
		ready := conditions.Get(ps, meta.ReadyCondition)
		state, msg := "Unknown", ""
		if ready != nil {
			state, msg = string(ready.Status), ready.Message
		}
		fmt.Fprintf(r.w, "  %s/%s: Ready %s, enforced on %s nodes, revision %s%s\n", ps.Namespace, ps.Name, state,
			orDash(ps.Status.EnforcedNodes), orDash(ps.Status.LastEnforcedRevision), r.bad(state == "True"))
		if state != "True" && msg != "" {
			fmt.Fprintf(r.w, "    %s\n", msg)
		}
		for _, l := range ps.Status.LaggingNodes {
			fmt.Fprintf(r.w, "    lagging: %s\n", l)
		}
		for _, w := range ps.Status.Warnings {
			fmt.Fprintf(r.w, "    warning: %s\n", w)
		}
	}
	return nil
}

func (r *statusReport) nodes(ctx context.Context, cfg *rest.Config) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	npsList, err := dyn.Resource(v1alpha1.GroupVersion.WithResource("nodepolicystatuses")).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list NodePolicyStatuses: %w", err)
	}
	var troubled []string
	for _, u := range npsList.Items {
		var nps v1alpha1.NodePolicyStatus
		raw, _ := json.Marshal(u.Object)
		if json.Unmarshal(raw, &nps) != nil {
			continue
		}
		if why := nodeTroubles(&nps); len(why) > 0 {
			troubled = append(troubled, fmt.Sprintf("  %s: %s", nps.Name, strings.Join(why, "; ")))
		}
	}
	sort.Strings(troubled)
	fmt.Fprintf(r.w, "nodes:       %d report status, %d with errors%s\n", len(npsList.Items), len(troubled), r.bad(len(troubled) == 0))
	for _, t := range troubled {
		fmt.Fprintln(r.w, t)
	}
	return nil
}

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

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
