// Command netpact makes Kubernetes network policy kept in Git real and proves it.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/enforcer/cniplugin"
)

// exitError carries an exit code for failures that have already been reported.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "netpact",
		Short:         "netpact enforces network policy from Git and proves the connectivity matrix",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newValidateCommand(), newObserveCommand(), newPredictCommand(), newPlanCommand(), newTestCommand(), newReconcilerCommand(), newAdmissionCommand(), newReconcileCommand(), newStatusCommand(), newGitServerCommand(),
		newEnforcerCommand(), newNodeSetupCommand(), newKindCommand(), newVersionCommand(), newProbeCommand(), newProbeServerCommand(), newProbeFloodCommand(), newProbeKafkaBrokerCommand(), newExternalServerCommand())
	return root
}

func main() {
	// A container runtime runs the binary as the node's CNI plugin with CNI_COMMAND set.
	if os.Getenv("CNI_COMMAND") != "" {
		cniplugin.Main()
		return
	}
	err := newRootCommand().Execute()
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "netpact:", err)
		os.Exit(2)
	}
}
