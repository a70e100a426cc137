package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netpact/netpact/enforcer/kubenode"
)

func newEnforcerCommand() *cobra.Command {
	var (
		kubeconfig, nodeName, cniBin, cniConf, listen string
		mtu                                           int
	)
	cmd := &cobra.Command{
		Use:   "enforcer",
		Short: "Run the node agent of a Kubernetes node (the netpact DaemonSet)",
		Long: `enforcer runs on every node of a cluster whose CNI is netpact. It installs its own binary
as the CNI plugin "netpact" with a configuration over the node's IPv4 and IPv6 pod CIDRs, turns
on forwarding, and routes every other node's pod CIDRs to that node's InternalIP, following the
Node objects. /readyz answers 200 once the node is wired.

The pods the plugin wires are recorded under /var/run/netpact/endpoints; the eBPF datapath
attaches to their veths from there when the enforcer enforces policy on Kubernetes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodeName == "" {
				return errors.New("--node-name (or NODE_NAME) is required")
			}
			cfg, err := restConfig(kubeconfig)
			if err != nil {
				return err
			}
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			agent := kubenode.New(kubenode.Config{NodeName: nodeName, Client: client, CNIBinDir: cniBin,
				CNIConfDir: cniConf, MTU: mtu, Log: log})
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if listen != "" {
				ln, err := net.Listen("tcp", listen)
				if err != nil {
					return fmt.Errorf("listen: %w", err)
				}
				srv := &http.Server{Handler: agent.Handler(), ReadHeaderTimeout: 5 * time.Second}
				go func() { _ = srv.Serve(ln) }()
				defer srv.Shutdown(context.Background())
			}
			log.Info("enforcer starting", "node", nodeName, "cniBinDir", cniBin, "cniConfDir", cniConf)
			return agent.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (in-cluster configuration when empty)")
	cmd.Flags().StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name")
	cmd.Flags().StringVar(&cniBin, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	cmd.Flags().StringVar(&cniConf, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	cmd.Flags().StringVar(&listen, "listen", ":9879", "address of /readyz and /routes (empty: none)")
	cmd.Flags().IntVar(&mtu, "mtu", 0, "MTU of pod interfaces (the default route's when 0)")
	return cmd
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (or pass --kubeconfig): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}
