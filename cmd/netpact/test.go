package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/scenarios"
)

func newTestCommand() *cobra.Command {
	var junit, summary string
	var output *outputFormat
	var retain, verbose bool
	var observeSocket string
	var timeout time.Duration
	var failOnPending bool
	cmd := &cobra.Command{
		Use:   "test FILE|DIR...",
		Short: "Run scenario files on a local node of network namespaces; exit 1 on any mismatch",
		Long: `test runs each scenario on a node made of network namespaces on this host, enforced by
netpact's eBPF datapath (it needs root). For every step it compares the connectivity the file
expects, the matrix the policy engine predicts, and what real probes observe. It prints a line per
scenario and step with each step's observed matrix in one compact table; a failing step gets the
three tables side by side, its wrong cells and the flow events of its probes, both where it ran and
again in a failures section before the totals at the end. -v gives every step that detail.
See docs/scenarios.md.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			scs, err := scenarios.Load(args)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return exitError{1}
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
			var results []*scenarios.Result
			for _, sc := range scs {
				node := scenarios.NewLocal(scenarios.LocalOptions{ProbeTimeout: timeout, Retain: retain, Ring: ring})
				stop := onInterrupt(func() {
					fmt.Fprintln(cmd.ErrOrStderr(), "interrupted: tearing down the local node")
					node.Stop()
				})
				r := (&scenarios.Runner{Backend: node, Verbose: verbose}).Run(sc)
				stop()
				results = append(results, r)
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
	cmd.Flags().BoolVar(&failOnPending, "fail-on-pending", os.Getenv("CI") == "true", "exit 1 when a step is pending (not checked); the default under CI=true, so that a gate never passes what it did not check")
	cmd.Flags().StringVar(&junit, "junit", "", "write a JUnit XML report to this file")
	cmd.Flags().StringVar(&summary, "summary", "", "also write a line per scenario and step (ok, pending, FAIL, probe counts), the failing steps' tables and the totals to this file")
	output = addOutputFlag(cmd, "text", "json", "yaml")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print every step's three tables and a few flow events, not only the failing steps'")
	cmd.Flags().BoolVar(&retain, "retain", false, "keep namespaces, veths and pins after the run, for debugging, and keep serving the run's flows to netpact observe until interrupted")
	cmd.Flags().StringVar(&observeSocket, "observe-socket", DefaultObserveSocket, "serve the run's flows to netpact observe on this unix socket (\"\" for none)")
	cmd.Flags().DurationVar(&timeout, "probe-timeout", 400*time.Millisecond, "how long a probe waits before calling a cell timed out")
	return cmd
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
