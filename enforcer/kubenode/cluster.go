package kubenode

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/policy/kubeview"
)

func clusterSum(c *policy.Cluster) [32]byte {
	b, _ := json.Marshal(c)
	return sha256.Sum256(b)
}

// newestVersion is the highest resourceVersion seen, which the status reports as observed.
type newestVersion int64

func (n *newestVersion) see(rv string) {
	if v, err := strconv.ParseInt(rv, 10, 64); err == nil && v > int64(*n) {
		*n = newestVersion(v)
	}
}

// clusterInputs is what a sync reads from the pod informer and the CNI records to make the
// engine's endpoints.
type clusterInputs struct {
	records map[policy.EndpointKey]cniplugin.Endpoint
	pods    map[policy.EndpointKey]*corev1.Pod
}

// cluster builds the engine's view from the informers, and the node's pods from the CNI records.
func (e *Enforcement) cluster() ([]enforcer.LocalPod, *policy.Cluster, error) {
	var newest newestVersion
	var in clusterInputs
	c := &policy.Cluster{}
	c.Namespaces = kubeview.Namespaces(e.listNamespaces(&newest))
	c.Nodes = kubeview.Nodes(e.listNodes())
	// The node's own pods: their addresses from the CNI records (the API server learns them
	// only after the ADD that waits for this sync), labels from the Pod objects.
	var err error
	if in.records, err = e.localRecords(); err != nil {
		return nil, nil, err
	}
	in.pods = e.listPods(in.records, &newest)
	var local []enforcer.LocalPod
	c.Endpoints, local = e.endpoints(c, &in)
	e.mu.Lock()
	e.observed = int64(newest)
	e.mu.Unlock()
	return local, c, nil
}

// listNamespaces is the informer's namespaces.
func (e *Enforcement) listNamespaces(newest *newestVersion) []*corev1.Namespace {
	var out []*corev1.Namespace
	for _, o := range e.nss.GetStore().List() {
		ns := o.(*corev1.Namespace)
		newest.see(ns.ResourceVersion)
		out = append(out, ns)
	}
	return out
}

// listNodes is the informer's nodes.
func (e *Enforcement) listNodes() []*corev1.Node {
	var out []*corev1.Node
	for _, o := range e.nodes.GetStore().List() {
		out = append(out, o.(*corev1.Node))
	}
	return out
}

// localRecords is the CNI plugin's record of each of the node's pods.
func (e *Enforcement) localRecords() (map[policy.EndpointKey]cniplugin.Endpoint, error) {
	records, err := cniplugin.Endpoints(e.cfg.EndpointDir)
	if err != nil {
		return nil, fmt.Errorf("read cni endpoints: %w", err)
	}
	out := map[policy.EndpointKey]cniplugin.Endpoint{}
	for _, r := range records {
		k := policy.EndpointKey{Namespace: r.Namespace, Name: r.Pod}
		if prev, dup := out[k]; dup && linkExists(prev.HostVeth) && !linkExists(r.HostVeth) {
			continue // a sandbox replaced; its DEL has not come yet
		}
		out[k] = r
	}
	return out, nil
}

// listPods is the informer's pods by key, with those WaitProgrammed fetched before the
// informer delivered them, while the plugin's record of them stays.
func (e *Enforcement) listPods(records map[policy.EndpointKey]cniplugin.Endpoint, newest *newestVersion) map[policy.EndpointKey]*corev1.Pod {
	pods := map[policy.EndpointKey]*corev1.Pod{}
	for _, o := range e.pods.GetStore().List() {
		p := o.(*corev1.Pod)
		newest.see(p.ResourceVersion)
		pods[policy.EndpointKey{Namespace: p.Namespace, Name: p.Name}] = p
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, p := range e.extraPods {
		if have, ok := pods[k]; ok && have.UID == p.UID {
			delete(e.extraPods, k)
			continue
		}
		if _, ok := records[k]; !ok {
			delete(e.extraPods, k)
			continue
		}
		pods[k] = p
	}
	return pods
}

// endpoints is the engine's endpoints of c's namespaces, in key order, and the node's own pods.
// A pod of this node claims the addresses of its CNI record; another pod, unless finished, those
// of its status.
func (e *Enforcement) endpoints(c *policy.Cluster, in *clusterInputs) ([]policy.Endpoint, []enforcer.LocalPod) {
	claims := make([]kubeview.Claim, 0, len(in.pods))
	local := map[policy.EndpointKey]bool{}
	for k, p := range in.pods {
		cl, ok := kubeview.PodClaim(p)
		if !ok {
			continue
		}
		rec, isLocal := in.records[k]
		isLocal = isLocal && p.Spec.NodeName == e.cfg.NodeName && (rec.PodUID == "" || rec.PodUID == string(p.UID))
		switch {
		case isLocal:
			cl.IPs, cl.Local = rec.IPs, true
			local[k] = true
		case kubeview.Finished(p):
			continue
		}
		claims = append(claims, cl)
	}
	eps := kubeview.Endpoints(c, claims)
	var pods []enforcer.LocalPod
	inCluster := map[policy.EndpointKey]bool{}
	for i := range eps {
		k := eps[i].Key()
		inCluster[k] = true
		if local[k] {
			pods = append(pods, localPod(k, in.records[k]))
		}
	}
	// A pod the plugin wired whose object is not known yet stays out of the engine: the
	// enforcer fails it closed ("not in the cluster") until its labels are known.
	for k, r := range in.records {
		if !inCluster[k] {
			pods = append(pods, localPod(k, r))
		}
	}
	return eps, pods
}

func localPod(k policy.EndpointKey, r cniplugin.Endpoint) enforcer.LocalPod {
	return enforcer.LocalPod{Key: k, Ifindex: r.HostIfIndex, HostIfname: r.HostVeth, NetnsCookie: r.NetnsCookie}
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}
