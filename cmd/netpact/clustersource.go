package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/policy/kubeview"
)

// clusterReadTimeout bounds reading a live cluster: a few pages of a few thousand pods take
// seconds; an API server that does not answer should not hang the command.
const clusterReadTimeout = 30 * time.Second

// loadCluster is the cluster predict and plan compute over: the cluster file at clusterPath
// (docs/cluster-file.md), or the pods, namespaces and nodes the cluster the cluster flags name
// (--kubeconfig or --context) has now. Exactly one must be given. Its notices go to stderr, as a
// cluster file's do.
func loadCluster(cmd *cobra.Command, clusterPath string, kube *clusterFlags) (*policy.ClusterFile, error) {
	live, err := kube.named("the cluster is the file of --cluster")
	switch {
	case err != nil:
		return nil, err
	case clusterPath != "" && live:
		return nil, errors.New("--cluster and --kubeconfig or --context both describe the cluster: give one of them")
	case clusterPath != "":
		return readClusterFile(cmd.ErrOrStderr(), "cluster file", clusterPath)
	case !live:
		return nil, errors.New("no cluster: give --cluster FILE (docs/cluster-file.md), or --kubeconfig FILE or --context NAME (a live cluster)")
	}
	cfg, err := kube.restConfig()
	if err != nil {
		return nil, err
	}
	// Protobuf and a higher rate than client-go's 5 requests a second: a large cluster is a hundred
	// pages, read once.
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.QPS, cfg.Burst = 50, 100
	source := "cluster " + kube.name()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, clusterReadTimeout)
	defer cancel()
	cf, err := kubeview.Snapshot(ctx, client, kubeview.Options{Source: source})
	switch {
	case apierrors.IsForbidden(err):
		return nil, fmt.Errorf("read %s (needs list on pods and namespaces, and on nodes to know them): %w", source, err)
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", source, err)
	}
	printNotices(cmd.ErrOrStderr(), cf.Notices)
	return cf, nil
}
