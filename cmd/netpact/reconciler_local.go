//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/enforcer/localnode"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/reconciler"
)

// localReconcilerOptions are the flags of `netpact reconciler local`.
type localReconcilerOptions struct {
	src                                      reconciler.Source
	path, nodeFile, listen, statusFile       string
	statusListen                             string
	observeSocket                            string
	passwordFile, sshKeyFile, knownHostsFile string
	keyringFile, secretFile                  string
	interval                                 time.Duration
	once, allowEmpty                         bool
}

func newLocalReconcilerCommand() *cobra.Command {
	var o localReconcilerOptions
	cmd := &cobra.Command{
		Use:   "local --source URL --branch main --path policies --node NODE.yaml",
		Short: "Enforce the policy bundle of a Git revision on a local node of network namespaces",
		Long: `reconciler local follows a Git ref, validates the bundle at --path as one unit, enforces it on a local
node made of the namespaces and pods of --node (a cluster file, as netpact predict reads: each pod
becomes a network namespace of this host at an address of the local node's), and writes
its status (Flux-style conditions and the attempted, applied and enforced revisions) to
--status-file. A push triggers a reconcile at once through the webhook receiver on --listen
(/hook/github, /hook/gitlab, /hook/generic-hmac); GET /status on --status-listen (an address the
operator chooses, apart from the webhook's) returns the status, credentials redacted. Needs root.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runLocalReconciler(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.src.URL, "source", "", "Git URL: file://, http(s)://, ssh:// or git://")
	f.StringVar(&o.src.Ref.Branch, "branch", "", "branch to follow (default main)")
	f.StringVar(&o.src.Ref.Tag, "tag", "", "tag to follow")
	f.StringVar(&o.src.Ref.SemVer, "semver", "", "semver range over tags, such as ~1.2")
	f.StringVar(&o.src.Ref.Name, "ref-name", "", "full ref name, such as refs/heads/main")
	f.StringVar(&o.src.Ref.Commit, "commit", "", "a commit SHA-1")
	f.StringVar(&o.path, "path", ".", "path of the bundle inside the repository")
	f.DurationVar(&o.interval, "interval", time.Minute, "how often to poll the ref")
	f.DurationVar(&o.src.Timeout, "timeout", 60*time.Second, "timeout of each Git operation")
	f.StringVar(&o.src.Auth.Username, "username", "", "HTTPS basic-auth user")
	f.StringVar(&o.passwordFile, "password-file", "", "file holding the HTTPS password or token")
	f.StringVar(&o.sshKeyFile, "ssh-key", "", "SSH private key file")
	f.StringVar(&o.knownHostsFile, "known-hosts", "", "known_hosts file (required with --ssh-key)")
	f.StringVar(&o.keyringFile, "verify-keyring", "", "armored OpenPGP keyring: apply only commits signed by its keys")
	f.StringVar(&o.nodeFile, "node", "", "cluster file (as netpact predict reads) whose namespaces and pods make the local node")
	f.StringVar(&o.listen, "listen", "", "address of the webhook receiver, such as :9292")
	f.BoolVar(&o.allowEmpty, "allow-empty", false, "enforce a revision that removes every policy (of the bundle or of a namespace); refused otherwise")
	f.StringVar(&o.observeSocket, "observe-socket", DefaultObserveSocket, "serve the node's flows to netpact observe on this unix socket (\"\" for none)")
	f.StringVar(&o.statusListen, "status-listen", "", "address serving GET /status, such as 127.0.0.1:9293 (not served when empty)")
	f.StringVar(&o.secretFile, "webhook-secret-file", "", "file holding the webhook secret")
	f.StringVar(&o.statusFile, "status-file", defaultStatusFile, "where to write the status")
	f.BoolVar(&o.once, "once", false, "reconcile once and exit (1 when it failed)")
	return cmd
}

// runLocalReconciler follows the source on a local node made of the node file's pods until a
// signal, or reconciles once with --once.
func runLocalReconciler(cmd *cobra.Command, o localReconcilerOptions) error {
	if o.src.URL == "" {
		return errors.New("--source is required: the Git repository the local node follows")
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
	pw, err := readSecret(o.passwordFile)
	if err != nil {
		return err
	}
	o.src.Auth.Password = string(pw)
	if o.src.Auth.SSHKey, err = read(o.sshKeyFile); err != nil {
		return err
	}
	if o.src.Auth.KnownHosts, err = read(o.knownHostsFile); err != nil {
		return err
	}
	keyring, err := read(o.keyringFile)
	if err != nil {
		return err
	}
	if o.nodeFile == "" {
		return errors.New("--node is required: the namespaces and pods of the local node")
	}
	cf, err := readClusterFile(cmd.ErrOrStderr(), "node file", o.nodeFile)
	if err != nil {
		return err
	}
	ring := observe.NewRing(0)
	node := localnode.NewNode(localnode.Options{Ring: ring})
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
		Spec: v1alpha1.PolicySourceSpec{URL: o.src.URL, Ref: o.src.Ref, Path: o.path, Interval: metav1.Duration{Duration: o.interval},
			Timeout: metav1.Duration{Duration: o.src.Timeout}, VerifyKeyring: string(keyring), AllowEmpty: o.allowEmpty},
	}
	r := reconciler.New(obj, &o.src, target)
	write := func(st *v1alpha1.PolicySource, err error) {
		if werr := writeStatus(o.statusFile, st); werr != nil {
			fmt.Fprintln(cmd.ErrOrStderr(), "write status:", werr)
		}
		printStatus(cmd.OutOrStdout(), st)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if o.once {
		err := r.Reconcile(ctx)
		write(r.Status(), err)
		if err != nil {
			return exitError{1}
		}
		return nil
	}
	if o.listen != "" {
		secret, err := readSecret(o.secretFile)
		if err != nil {
			return err
		}
		hs := newServer(o.listen, webhookMux(r, secret))
		go hs.ListenAndServe()
		defer hs.Close()
	}
	if o.observeSocket != "" {
		stopServe, err := serveObserve(o.observeSocket, ring, "local")
		if err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "netpact observe will not see this node: %v\n", err)
		} else {
			defer stopServe()
		}
	}
	if o.statusListen != "" {
		hs := newServer(o.statusListen, statusMux(r))
		go hs.ListenAndServe()
		defer hs.Close()
	}
	r.Run(ctx, write)
	return nil
}
