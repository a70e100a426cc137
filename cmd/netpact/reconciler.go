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
	cmd.AddCommand(newLocalReconcilerCommand())
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

func newStatusCommand() *cobra.Command {
	var statusFile, output string
	var kube *clusterFlags
	cmd := &cobra.Command{
		Use:   "status [--kubeconfig FILE | --context NAME]",
		Short: "Print the local reconciler's conditions and revisions, or the cluster's netpact health",
		Long: `status prints the local reconciler's status file. With --kubeconfig FILE or --context NAME (a
context of KUBECONFIG or ~/.kube/config) it prints the cluster's netpact health on one screen
instead: the enforcer DaemonSet, the controller, every PolicySource (conditions, revision, nodes
enforced, lagging nodes) and the nodes whose status reports errors. Exit 1 when not healthy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			live, err := kube.named("status reads the local reconciler's --status-file")
			if err != nil {
				return err
			}
			if live {
				cfg, err := kube.restConfig()
				if err != nil {
					return err
				}
				ok, err := clusterStatus(cmd.Context(), cfg, cmd.OutOrStdout())
				if err != nil {
					return err
				}
				if !ok {
					return exitError{1}
				}
				return nil
			}
			data, err := os.ReadFile(statusFile)
			if err != nil {
				return fmt.Errorf("read status (is the reconciler running?): %w", err)
			}
			var st v1alpha1.PolicySource
			if err := json.Unmarshal(data, &st); err != nil {
				return fmt.Errorf("read status %s: %w", statusFile, err)
			}
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(&st)
			case "text", "":
				printStatus(cmd.OutOrStdout(), &st)
				if !conditions.IsReady(&st) {
					return exitError{1}
				}
				return nil
			}
			return fmt.Errorf("unknown output format %q: use text or json", output)
		},
	}
	cmd.Flags().StringVar(&statusFile, "status-file", defaultStatusFile, "the reconciler's status file")
	kube = addClusterFlags(cmd.Flags())
	kube.setKubeconfigUsage("report the health of the cluster this kubeconfig (or --context, in KUBECONFIG or ~/.kube/config) reaches instead")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
