//go:build !linux

package main

import (
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/scenarios"
)

// errLocalNodeNeedsLinux is netpact test's answer without a cluster on a system other than
// Linux: the local node is made of network namespaces and eBPF programs.
var errLocalNodeNeedsLinux = errors.New("the local node needs Linux: give --kubeconfig FILE or --context NAME to run the scenarios on a cluster that runs netpact's enforcers")

// checkLocalNode refuses a run that names no cluster, before anything is started for it.
func checkLocalNode(c *clusterFlags) error {
	onCluster, err := c.named("they run on a local node, which needs Linux")
	if err != nil {
		return err
	}
	if !onCluster {
		return errLocalNodeNeedsLinux
	}
	return nil
}

// runLocal refuses: checkLocalNode has made sure that every scenario runs on a cluster.
func runLocal(_ *cobra.Command, scs []*scenarios.Scenario, _ *observe.Ring, _ time.Duration, _, _ bool) ([]*scenarios.Result, error) {
	if len(scs) > 0 {
		return nil, errLocalNodeNeedsLinux
	}
	return nil, nil
}
