// Package cyclonus turns cyclonus' generated NetworkPolicy test cases into netpact inputs: it
// replays a case's actions on cyclonus' own resource model and gives the cluster and the policy
// bundle after each step. The conformance tests of the engine and of the datapath share it.
package cyclonus

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/mattfenwick/cyclonus/pkg/connectivity/probe"
	"github.com/mattfenwick/cyclonus/pkg/generator"
	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/netpact/netpact/policy"
)

// TestCases is every case of cyclonus' generator (all tags); zcIP is z/c's address, which its
// ipBlock cases are built around.
func TestCases(zcIP string) []*generator.TestCase {
	return generator.NewTestCaseGenerator(true, zcIP, []string{"x", "y", "z"}, nil, nil).GenerateTestCases()
}

// EngineIPs are pod addresses chosen around z/c so that the ipBlock cases (z/c's /24, except its
// /28) split the pods: some inside the /28, some inside the /24 only, some outside.
var EngineIPs = map[string]string{
	"x/a": "10.244.1.5", "x/b": "10.244.2.7", "x/c": "10.244.0.40",
	"y/a": "10.244.0.3", "y/b": "10.244.0.20", "y/c": "10.244.3.4",
	"z/a": "10.244.0.2", "z/b": "10.244.5.5", "z/c": "10.244.0.9",
}

// WithNameLabel adds the label the API server puts on every namespace; cyclonus reads namespace
// labels back from a real API server, so its truth tables include it.
func WithNameLabel(ns string, labels map[string]string) map[string]string {
	out := map[string]string{policy.LabelNamespaceName: ns}
	for k, v := range labels {
		out[k] = v
	}
	return out
}

// Resources are cyclonus' default pods: namespaces x, y, z with pods a, b, c each, serving 80
// and 81 over TCP, UDP and SCTP, with the given addresses ("ns/name" -> IP).
func Resources(ips map[string]string) *probe.Resources {
	r := &probe.Resources{Namespaces: map[string]map[string]string{}}
	for _, ns := range []string{"x", "y", "z"} {
		r.Namespaces[ns] = WithNameLabel(ns, map[string]string{"ns": ns})
		for _, name := range []string{"a", "b", "c"} {
			pod := probe.NewDefaultPod(ns, name, []int{80, 81}, []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}, false, "")
			pod.IP = ips[ns+"/"+name]
			r.Pods = append(r.Pods, pod)
		}
	}
	return r
}

// State replays a test case's actions, the way cyclonus' interpreter does against a
// cluster, keeping the resources and the policies that exist after each step.
type State struct {
	Res      *probe.Resources
	Policies []*networkingv1.NetworkPolicy
	// NewPod, when set, makes a pod cyclonus creates and returns its address; otherwise pods get
	// addresses from 10.244.0.101 up.
	NewPod func(ns, name string) (string, error)
	nextIP int
}

// Apply carries out one action of a test case.
func (s *State) Apply(a *generator.Action) error {
	var err error
	res := s.Res
	switch {
	case a.CreatePolicy != nil:
		s.Policies = append(s.Policies, a.CreatePolicy.Policy)
	case a.UpdatePolicy != nil:
		for i, p := range s.Policies {
			if p.Namespace == a.UpdatePolicy.Policy.Namespace && p.Name == a.UpdatePolicy.Policy.Name {
				s.Policies[i] = a.UpdatePolicy.Policy
			}
		}
	case a.DeletePolicy != nil:
		var kept []*networkingv1.NetworkPolicy
		for _, p := range s.Policies {
			if !(p.Namespace == a.DeletePolicy.Namespace && p.Name == a.DeletePolicy.Name) {
				kept = append(kept, p)
			}
		}
		s.Policies = kept
	case a.CreateNamespace != nil:
		res, err = res.CreateNamespace(a.CreateNamespace.Namespace, WithNameLabel(a.CreateNamespace.Namespace, a.CreateNamespace.Labels))
	case a.SetNamespaceLabels != nil:
		res, err = res.UpdateNamespaceLabels(a.SetNamespaceLabels.Namespace, WithNameLabel(a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels))
	case a.DeleteNamespace != nil:
		res, err = res.DeleteNamespace(a.DeleteNamespace.Namespace)
		var kept []*networkingv1.NetworkPolicy
		for _, p := range s.Policies {
			if p.Namespace != a.DeleteNamespace.Namespace {
				kept = append(kept, p)
			}
		}
		s.Policies = kept
	case a.CreatePod != nil:
		res, err = res.CreatePod(a.CreatePod.Namespace, a.CreatePod.Pod, a.CreatePod.Labels)
		if err == nil {
			ip := ""
			if s.NewPod != nil {
				ip, err = s.NewPod(a.CreatePod.Namespace, a.CreatePod.Pod)
			} else {
				s.nextIP++
				ip = fmt.Sprintf("10.244.0.%d", 100+s.nextIP)
			}
			res.Pods[len(res.Pods)-1].IP = ip
		}
	case a.SetPodLabels != nil:
		res, err = res.SetPodLabels(a.SetPodLabels.Namespace, a.SetPodLabels.Pod, a.SetPodLabels.Labels)
	case a.DeletePod != nil:
		res, err = res.DeletePod(a.DeletePod.Namespace, a.DeletePod.Pod)
	case a.ReadNetworkPolicies != nil:
	default:
		return fmt.Errorf("unknown action %+v", a)
	}
	if err != nil {
		return err
	}
	s.Res = res
	return nil
}

// Cluster describes the resources to the engine.
func (s *State) Cluster() *policy.Cluster {
	c := &policy.Cluster{Nodes: []policy.Node{{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("172.18.0.2")}}}}
	var nss []string
	for ns := range s.Res.Namespaces {
		nss = append(nss, ns)
	}
	sort.Strings(nss)
	for _, ns := range nss {
		c.Namespaces = append(c.Namespaces, policy.Namespace{Name: ns, Labels: s.Res.Namespaces[ns]})
	}
	for _, p := range s.Res.Pods {
		ep := policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Node: "node-1",
			IPs: []netip.Addr{netip.MustParseAddr(p.IP)}}
		for _, ct := range p.Containers {
			proto, _ := policy.ParseProto(string(ct.Protocol))
			ep.Ports = append(ep.Ports, policy.NamedPort{Name: ct.PortName, Port: uint16(ct.Port), Protocol: proto})
		}
		c.Endpoints = append(c.Endpoints, ep)
	}
	return c
}

// Bundle writes the policies as YAML and reads them back through the strict loader, so the
// conformance run covers parsing, validation and defaulting as well as the semantics.
func (s *State) Bundle() (*policy.Bundle, error) {
	var docs []string
	for _, p := range s.Policies {
		cp := p.DeepCopy()
		cp.APIVersion, cp.Kind = "networking.k8s.io/v1", "NetworkPolicy"
		y, err := yaml.Marshal(cp)
		if err != nil {
			return nil, err
		}
		docs = append(docs, string(y))
	}
	return policy.LoadBytes("cyclonus.yaml", []byte(strings.Join(docs, "---\n")), policy.LoadOptions{})
}
