package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/deploy"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/scenarios"
)

func newTestCommand() *cobra.Command {
	var junit, summary string
	var output *outputFormat
	var retain, verbose bool
	var observeSocket string
	var timeout time.Duration
	var failOnPending, predictOnly bool
	var kube testCluster
	cmd := &cobra.Command{
		Use:   "test FILE|DIR...",
		Short: "Run scenario files on a local node of network namespaces or on a cluster, or only predict them; exit 1 on any mismatch",
		Long: `test runs each scenario on a node made of network namespaces on this host, enforced by
netpact's eBPF datapath (it needs root). For every step it compares the connectivity the file
expects, the matrix the policy engine predicts, and what real probes observe. It prints a line per
scenario and step with each step's observed matrix in one compact table; a failing step gets the
three tables side by side, its wrong cells and the flow events of its probes, both where it ran and
again in a failures section before the totals at the end. -v gives every step that detail.

With --kubeconfig or --context it runs them on that cluster instead, which must run netpact's enforcers: it
applies each step's policies through the API server and waits until every node enforces them,
creates the namespaces and pods a scenario lists from the netpact image (the enforcers', unless
--probe-image says otherwise), probes from inside the pods, prints a line per step as it goes,
and removes what it made and applied (unless --retain).

With --predict-only it runs nothing and probes nothing, so it needs neither root nor a cluster,
and it runs on macOS and Windows too: each step's expectations are compared with the policy
engine's prediction alone, over the scenario's pods with made-up addresses. Step lines and totals
say "predicted" and "none probed", and -o json and --junit carry the mode (predict-only). See
docs/scenarios.md.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if predictOnly {
				if err := predictOnlyConflicts(cmd, kube.cluster); err != nil {
					return err
				}
			}
			scs, err := scenarios.Load(args)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return exitError{1}
			}
			var results []*scenarios.Result
			if predictOnly {
				results = runPredicted(scs, verbose)
			} else {
				if err := checkLocalNode(kube.cluster); err != nil {
					return err
				}
				// The nodes' flows, one node after the other, go to one ring that `netpact observe`
				// reads on the socket while the run lasts (and after it, with --retain).
				ring := observe.NewRing(0)
				if observeSocket != "" {
					stopServe, err := serveObserve(observeSocket, ring, "local")
					if err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "netpact observe will not see this run: %v\n", err)
					} else {
						defer stopServe()
					}
				}
				onCluster, err := kube.cluster.named("they run on a local node")
				if err != nil {
					return err
				}
				if onCluster {
					if results, err = kube.run(cmd, scs, timeout, retain, verbose); err != nil {
						return err
					}
					scs = nil // run there, not on a local node
				}
				local, err := runLocal(cmd, scs, ring, timeout, retain, verbose)
				if err != nil {
					return err
				}
				results = append(results, local...)
			}
			if junit != "" {
				if err := scenarios.WriteJUnit(junit, results); err != nil {
					return err
				}
			}
			if summary != "" {
				var b strings.Builder
				scenarios.Summary(&b, results)
				if err := os.WriteFile(summary, []byte(b.String()), 0o644); err != nil {
					return fmt.Errorf("write summary: %w", err)
				}
			}
			if output.structured() {
				if err := output.write(cmd.OutOrStdout(), results); err != nil {
					return err
				}
			} else {
				scenarios.Print(cmd.OutOrStdout(), results, verbose)
				scenarios.Failures(cmd.OutOrStdout(), results)
				scenarios.Totals(cmd.OutOrStdout(), results)
			}
			if retain && observeSocket != "" {
				// The run is over and its node retained: its flows stay readable until this
				// process is told to stop.
				fmt.Fprintf(cmd.ErrOrStderr(), "retained: netpact observe reads this run's flows on %s until interrupted (Ctrl-C)\n", observeSocket)
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				<-ctx.Done()
				stop()
			}
			for _, r := range results {
				if r.Failed() {
					return exitError{1}
				}
			}
			if n := scenarios.PendingSteps(results); n > 0 && failOnPending {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d pending steps were not checked, and --fail-on-pending is set (its default under CI=true)\n", n)
				return exitError{1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&predictOnly, "predict-only", false, "compare each step's expectations with the policy engine's prediction only: nothing is run or probed, no root and no cluster needed (not with the cluster flags, --retain, --probe-timeout, --probe-image, --kind or --observe-socket)")
	cmd.Flags().BoolVar(&failOnPending, "fail-on-pending", os.Getenv("CI") == "true", "exit 1 when a step is pending (not checked); the default under CI=true, so that a gate never passes what it did not check")
	cmd.Flags().StringVar(&junit, "junit", "", "write a JUnit XML report to this file")
	cmd.Flags().StringVar(&summary, "summary", "", "also write a line per scenario and step (ok, pending, FAIL, probe counts), the failing steps' tables and the totals to this file")
	output = addOutputFlag(cmd, "text", "json", "yaml")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print every step's three tables and a few flow events, not only the failing steps'")
	cmd.Flags().BoolVar(&retain, "retain", false, "keep namespaces, veths and pins after the run, for debugging, and keep serving the run's flows to netpact observe until interrupted")
	cmd.Flags().StringVar(&observeSocket, "observe-socket", DefaultObserveSocket, "serve the run's flows to netpact observe on this unix socket (\"\" for none)")
	cmd.Flags().DurationVar(&timeout, "probe-timeout", 0, "how long a probe waits for an answer (default 5s on a local node, where a probe the datapath drops ends at the drop; 3s on a cluster)")
	kube.cluster = addClusterFlags(cmd.Flags())
	kube.cluster.setKubeconfigUsage("run the scenarios on this cluster (or --context's), which runs netpact's enforcers, instead of a local node")
	cmd.Flags().StringVar(&kube.probeImage, "probe-image", "", "on a cluster: the image of the pods the run creates (default: the image of the cluster's netpact enforcers)")
	cmd.Flags().StringVar(&kube.kind, "kind", "", "on a cluster: the kind cluster's name, for scenarios with external hosts (default: from a kind-NAME context)")
	return cmd
}

// predictOnlyConflicts refuses, with --predict-only, the flags that are about running or probing
// scenarios somewhere: --predict-only does neither, and a flag it ignored could make a run read
// as what it was not.
func predictOnlyConflicts(cmd *cobra.Command, cluster *clusterFlags) error {
	var given []string
	for _, name := range append(append([]string{}, cluster.names...), "retain", "probe-timeout", "probe-image", "kind", "observe-socket") {
		if cmd.Flags().Changed(name) {
			given = append(given, "--"+name)
		}
	}
	if len(given) == 0 {
		return nil
	}
	return fmt.Errorf("--predict-only runs and probes nothing, on no node and no cluster: %s cannot go with it (leave out --predict-only to probe)", strings.Join(given, ", "))
}

// runPredicted runs the scenarios on the Prediction backend: each step's expectations against the
// engine's prediction, nothing probed.
func runPredicted(scs []*scenarios.Scenario, verbose bool) []*scenarios.Result {
	var results []*scenarios.Result
	for _, sc := range scs {
		results = append(results, (&scenarios.Runner{Backend: scenarios.NewPrediction(), Verbose: verbose}).Run(sc))
	}
	return results
}

// testCluster is netpact test's cluster backend: the cluster flags and what goes with them.
type testCluster struct {
	cluster          *clusterFlags
	probeImage, kind string
}

// run runs the scenarios on the cluster one after the other, a line per step on stderr as it
// goes, and cleans up after each (or keeps it, with retain).
func (k *testCluster) run(cmd *cobra.Command, scs []*scenarios.Scenario, timeout time.Duration, retain, verbose bool) ([]*scenarios.Result, error) {
	cfg, err := k.cluster.restConfig()
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client for cluster %s: %w", k.cluster.name(), err)
	}
	image := k.probeImage
	if image == "" {
		if image, err = enforcerImage(cmd.Context(), client); err != nil {
			return nil, err
		}
	}
	kindName := k.kind
	if ctx := k.cluster.name(); kindName == "" && strings.HasPrefix(ctx, "kind-") {
		kindName = strings.TrimPrefix(ctx, "kind-")
	}
	stderr := cmd.ErrOrStderr()
	fmt.Fprintf(stderr, "running %d scenarios on %s (pods from %s)\n", len(scs), k.cluster.name(), image)
	var results []*scenarios.Result
	for _, sc := range scs {
		backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client, ProbeImage: image,
			Kind: kindName, ProbeTimeout: timeout, Retain: retain})
		stop := onInterrupt(func() {
			fmt.Fprintln(stderr, "interrupted: removing what the run made on the cluster")
			if err := backend.Stop(); err != nil {
				fmt.Fprintln(stderr, "clean up:", err)
			}
		})
		start := time.Now()
		fmt.Fprintf(stderr, "%s (%s)\n", sc.Name, sc.File())
		r := (&scenarios.Runner{Backend: backend, Verbose: verbose, OnStep: func(_ *scenarios.Result, st *scenarios.StepResult) {
			scenarios.StepLine(stderr, st)
		}}).Run(sc)
		stop()
		if r.Error != "" {
			fmt.Fprintf(stderr, "  error: %s\n", r.Error)
		}
		if ns, pods, svcs := backend.Made(); retain && len(ns)+len(pods)+len(svcs) > 0 {
			fmt.Fprintf(stderr, "  retained: namespaces %v, pods %v, services %v, and the policies applied\n", ns, pods, svcs)
		}
		fmt.Fprintf(stderr, "  done in %s\n", time.Since(start).Round(100*time.Millisecond))
		results = append(results, r)
	}
	return results, nil
}

// enforcerImage is the image of the cluster's netpact enforcer DaemonSet: pods a scenario lists
// are made from it, so that a cluster needs no image but its own.
func enforcerImage(ctx context.Context, client kubernetes.Interface) (string, error) {
	ds, err := deploy.Enforcer(ctx, client)
	if err != nil {
		return "", fmt.Errorf("the probe image: %w (install netpact, deploy/README.md, or give --probe-image)", err)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == deploy.EnforcerContainer {
			return c.Image, nil
		}
	}
	return "", fmt.Errorf("DaemonSet %s/%s has no %s container: give --probe-image", ds.Namespace, ds.Name, deploy.EnforcerContainer)
}

// onInterrupt runs f once on SIGINT or SIGTERM, then exits 130; the returned func disarms it.
func onInterrupt(f func()) func() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-ch:
			f()
			os.Exit(130)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}
