package policy_test

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/mattfenwick/cyclonus/pkg/connectivity/probe"
	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/netpact/netpact/policy"
)

// Pod addresses chosen around z/c so that cyclonus' ipBlock cases (z/c's /24, except its /28)
// split the pods: some inside the /28, some inside the /24 only, some outside.
var cyclonusIPs = map[string]string{
	"x/a": "10.244.1.5", "x/b": "10.244.2.7", "x/c": "10.244.0.40",
	"y/a": "10.244.0.3", "y/b": "10.244.0.20", "y/c": "10.244.3.4",
	"z/a": "10.244.0.2", "z/b": "10.244.5.5", "z/c": "10.244.0.9",
}

// withNameLabel adds the label the API server puts on every namespace; cyclonus reads namespace
// labels back from a real API server, so its truth tables include it.
func withNameLabel(ns string, labels map[string]string) map[string]string {
	out := map[string]string{policy.LabelNamespaceName: ns}
	for k, v := range labels {
		out[k] = v
	}
	return out
}

func cyclonusResources() *probe.Resources {
	r := &probe.Resources{Namespaces: map[string]map[string]string{}}
	for _, ns := range []string{"x", "y", "z"} {
		r.Namespaces[ns] = withNameLabel(ns, map[string]string{"ns": ns})
		for _, name := range []string{"a", "b", "c"} {
			pod := probe.NewDefaultPod(ns, name, []int{80, 81}, []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}, false, "")
			pod.IP = cyclonusIPs[ns+"/"+name]
			r.Pods = append(r.Pods, pod)
		}
	}
	return r
}

// cyclonusState replays a test case's actions, the way cyclonus' interpreter does against a
// cluster, keeping the resources and the policies that exist after each step.
type cyclonusState struct {
	res      *probe.Resources
	policies []*networkingv1.NetworkPolicy
	nextIP   int
}

func (s *cyclonusState) apply(a *generator.Action) error {
	var err error
	res := s.res
	switch {
	case a.CreatePolicy != nil:
		s.policies = append(s.policies, a.CreatePolicy.Policy)
	case a.UpdatePolicy != nil:
		for i, p := range s.policies {
			if p.Namespace == a.UpdatePolicy.Policy.Namespace && p.Name == a.UpdatePolicy.Policy.Name {
				s.policies[i] = a.UpdatePolicy.Policy
			}
		}
	case a.DeletePolicy != nil:
		var kept []*networkingv1.NetworkPolicy
		for _, p := range s.policies {
			if !(p.Namespace == a.DeletePolicy.Namespace && p.Name == a.DeletePolicy.Name) {
				kept = append(kept, p)
			}
		}
		s.policies = kept
	case a.CreateNamespace != nil:
		res, err = res.CreateNamespace(a.CreateNamespace.Namespace, withNameLabel(a.CreateNamespace.Namespace, a.CreateNamespace.Labels))
	case a.SetNamespaceLabels != nil:
		res, err = res.UpdateNamespaceLabels(a.SetNamespaceLabels.Namespace, withNameLabel(a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels))
	case a.DeleteNamespace != nil:
		res, err = res.DeleteNamespace(a.DeleteNamespace.Namespace)
		var kept []*networkingv1.NetworkPolicy
		for _, p := range s.policies {
			if p.Namespace != a.DeleteNamespace.Namespace {
				kept = append(kept, p)
			}
		}
		s.policies = kept
	case a.CreatePod != nil:
		res, err = res.CreatePod(a.CreatePod.Namespace, a.CreatePod.Pod, a.CreatePod.Labels)
		if err == nil {
			s.nextIP++
			res.Pods[len(res.Pods)-1].IP = fmt.Sprintf("10.244.0.%d", 100+s.nextIP)
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
	s.res = res
	return nil
}

// cluster describes the resources to the engine.
func (s *cyclonusState) cluster() *policy.Cluster {
	c := &policy.Cluster{Nodes: []policy.Node{{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("172.18.0.2")}}}}
	var nss []string
	for ns := range s.res.Namespaces {
		nss = append(nss, ns)
	}
	sort.Strings(nss)
	for _, ns := range nss {
		c.Namespaces = append(c.Namespaces, policy.Namespace{Name: ns, Labels: s.res.Namespaces[ns]})
	}
	for _, p := range s.res.Pods {
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

// bundle writes the policies as YAML and reads them back through the strict loader, so the
// conformance run covers parsing, validation and defaulting as well as the semantics.
func (s *cyclonusState) bundle() (*policy.Bundle, error) {
	var docs []string
	for _, p := range s.policies {
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

// TestCyclonusConformance runs every case of cyclonus' generator (all tags) and checks each probe
// of each step against the truth table of cyclonus' matcher, loopback included.
func TestCyclonusConformance(t *testing.T) {
	base := cyclonusResources()
	zc, err := base.GetPod("z", "c")
	if err != nil {
		t.Fatal(err)
	}
	cases := generator.NewTestCaseGenerator(true, zc.IP, []string{"x", "y", "z"}, nil, nil).GenerateTestCases()
	jobs := &probe.JobBuilder{TimeoutSeconds: 1}
	var probes, steps, failedCases int
	for ci, tc := range cases {
		st := &cyclonusState{res: base}
		failed := false
		for si, step := range tc.Steps {
			for _, a := range step.Actions {
				if err := st.apply(a); err != nil {
					t.Fatalf("case %d %q step %d: %v", ci+1, tc.Description, si+1, err)
				}
			}
			steps++
			b, err := st.bundle()
			if err != nil {
				t.Fatalf("case %d %q step %d: load: %v", ci+1, tc.Description, si+1, err)
			}
			state, err := policy.Compile(st.cluster(), b, policy.Options{})
			if err != nil {
				t.Fatalf("case %d %q step %d: compile: %v", ci+1, tc.Description, si+1, err)
			}
			truth := matcher.BuildNetworkPolicies(true, st.policies)
			var mismatches []string
			for _, job := range jobs.GetJobsForProbeConfig(st.res, step.Probe).Valid {
				probes++
				want := truth.IsTrafficAllowed(job.Traffic()).IsAllowed()
				proto, _ := policy.ParseProto(string(job.Protocol))
				d := state.Decide(netip.MustParseAddr(job.FromIP), netip.MustParseAddr(job.ToIP), proto, uint16(job.ResolvedPort))
				got := d.Outcome == policy.OutcomeAllowed || d.Outcome == policy.OutcomeL7
				if got != want {
					mismatches = append(mismatches, fmt.Sprintf("%s -> %s %s/%d: cyclonus allowed=%v, netpact %s (%s)",
						job.FromKey, job.ToKey, job.Protocol, job.ResolvedPort, want, d.Outcome, d.Reason()))
				}
			}
			if len(mismatches) > 0 {
				failed = true
				t.Errorf("case %d %q step %d: %d of the probes disagree:\n  %s", ci+1, tc.Description, si+1,
					len(mismatches), strings.Join(mismatches[:min(len(mismatches), 12)], "\n  "))
			}
		}
		if failed {
			failedCases++
		}
	}
	fmt.Printf("cyclonus conformance: %d cases, %d steps, %d probes, %d cases failed\n", len(cases), steps, probes, failedCases)
	if len(cases) != 230 {
		t.Errorf("cyclonus v0.5.6 generates 230 cases, got %d", len(cases))
	}
}
