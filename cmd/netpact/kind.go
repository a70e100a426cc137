//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/netpact/netpact/kind"
)

func newKindCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kind",
		Short: "Create and delete kind clusters with netpact as the CNI, from locally built images",
	}
	var (
		name, config, manifest, images, kubeconfig, logs string
		retain                                           bool
		wait                                             time.Duration
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a kind cluster (1 control plane + 2 workers by default) and wait until it is Ready",
		Long: `create makes a kind cluster through kind's Go API from the node image kind/images.sh built,
loads the netpact and workload images into every node, applies netpact's DaemonSet (the CNI)
and waits until every node and every kube-system pod is Ready. The images file has the
"role=image" lines of "kind/images.sh list". Docker is the private engine of kind/dockerd.sh
unless DOCKER_HOST says otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			im, err := kind.ReadImages(images)
			if err != nil {
				return err
			}
			if kubeconfig == "" {
				kubeconfig = defaultKubeconfig(name)
			}
			start := time.Now()
			c, err := kind.Create(cmd.Context(), kind.Options{Name: name, Config: config, Manifest: manifest,
				Images: im, Kubeconfig: kubeconfig, Retain: retain, LogsDir: logs, Wait: wait, Out: cmd.OutOrStdout()})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %s ready in %.1fs; kubeconfig %s\n", c.Name, time.Since(start).Seconds(), c.Kubeconfig)
			return nil
		},
	}
	create.Flags().StringVar(&config, "config", "kind/cluster.yaml", "kind cluster configuration")
	create.Flags().StringVar(&manifest, "manifest", "deploy", "netpact's install manifests (a file, or a directory: crds/*.yaml, then *.yaml)")
	create.Flags().StringVar(&images, "images", "bin/images.list", `images file ("kind/images.sh list" output)`)
	create.Flags().BoolVar(&retain, "retain", false, "keep the nodes of a cluster that fails to come up")
	create.Flags().StringVar(&logs, "logs", "bin/kind-logs", "where node logs go when creation fails")
	create.Flags().DurationVar(&wait, "wait", 5*time.Minute, "how long to wait for nodes and kube-system pods")

	del := &cobra.Command{
		Use:   "delete",
		Short: "Delete a kind cluster, and kind's docker network when nothing else uses it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kubeconfig == "" {
				kubeconfig = defaultKubeconfig(name)
			}
			if err := kind.Delete(name, kubeconfig); err != nil {
				return err
			}
			if err := os.Remove(kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster %s deleted\n", name)
			return nil
		},
	}
	for _, c := range []*cobra.Command{create, del} {
		c.Flags().StringVar(&name, "name", kind.DefaultName, "cluster name")
		c.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (bin/kind-NAME.kubeconfig when empty)")
	}
	cmd.AddCommand(create, del)
	return cmd
}

func defaultKubeconfig(name string) string {
	return filepath.Join("bin", "kind-"+name+".kubeconfig")
}
