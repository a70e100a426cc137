package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/enforcer/cniplugin"
)

// addNodeCommands adds the commands that run or make a node, which need Linux (eBPF,
// netlink, network namespaces): the enforcer, node setup, kind clusters, the local
// reconciler and what the kind backend of the scenarios runs in its pods.
func addNodeCommands(root, reconciler *cobra.Command) {
	inGroup(root, daemonGroup, newEnforcerCommand(), newNodeSetupCommand(), newKindCommand(), newExternalServerCommand())
	reconciler.AddCommand(newLocalReconcilerCommand())
	// What the kind backend of the scenarios runs in its pods, by name: not for people.
	for _, c := range []*cobra.Command{newProbeCommand(), newProbeServerCommand(), newProbeSCTPArrivedCommand(), newProbeFloodCommand(),
		newProbeKafkaBrokerCommand()} {
		c.Hidden = true
		root.AddCommand(c)
	}
}

// runCNIPlugin runs the binary as the node's CNI plugin when a container runtime runs it so,
// with CNI_COMMAND set, and says whether it did.
func runCNIPlugin() bool {
	if os.Getenv("CNI_COMMAND") == "" {
		return false
	}
	cniplugin.Main()
	return true
}
