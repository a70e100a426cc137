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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/enforcer/localnode"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/reconciler"
)

const defaultStatusFile = "/run/netpact/status.json"

func newReconcilerCommand() *cobra.Command {
	var (
		src                                      reconciler.Source
		path, nodeFile, listen, statusFile       string
		statusListen                             string
		passwordFile, sshKeyFile, knownHostsFile string
		keyringFile, secretFile                  string
		interval                                 time.Duration
		once, allowEmpty                         bool
		co                                       controllerOptions
	)
	cmd := &cobra.Command{
		Use:   "reconciler --source URL --branch main --path policies --node NODE.yaml | reconciler --kubeconfig FILE",
		Short: "Enforce the policy bundle of a Git revision on a local node, or run the cluster's PolicySource controller",
		Long: `reconciler follows a Git ref, validates the bundle at --path as one unit, enforces it on a local
node made of the namespaces and pods of --node (a cluster file, as netpact predict reads: each pod
becomes a network namespace of this host at an address of the local node's), and writes
its status (Flux-style conditions and the attempted, applied and enforced revisions) to
--status-file. A push triggers a reconcile at once through the webhook receiver on --listen
(/hook/github, /hook/gitlab, /hook/generic-hmac); GET /status on --status-listen (an address the
operator chooses, apart from the webhook's) returns the status, credentials redacted. Needs root.

Without --source it is the cluster's controller (in-cluster, or --kubeconfig): every PolicySource
is fetched, validated as one unit, server-side applied (field manager netpact, netpact.io/revision,
owner labels), pruned, and reported Ready only once every node's NodePolicyStatus holds the
applied generations ("enforced on N/N nodes", the lagging named). It also serves the webhook
receiver (/hook/NAMESPACE/NAME/{github,gitlab,generic-hmac}). The admission webhook that refuses
what netpact validate refuses runs apart, in replicas of its own: netpact admission.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if src.URL == "" {
				if nodeFile != "" {
					return errors.New("--node needs --source (the local node follows one Git source)")
				}
				ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				co.receiverListen, co.receiverSecretFile = listen, secretFile
				return runController(ctx, co)
			}
			read := func(f string) ([]byte, error) {
				if f == "" {
					return nil, nil
				}
				data, err := os.ReadFile(f)
				if err != nil {
					return nil, fmt.Errorf("read %s: %w", f, err)
				}
				return data, nil
			}
			// A secret or password file written by an editor or echo ends with a newline
			// that is not part of the secret.
			readSecret := func(f string) ([]byte, error) {
				if f == "" {
					return nil, nil
				}
				return reconciler.ReadSecretFile(f)
			}
			var err error
			pw, err := readSecret(passwordFile)
			if err != nil {
				return err
			}
			src.Auth.Password = string(pw)
			if src.Auth.SSHKey, err = read(sshKeyFile); err != nil {
				return err
			}
			if src.Auth.KnownHosts, err = read(knownHostsFile); err != nil {
				return err
			}
			keyring, err := read(keyringFile)
			if err != nil {
				return err
			}
			if nodeFile == "" {
				return errors.New("--node is required: the namespaces and pods of the local node")
			}
			cf, err := readClusterFile(cmd.ErrOrStderr(), "node file", nodeFile)
			if err != nil {
				return err
			}
			node := localnode.NewNode(localnode.Options{})
			defer node.Stop()
			if err := node.Start(); err != nil {
				return fmt.Errorf("start local node: %w", err)
			}
			cluster, err := node.AddCluster(&cf.Cluster)
			if err != nil {
				return fmt.Errorf("start local node: %w", err)
			}
			target := &reconciler.NodeTarget{NodeName: "local", Node: node, Cluster: func() *policy.Cluster { return cluster }}
			obj := &v1alpha1.PolicySource{
				TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "PolicySource"},
				ObjectMeta: metav1.ObjectMeta{Name: "policies"},
				Spec: v1alpha1.PolicySourceSpec{URL: src.URL, Ref: src.Ref, Path: path, Interval: metav1.Duration{Duration: interval},
					Timeout: metav1.Duration{Duration: src.Timeout}, VerifyKeyring: string(keyring), AllowEmpty: allowEmpty},
			}
			r := reconciler.New(obj, &src, target)
			write := func(st *v1alpha1.PolicySource, err error) {
				if werr := writeStatus(statusFile, st); werr != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "write status:", werr)
				}
				printStatus(cmd.OutOrStdout(), st)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if once {
				err := r.Reconcile(ctx)
				write(r.Status(), err)
				if err != nil {
					return exitError{1}
				}
				return nil
			}
			if listen != "" {
				secret, err := readSecret(secretFile)
				if err != nil {
					return err
				}
				hs := newServer(listen, webhookMux(r, secret))
				go hs.ListenAndServe()
				defer hs.Close()
			}
			if statusListen != "" {
				hs := newServer(statusListen, statusMux(r))
				go hs.ListenAndServe()
				defer hs.Close()
			}
			r.Run(ctx, write)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&src.URL, "source", "", "Git URL: file://, http(s)://, ssh:// or git://")
	f.StringVar(&src.Ref.Branch, "branch", "", "branch to follow (default main)")
	f.StringVar(&src.Ref.Tag, "tag", "", "tag to follow")
	f.StringVar(&src.Ref.SemVer, "semver", "", "semver range over tags, such as ~1.2")
	f.StringVar(&src.Ref.Name, "ref-name", "", "full ref name, such as refs/heads/main")
	f.StringVar(&src.Ref.Commit, "commit", "", "a commit SHA-1")
	f.StringVar(&path, "path", ".", "path of the bundle inside the repository")
	f.DurationVar(&interval, "interval", time.Minute, "how often to poll the ref")
	f.DurationVar(&src.Timeout, "timeout", 60*time.Second, "timeout of each Git operation")
	f.StringVar(&src.Auth.Username, "username", "", "HTTPS basic-auth user")
	f.StringVar(&passwordFile, "password-file", "", "file holding the HTTPS password or token")
	f.StringVar(&sshKeyFile, "ssh-key", "", "SSH private key file")
	f.StringVar(&knownHostsFile, "known-hosts", "", "known_hosts file (required with --ssh-key)")
	f.StringVar(&keyringFile, "verify-keyring", "", "armored OpenPGP keyring: apply only commits signed by its keys")
	f.StringVar(&nodeFile, "node", "", "cluster file (as netpact predict reads) whose namespaces and pods make the local node")
	f.StringVar(&listen, "listen", "", "address of the webhook receiver, such as :9292")
	f.BoolVar(&allowEmpty, "allow-empty", false, "enforce a revision that removes every policy (of the bundle or of a namespace); refused otherwise")
	f.StringVar(&statusListen, "status-listen", "", "address serving GET /status, such as 127.0.0.1:9293 (not served when empty)")
	f.StringVar(&secretFile, "webhook-secret-file", "", "file holding the webhook secret")
	f.StringVar(&statusFile, "status-file", defaultStatusFile, "where to write the status")
	f.BoolVar(&once, "once", false, "reconcile once and exit (1 when it failed)")
	f.StringVar(&co.kubeconfig, "kubeconfig", "", "cluster controller: kubeconfig file (in-cluster configuration when empty)")
	f.StringVar(&co.namespace, "namespace", "", "cluster controller: its namespace, for the leader lease and the webhook certificate (POD_NAMESPACE, else netpact-system)")
	f.BoolVar(&co.leaderElect, "leader-elect", true, "cluster controller: one active replica at a time (a Lease)")
	f.StringVar(&co.metricsListen, "metrics-listen", ":8080", "cluster controller: Prometheus metrics address (0: none)")
	f.StringVar(&co.healthListen, "health-listen", ":8081", "cluster controller: /healthz and /readyz address (0: none)")
	f.DurationVar(&co.enforceTimeout, "enforce-timeout", 2*time.Minute, "cluster controller: how long a revision may take to be enforced on every node")
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
	tmp := file + ".tmp"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fmt.Errorf("write status: %w", err)
	}
	return os.Rename(tmp, file)
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
}

func newStatusCommand() *cobra.Command {
	var statusFile, output, kubeconfig string
	cmd := &cobra.Command{
		Use:   "status [--kubeconfig FILE]",
		Short: "Print the local reconciler's conditions and revisions, or the cluster's netpact health",
		Long: `status prints the local reconciler's status file; with --kubeconfig, the cluster's netpact health
on one screen: the enforcer DaemonSet, the controller, every PolicySource (conditions, revision,
nodes enforced, lagging nodes) and the nodes whose status reports errors. Exit 1 when not healthy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if kubeconfig != "" {
				cfg, err := restConfig(kubeconfig)
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
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "report the cluster's health instead (its kubeconfig file)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
