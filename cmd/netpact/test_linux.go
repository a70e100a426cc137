package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/scenarios"
)

// checkLocalNode accepts every run: Linux runs scenarios on a local node.
func checkLocalNode(*clusterFlags) error { return nil }

// runLocal runs the scenarios one after the other, each on a local node of network namespaces
// whose flows go to ring.
func runLocal(cmd *cobra.Command, scs []*scenarios.Scenario, ring *observe.Ring, timeout time.Duration, retain, verbose bool) ([]*scenarios.Result, error) {
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
	return results, nil
}
