// Command netpact makes Kubernetes network policy kept in Git real and proves it.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
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
	root.AddGroup(&cobra.Group{ID: clientGroup, Title: "Commands for people and CI:"},
		&cobra.Group{ID: daemonGroup, Title: "Daemons, node setup and test clusters:"})
	// cobra adds completion (bash, zsh, fish, powershell) and help when the command runs.
	root.SetCompletionCommandGroupID(clientGroup)
	root.SetHelpCommandGroupID(clientGroup)
	inGroup(root, clientGroup, newValidateCommand(), newPredictCommand(), newPlanCommand(), newTestCommand(), newObserveCommand(),
		newStatusCommand(), newReconcileCommand(), newVersionCommand())
	reconciler := newReconcilerCommand()
	inGroup(root, daemonGroup, reconciler, newAdmissionCommand(), newGitServerCommand())
	addNodeCommands(root, reconciler)
	return root
}

// The groups of `netpact --help`.
const (
	clientGroup = "client"
	daemonGroup = "daemon"
)

func inGroup(root *cobra.Command, group string, cmds ...*cobra.Command) {
	for _, c := range cmds {
		c.GroupID = group
		root.AddCommand(c)
	}
}

func main() {
	if runCNIPlugin() {
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
