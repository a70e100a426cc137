package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/spf13/cobra"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/fileutil"
	"github.com/netpact/netpact/reconciler"
)

const defaultStatusFile = "/run/netpact/status.json"

func newReconcilerCommand() *cobra.Command {
	var co controllerOptions
	cmd := &cobra.Command{
		Use:   "reconciler",
		Short: "Run the cluster's PolicySource controller (the GitOps reconciler)",
		Long: `reconciler is the cluster's controller (in its pod; elsewhere on the cluster a kubeconfig names,
found as kubectl finds it): every PolicySource is fetched, validated as one unit, server-side
applied (field manager netpact, netpact.io/revision, owner labels), pruned, and reported Ready
only once every node's NodePolicyStatus holds the applied generations ("enforced on N/N nodes",
the lagging named). It also serves the webhook receiver (/hook/NAMESPACE/NAME/{github,gitlab,
generic-hmac}). The admission webhook that refuses what netpact validate refuses runs apart, in
replicas of its own: netpact admission.

reconciler local follows one Git source on a local node of network namespaces instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("source") {
				return errors.New("--source: the local node's reconciler is netpact reconciler local")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runController(ctx, co)
		},
	}
	f := cmd.Flags()
	// Only to say where it went: reconciler local.
	f.String("source", "", "")
	_ = f.MarkHidden("source")
	f.StringVar(&co.receiverListen, "listen", "", "address of the webhook receiver, such as :9292")
	f.StringVar(&co.receiverSecretFile, "webhook-secret-file", "", "file holding the webhook secret")
	co.kube = addDaemonClusterFlags(f)
	f.StringVar(&co.namespace, "namespace", "", "its namespace, for the leader lease and the webhook certificate (POD_NAMESPACE, else netpact-system)")
	f.BoolVar(&co.leaderElect, "leader-elect", true, "one active replica at a time (a Lease)")
	f.StringVar(&co.metricsListen, "metrics-listen", ":8080", "Prometheus metrics address (0: none)")
	f.StringVar(&co.healthListen, "health-listen", ":8081", "/healthz and /readyz address (0: none)")
	f.DurationVar(&co.enforceTimeout, "enforce-timeout", 2*time.Minute, "how long a revision may take to be enforced on every node")
	return cmd
}

// webhookMux serves the webhook receiver, and nothing else: it faces the Git host.
func webhookMux(r *reconciler.Reconciler, secret []byte) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/hook/", &reconciler.Receiver{Secret: secret, Trigger: r.Trigger})
	return mux
}

// statusMux serves GET /status (credentials redacted), on the address the operator chose.
func statusMux(r *reconciler.Reconciler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(r.Status())
	})
	return mux
}

// newServer bounds every phase of a request, so that slow or idle clients cannot hold the
// receiver's connections.
func newServer(addr string, h http.Handler) *http.Server {
	return &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 15 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 64 << 10}
}

// writeStatus writes the status for root alone (mode 0600): its errors may name files and
// rules of the repository.
func writeStatus(file string, st *v1alpha1.PolicySource) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	if err := fileutil.WriteAtomic(file, data, 0o600); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return nil
}

func printStatus(w io.Writer, st *v1alpha1.PolicySource) {
	ready := conditions.Get(st, meta.ReadyCondition)
	fmt.Fprintf(w, "source:    %s (path %s)\n", st.Spec.URL, st.Spec.Path)
	if ready != nil {
		fmt.Fprintf(w, "ready:     %s (%s) %s\n", ready.Status, ready.Reason, ready.Message)
	}
	for _, c := range st.Status.Conditions {
		if c.Type != meta.ReadyCondition {
			fmt.Fprintf(w, "%-10s %s (%s) %s\n", c.Type+":", c.Status, c.Reason, c.Message)
		}
	}
	fmt.Fprintf(w, "attempted: %s\napplied:   %s\nenforced:  %s", st.Status.LastAttemptedRevision, st.Status.LastAppliedRevision, st.Status.LastEnforcedRevision)
	if st.Status.LastEnforcedAt != nil {
		fmt.Fprintf(w, " (since %s)", st.Status.LastEnforcedAt.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	for _, e := range st.Status.Errors {
		fmt.Fprintf(w, "error:     %s\n", e)
	}
	for _, e := range st.Status.Warnings {
		fmt.Fprintf(w, "warning:   %s\n", e)
	}
}

// statusOptions are the flags of netpact status.
type statusOptions struct {
	statusFile, namespace string
	allNamespaces, wait   bool
	timeout               time.Duration
	kube                  *clusterFlags
	output                *outputFormat
}

func newStatusCommand() *cobra.Command {
	var o statusOptions
	cmd := &cobra.Command{
		Use:   "status [--kubeconfig FILE | --context NAME]",
		Short: "Print the local reconciler's conditions and revisions, or the cluster's netpact health",
		Long: `status prints the local reconciler's status file. With --kubeconfig FILE or --context NAME (a
context of KUBECONFIG or ~/.kube/config) it prints the cluster's netpact health on one screen
instead: the enforcer DaemonSet, the controller, every PolicySource (conditions, revision, nodes
enforced, lagging nodes; -n NAMESPACE for one namespace's, every namespace's by default or with -A)
and the nodes whose status reports errors. --wait first waits, a line on stderr for each change,
until every PolicySource is Ready and enforced on every node, for --timeout at most.

Exit 1 when not healthy (or not Ready), or when --wait timed out, whatever the output format.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			live, err := o.kube.named("status reads the local reconciler's --status-file")
			if err != nil {
				return err
			}
			if live {
				return o.cluster(cmd)
			}
			for _, f := range []string{"namespace", "all-namespaces", "wait", "timeout"} {
				if cmd.Flags().Changed(f) {
					return fmt.Errorf("--%s is about a cluster's PolicySources: give --kubeconfig FILE or --context NAME", f)
				}
			}
			return o.local(cmd)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.statusFile, "status-file", defaultStatusFile, "the local reconciler's status file")
	o.kube = addClusterFlags(f)
	o.kube.setKubeconfigUsage("report the health of the cluster this kubeconfig (or --context, in KUBECONFIG or ~/.kube/config) reaches instead")
	f.StringVarP(&o.namespace, "namespace", "n", "", "only this namespace's PolicySources (a cluster's; every namespace's when not given)")
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "every namespace's PolicySources, as without -n")
	f.BoolVar(&o.wait, "wait", false, "wait until every PolicySource is Ready and enforced on every node, then report")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	o.output = addOutputFlag(cmd, "text", "json", "yaml")
	return cmd
}

