// Package kubeview converts a cluster's Kubernetes objects to the policy engine's view of it:
// the one conversion that the node agent (enforcer/kubenode, from its informers) and the CLI
// (Snapshot, from one read of the API server) share, so that both see the same pods, namespaces
// and nodes.
package kubeview

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/netpact/netpact/policy"
)

// Namespaces is the engine's namespaces, sorted by name.
func Namespaces(objs []*corev1.Namespace) []policy.Namespace {
	out := make([]policy.Namespace, 0, len(objs))
	for _, ns := range objs {
		out = append(out, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	slices.SortFunc(out, func(a, b policy.Namespace) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Nodes is the engine's nodes, sorted by name, with their internal and external addresses. An
// address two nodes list is given to the first by name: the engine gives an address one owner.
func Nodes(objs []*corev1.Node) []policy.Node {
	sorted := slices.Clone(objs)
	slices.SortFunc(sorted, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	taken := map[netip.Addr]bool{}
	out := make([]policy.Node, 0, len(sorted))
	for _, n := range sorted {
		pn := policy.Node{Name: n.Name, Labels: n.Labels}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil && !taken[ip.Unmap()] {
				taken[ip.Unmap()] = true
				pn.IPs = append(pn.IPs, ip.Unmap())
			}
		}
		out = append(out, pn)
	}
	return out
}

// PodEndpoint is a pod as the engine sees it, without its addresses (Endpoints gives them) and
// with the node its spec names, which Endpoints clears when the cluster does not list that node.
func PodEndpoint(p *corev1.Pod) *policy.Endpoint {
	ep := &policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels,
		ServiceAccount: p.Spec.ServiceAccountName, Node: p.Spec.NodeName}
	for _, ct := range p.Spec.Containers {
		for _, port := range ct.Ports {
			proto, err := policy.ParseProto(string(port.Protocol))
			if err != nil {
				continue // a protocol no rule of ours names
			}
			ep.Ports = append(ep.Ports, policy.NamedPort{Name: port.Name, Port: uint16(port.ContainerPort), Protocol: proto})
		}
	}
	return ep
}

// Claim is a pod as the engine sees it and the addresses it says are its own. It keeps no
// reference to the Pod object, so that a long list of claims holds only what the engine needs.
type Claim struct {
	Endpoint *policy.Endpoint
	Created  time.Time
	// IPs are the pod's status.podIPs, or for a pod of the node building the view the CNI
	// plugin's record of them (the API server learns them later).
	IPs []string
	// Local marks a pod of the node building the view: an address it claims is its own.
	Local bool
}

// PodClaim is a pod's claim to the addresses in its status; false for a host-network pod, which
// has its node's identity, not one of its own.
func PodClaim(p *corev1.Pod) (Claim, bool) {
	if p.Spec.HostNetwork {
		return Claim{}, false
	}
	c := Claim{Endpoint: PodEndpoint(p), Created: p.CreationTimestamp.Time}
	for _, ip := range p.Status.PodIPs {
		c.IPs = append(c.IPs, ip.IP)
	}
	return c, true
}

// Finished reports whether a pod has run to its end: its address may already be another pod's.
func Finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// Endpoints is the engine's endpoints for the claims of the pods in c's namespaces, in key order,
// a pod claimed twice once. Each gets the addresses it claims that are no node's of c and that no
// other claim wins: an address two pods claim (a pod gone and its address reused) belongs to the
// local pod, else to the newer pod. A pod's node is kept only when c lists it.
func Endpoints(c *policy.Cluster, claims []Claim) []policy.Endpoint {
	namespaces := map[string]bool{}
	for _, ns := range c.Namespaces {
		namespaces[ns.Name] = true
	}
	nodes := map[string]bool{}
	nodeIPs := map[netip.Addr]bool{}
	for _, n := range c.Nodes {
		nodes[n.Name] = true
		for _, ip := range n.IPs {
			nodeIPs[ip] = true
		}
	}
	sorted := slices.Clone(claims)
	slices.SortStableFunc(sorted, func(a, b Claim) int {
		return strings.Compare(a.Endpoint.Key().String(), b.Endpoint.Key().String())
	})
	owners := addressOwners{}
	eps := map[policy.EndpointKey]*policy.Endpoint{}
	var keys []policy.EndpointKey
	for _, cl := range sorted {
		k := cl.Endpoint.Key()
		if !namespaces[k.Namespace] || eps[k] != nil {
			continue
		}
		ep := *cl.Endpoint
		ep.IPs = nil
		if !nodes[ep.Node] {
			ep.Node = ""
		}
		eps[k] = &ep
		keys = append(keys, k)
		at := addressClaim{key: k, created: cl.Created, local: cl.Local}
		for _, s := range cl.IPs {
			ip, err := netip.ParseAddr(s)
			if err != nil || nodeIPs[ip.Unmap()] {
				continue
			}
			if owners.take(ip.Unmap(), at, eps) {
				ep.IPs = append(ep.IPs, ip.Unmap())
			}
		}
	}
	out := make([]policy.Endpoint, 0, len(keys))
	for _, k := range keys {
		out = append(out, *eps[k])
	}
	return out
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
// address two pods claim belongs to the local pod, else to the newer pod; a pod naming an address
// twice keeps it once.
func (o addressOwners) take(ip netip.Addr, cl addressClaim, eps map[policy.EndpointKey]*policy.Endpoint) bool {
	if prev, taken := o[ip]; taken {
		if prev.key == cl.key || prev.local || (!cl.local && !cl.created.After(prev.created)) {
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
