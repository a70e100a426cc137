package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/spf13/cobra"
	ktypes "k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/reconciler"
)

// sourcePollInterval is how often status --wait reads the PolicySources again.
const sourcePollInterval = 500 * time.Millisecond

func newReconcileCommand() *cobra.Command {
	var namespace string
	var timeout time.Duration
	var kube *clusterFlags
	var output *outputFormat
	cmd := &cobra.Command{Use: "reconcile", Short: "Ask the cluster controller to reconcile now"}
	src := &cobra.Command{
		Use:   "source NAME",
		Short: "Reconcile a PolicySource now and wait for the result (as flux reconcile does)",
		Long: `reconcile source sets the reconcile.fluxcd.io/requestedAt annotation of the PolicySource, waits
until the controller reports it handled, and prints the outcome: exit 0 when Ready, 1 otherwise.
While it waits, a line on stderr for each change of the source's conditions or enforced nodes.
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
			progress := newSourceProgress(cmd.ErrOrStderr())
			st, err := reconciler.ReconcileNow(ctx, cl, ktypes.NamespacedName{Namespace: namespace, Name: args[0]}, progress.update)
			if err != nil {
				return err
			}
			if output.structured() {
				if err := output.write(cmd.OutOrStdout(), printable(st)); err != nil {
					return err
				}
			} else {
				printStatus(cmd.OutOrStdout(), st)
			}
			if !conditions.IsReady(st) {
				return exitError{1}
			}
			return nil
		},
	}
	kube = addClusterFlags(src.Flags())
	src.Flags().StringVarP(&namespace, "namespace", "n", "netpact-system", "the PolicySource's namespace")
	src.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "how long to wait for the result")
	output = addOutputFlag(src, "text", "json", "yaml")
	cmd.AddCommand(src)
	return cmd
}

// printable is a PolicySource as kubectl -o yaml prints one: with its kind, without its managed
// fields.
func printable(ps *v1alpha1.PolicySource) *v1alpha1.PolicySource {
	ps = ps.DeepCopy()
	ps.APIVersion, ps.Kind = v1alpha1.GroupVersion.String(), "PolicySource"
	ps.ManagedFields = nil
	return ps
}

// settled reports whether a PolicySource is where status --wait waits for it: the controller has
// seen its spec, it is Ready (neither reconciling nor stalled), and every node enforces it.
func settled(ps *v1alpha1.PolicySource) bool {
	enforced, nodes, ok := strings.Cut(ps.Status.EnforcedNodes, "/")
	return ps.Status.ObservedGeneration == ps.Generation && conditions.IsReady(ps) && ok && enforced == nodes
}

// waitForSources reads the PolicySources of namespace (every namespace's when empty) until each
// is settled, telling progress what it read; when ctx ends first, the error names those that are
// not.
func waitForSources(ctx context.Context, cl client.Client, namespace string, progress *sourceProgress) error {
	var pending []string
	for {
		list, err := listPolicySources(ctx, cl, namespace)
		if err != nil && ctx.Err() == nil {
			return err
		}
		if err == nil {
			pending = pending[:0]
			for i := range list {
				progress.update(&list[i])
				if !settled(&list[i]) {
					pending = append(pending, list[i].Namespace+"/"+list[i].Name)
				}
			}
			if len(pending) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not Ready and enforced on every node: %s: %w", strings.Join(pending, ", "), ctx.Err())
		case <-time.After(sourcePollInterval):
		}
	}
}

// sourceProgress prints a line for a PolicySource each time its conditions, revisions or
// enforced nodes change, the time since the wait began before it.
type sourceProgress struct {
	w     io.Writer
	start time.Time
	last  map[string]string
}

func newSourceProgress(w io.Writer) *sourceProgress {
	return &sourceProgress{w: w, start: time.Now(), last: map[string]string{}}
}

func (p *sourceProgress) update(ps *v1alpha1.PolicySource) {
	key := ps.Namespace + "/" + ps.Name
	line := progressLine(ps)
	if p.last[key] == line {
		return
	}
	p.last[key] = line
	fmt.Fprintf(p.w, "%6.1fs %s: %s\n", time.Since(p.start).Seconds(), key, line)
}

// progressLine is a PolicySource's state in one line: each condition with its reason (the
// message too for a Ready that is not True), the revision applied and the nodes enforcing it.
func progressLine(ps *v1alpha1.PolicySource) string {
	var parts []string
	for _, c := range ps.Status.Conditions {
		parts = append(parts, fmt.Sprintf("%s %s (%s)", c.Type, c.Status, c.Reason))
	}
	if len(parts) == 0 {
		parts = append(parts, "no conditions yet")
	}
	line := strings.Join(parts, ", ")
	if ps.Status.LastAppliedRevision != "" {
		line += "; applied " + ps.Status.LastAppliedRevision
	}
	if ps.Status.EnforcedNodes != "" {
		line += "; enforced on " + ps.Status.EnforcedNodes + " nodes"
	}
	if ready := conditions.Get(ps, meta.ReadyCondition); ready != nil && ready.Status != "True" && ready.Message != "" {
		line += ": " + ready.Message
	}
	return line
}
