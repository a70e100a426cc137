package kubeview

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/policy"
)

// The most objects of each kind Snapshot reads: past Kubernetes' own scalability limits (5000
// nodes, 10000 namespaces), so that a real cluster fits and a hostile or broken API server cannot
// make it hold an unbounded list.
const (
	DefaultMaxPods       = 50000
	DefaultMaxNamespaces = 20000
	DefaultMaxNodes      = 10000
	// DefaultPageSize is the Limit of each list request.
	DefaultPageSize = 500
)

// Options tune Snapshot; the zero value reads with the defaults.
type Options struct {
	// Source names the cluster in notices where a cluster file has its name:
	// "cluster kind-netpact-e2e".
	Source string
	// MaxPods, MaxNamespaces and MaxNodes bound how many objects of each kind are read, listed pods
	// that are left out included; 0 is the default.
	MaxPods, MaxNamespaces, MaxNodes int
	// PageSize is the Limit of each list request; 0 is DefaultPageSize.
	PageSize int64
}

func (o Options) withDefaults() Options {
	if o.MaxPods <= 0 {
		o.MaxPods = DefaultMaxPods
	}
	if o.MaxNamespaces <= 0 {
		o.MaxNamespaces = DefaultMaxNamespaces
	}
	if o.MaxNodes <= 0 {
		o.MaxNodes = DefaultMaxNodes
	}
	if o.PageSize <= 0 {
		o.PageSize = DefaultPageSize
	}
	return o
}

// Snapshot is the cluster as the API server has it now, read once (namespaces, then nodes, then
// pods, each page by page) and converted as the node agent converts it. A pod is left out when
// it uses the host's network (it has its node's identity), has finished (its address may be
// another pod's), has no address yet, or is in a namespace created after the namespaces were
// read. Nodes are optional: a client that may not list them gets a cluster without nodes and a
// warning among the notices, with the notices a cluster file gets for reserved pod labels.
// The context bounds the time it takes.
func Snapshot(ctx context.Context, client kubernetes.Interface, opts Options) (*policy.ClusterFile, error) {
	opts = opts.withDefaults()
	cf := &policy.ClusterFile{}
	var nss []*corev1.Namespace
	err := eachObject(ctx, "namespaces", opts.PageSize, opts.MaxNamespaces, client.CoreV1().Namespaces().List,
		func(ns *corev1.Namespace) { nss = append(nss, ns) })
	if err != nil {
		return nil, err
	}
	cf.Namespaces = Namespaces(nss)

	var nodes []*corev1.Node
	err = eachObject(ctx, "nodes", opts.PageSize, opts.MaxNodes, client.CoreV1().Nodes().List,
		func(n *corev1.Node) { nodes = append(nodes, n) })
	switch {
	case apierrors.IsForbidden(err):
		nodes = nil
		cf.Notices = append(cf.Notices, policy.Notice{Warning: true, File: opts.Source,
			Message: "may not list nodes, so the cluster is read without them: their addresses have no host or remote-node identity and host policies (nodeSelector) select nothing; grant list on nodes to include them"})
	case err != nil:
		return nil, err
	}
	cf.Nodes = Nodes(nodes)

	// Each page's pods become claims as they come: only what the engine needs stays in memory.
	var claims []Claim
	err = eachObject(ctx, "pods", opts.PageSize, opts.MaxPods, client.CoreV1().Pods(metav1.NamespaceAll).List,
		func(p *corev1.Pod) {
			if cl, ok := PodClaim(p); ok && !Finished(p) && len(cl.IPs) > 0 {
				claims = append(claims, cl)
			}
		})
	if err != nil {
		return nil, err
	}
	cf.Endpoints = Endpoints(&cf.Cluster, claims)
	if err := cf.Validate(); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", opts.Source, err)
	}
	cf.Notices = append(cf.Notices, policy.ReservedLabelNotices(opts.Source, &cf.Cluster)...)
	return cf, nil
}

// eachObject lists a kind page by page (Limit, then Continue) and calls each with every object.
// It refuses more than max objects, before reading them when the API server says how many remain.
func eachObject[L runtime.Object, T any](ctx context.Context, kind string, pageSize int64, max int,
	list func(context.Context, metav1.ListOptions) (L, error), each func(*T)) error {
	lo := metav1.ListOptions{Limit: pageSize}
	seen := 0
	for {
		page, err := list(ctx, lo)
		if err != nil {
			return fmt.Errorf("list %s: %w", kind, err)
		}
		lm, err := meta.ListAccessor(page)
		if err != nil {
			return fmt.Errorf("list %s: %w", kind, err)
		}
		seen += meta.LenList(page)
		total := int64(seen)
		if rest := lm.GetRemainingItemCount(); rest != nil && *rest > 0 {
			total += *rest
		}
		if total > int64(max) {
			return fmt.Errorf("the cluster has %d or more %s, more than the %d netpact reads (describe the part to predict in a cluster file instead)", total, kind, max)
		}
		err = meta.EachListItem(page, func(o runtime.Object) error {
			obj, ok := any(o).(*T)
			if !ok {
				return fmt.Errorf("list %s: got a %T", kind, o)
			}
			each(obj)
			return nil
		})
		if err != nil {
			return err
		}
		if lm.GetContinue() == "" {
			return nil
		}
		lo.Continue = lm.GetContinue()
	}
}
