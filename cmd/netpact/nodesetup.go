//go:build linux

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/enforcer/kubenode"
)

// newNodeSetupCommand is the DaemonSet's init container: the two things that need privileges
// the enforcer itself runs without.
func newNodeSetupCommand() *cobra.Command {
	var bpffs string
	cmd := &cobra.Command{
		Use:   "node-setup",
		Short: "Prepare a node for the enforcer: the node's bpffs, and IP forwarding",
		Long: `node-setup mounts a bpffs at --bpffs when none is there (in the node's mount namespace: the
init container mounts it with Bidirectional propagation, which Kubernetes allows only to a
privileged container) and turns on IPv4 and IPv6 forwarding. The enforcer then runs with
capabilities only, its pins on the node's bpffs so that they outlive it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st unix.Statfs_t
			if err := unix.Statfs(bpffs, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
				if err := os.MkdirAll(bpffs, 0o755); err != nil {
					return fmt.Errorf("bpffs dir: %w", err)
				}
				if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
					return fmt.Errorf("mount bpffs at %s: %w", bpffs, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "mounted a bpffs at %s\n", bpffs)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s is a bpffs already\n", bpffs)
			}
			if err := kubenode.EnableForwarding(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "IPv4 and IPv6 forwarding on")
			return nil
		},
	}
	cmd.Flags().StringVar(&bpffs, "bpffs", "/sys/fs/bpf", "where the node's bpffs is (or is mounted)")
	return cmd
}