// local prints the local reconciler's status file.
func (o *statusOptions) local(cmd *cobra.Command) error {
	data, err := os.ReadFile(o.statusFile)
	if err != nil {
		return fmt.Errorf("read status (is the reconciler running?): %w", err)
	}
	var st v1alpha1.PolicySource
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("read status %s: %w", o.statusFile, err)
	}
	if o.output.structured() {
		if err := o.output.write(cmd.OutOrStdout(), printable(&st)); err != nil {
			return err
		}
	} else {
		printStatus(cmd.OutOrStdout(), &st)
	}
	if !conditions.IsReady(&st) {
		return exitError{1}
	}
	return nil
}

// cluster prints the cluster's health, once the PolicySources are settled with --wait.
func (o *statusOptions) cluster(cmd *cobra.Command) error {
	cfg, err := o.kube.restConfig()
	if err != nil {
		return err
	}
	namespace := o.namespace
	if o.allNamespaces {
		namespace = ""
	}
	var waitErr error
	if o.wait {
		cl, err := policySourceClient(cfg)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
		waitErr = waitForSources(ctx, cl, namespace, newSourceProgress(cmd.ErrOrStderr()))
		cancel()
		if waitErr != nil && !errors.Is(waitErr, context.DeadlineExceeded) {
			return waitErr
		}
	}
	h, err := readClusterHealth(cmd.Context(), cfg, namespace)
	if err != nil {
		return err
	}
	if o.output.structured() {
		if err := o.output.write(cmd.OutOrStdout(), h); err != nil {
			return err
		}
	} else {
		h.print(cmd.OutOrStdout())
	}
	if waitErr != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "netpact status: waited %s: %v\n", o.timeout, waitErr)
		return exitError{1}
	}
	if !h.Healthy {
		return exitError{1}
	}
	return nil
}
