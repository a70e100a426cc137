package kubenode

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/policy"
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

// clusterInputs is what a sync reads from the informers and the CNI records to make the
// engine's endpoints.
type clusterInputs struct {
	namespaces map[string]bool
	nodes      map[string]bool
	nodeIPs    map[netip.Addr]bool
	records    map[policy.EndpointKey]cniplugin.Endpoint
	pods       map[policy.EndpointKey]*corev1.Pod
}

// cluster builds the engine's view from the informers, and the node's pods from the CNI records.
func (e *Enforcement) cluster() ([]enforcer.LocalPod, *policy.Cluster, error) {
	var newest newestVersion
	var in clusterInputs
	c := &policy.Cluster{}
	c.Namespaces, in.namespaces = e.listNamespaces(&newest)
	c.Nodes, in.nodes, in.nodeIPs = e.listNodes()
	// The node's own pods: their addresses from the CNI records (the API server learns them
	// only after the ADD that waits for this sync), labels from the Pod objects.
	var err error
	if in.records, err = e.localRecords(); err != nil {
		return nil, nil, err
	}
	in.pods = e.listPods(in.records, &newest)
	var local []enforcer.LocalPod
	c.Endpoints, local = e.endpoints(&in)
	e.mu.Lock()
	e.observed = int64(newest)
	e.mu.Unlock()
	return local, c, nil
}

// listNamespaces is the informer's namespaces, sorted by name, and the set of their names.
func (e *Enforcement) listNamespaces(newest *newestVersion) ([]policy.Namespace, map[string]bool) {
	var out []policy.Namespace
	have := map[string]bool{}
	for _, o := range e.nss.GetStore().List() {
		ns := o.(*corev1.Namespace)
		newest.see(ns.ResourceVersion)
		out = append(out, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
		have[ns.Name] = true
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, have
}

// listNodes is the informer's nodes, sorted by name, with their internal and external
// addresses (each given to the first node listed with it); the set of their names; and the set
// of those addresses, which no pod holds.
func (e *Enforcement) listNodes() ([]policy.Node, map[string]bool, map[netip.Addr]bool) {
	var out []policy.Node
	have := map[string]bool{}
	ips := map[netip.Addr]bool{}
	for _, o := range e.nodes.GetStore().List() {
		n := o.(*corev1.Node)
		pn := policy.Node{Name: n.Name, Labels: n.Labels}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil && !ips[ip.Unmap()] {
				ips[ip.Unmap()] = true
				pn.IPs = append(pn.IPs, ip.Unmap())
			}
		}
		out = append(out, pn)
		have[n.Name] = true
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, have, ips
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

// endpoints is the engine's endpoints, in key order, and the node's own pods.
func (e *Enforcement) endpoints(in *clusterInputs) ([]policy.Endpoint, []enforcer.LocalPod) {
	keys := make([]policy.EndpointKey, 0, len(in.pods))
	for k := range in.pods {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	owners := addressOwners{}
	eps := map[policy.EndpointKey]*policy.Endpoint{}
	var local []enforcer.LocalPod
	for _, k := range keys {
		p := in.pods[k]
		if p.Spec.HostNetwork || !in.namespaces[p.Namespace] {
			continue
		}
		rec, isLocal := in.records[k]
		isLocal = isLocal && p.Spec.NodeName == e.cfg.NodeName && (rec.PodUID == "" || rec.PodUID == string(p.UID))
		if !isLocal && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
			continue
		}
		ep := podEndpoint(p, in.nodes)
		var ips []string
		if isLocal {
			ips = rec.IPs
			local = append(local, localPod(k, rec))
		} else {
			for _, ip := range p.Status.PodIPs {
				ips = append(ips, ip.IP)
			}
		}
		cl := addressClaim{key: k, created: p.CreationTimestamp.Time, local: isLocal}
		for _, s := range ips {
			ip, err := netip.ParseAddr(s)
			if err != nil || in.nodeIPs[ip.Unmap()] {
				continue
			}
			if owners.take(ip.Unmap(), cl, eps) {
				ep.IPs = append(ep.IPs, ip.Unmap())
			}
		}
		eps[k] = ep
	}
	var out []policy.Endpoint
	for _, k := range keys {
		if ep, ok := eps[k]; ok {
			out = append(out, *ep)
		}
	}
	// A pod the plugin wired whose object is not known yet stays out of the engine: the
	// enforcer fails it closed ("not in the cluster") until its labels are known.
	for k, r := range in.records {
		if _, ok := eps[k]; !ok {
			local = append(local, localPod(k, r))
		}
	}
	return out, local
}

// podEndpoint is a pod as the engine sees it, without its addresses; its node only when the
// informer knows the node.
func podEndpoint(p *corev1.Pod, nodes map[string]bool) *policy.Endpoint {
	ep := &policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels,
		ServiceAccount: p.Spec.ServiceAccountName}
	if nodes[p.Spec.NodeName] {
		ep.Node = p.Spec.NodeName
	}
	for _, ct := range p.Spec.Containers {
		for _, port := range ct.Ports {
			proto, err := policy.ParseProto(string(port.Protocol))
			if err != nil {
				continue // SCTP and the like: no rule of ours names them
			}
			ep.Ports = append(ep.Ports, policy.NamedPort{Name: port.Name, Port: uint16(port.ContainerPort), Protocol: proto})
		}
	}
	return ep
}

func localPod(k policy.EndpointKey, r cniplugin.Endpoint) enforcer.LocalPod {
	return enforcer.LocalPod{Key: k, Ifindex: r.HostIfIndex, HostIfname: r.HostVeth, NetnsCookie: r.NetnsCookie}
}

// addressClaim is a pod's claim to one of its addresses.
type addressClaim struct {
	key     policy.EndpointKey
	created time.Time
	local   bool
}

// addressOwners is which pod holds each address so far.
type addressOwners map[netip.Addr]addressClaim

// take reports whether the claim wins ip, and takes ip from the endpoint that held it. An
// address two pods claim (a pod gone and its address reused) belongs to this node's own pod,
// else to the newer pod.
func (o addressOwners) take(ip netip.Addr, cl addressClaim, eps map[policy.EndpointKey]*policy.Endpoint) bool {
	if prev, taken := o[ip]; taken {
		if prev.local || (!cl.local && !cl.created.After(prev.created)) {
			return false
		}
		pe := eps[prev.key]
		pe.IPs = removeAddr(pe.IPs, ip)
	}
	o[ip] = cl
	return true
}

func removeAddr(ips []netip.Addr, a netip.Addr) []netip.Addr {
	out := ips[:0]
	for _, ip := range ips {
		if ip != a {
			out = append(out, ip)
		}
	}
	return out
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}
