package policy_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

// fakedLabelsCluster has pods that label themselves with keys Cilium derives from the namespace
// and the pod spec; anyone who can create a pod can write such a label.
//
//	b (team=backend)     b/server app=server 10.1.0.1, b/client app=client sa=backend-sa 10.1.0.2
//	a (team=frontend)    a/client     io.cilium.k8s.namespace.labels.team=backend       10.2.0.1
//	                     a/fake-ns    io.kubernetes.pod.namespace=b                     10.2.0.2
//	                     a/fake-sa    io.cilium.k8s.policy.serviceaccount=backend-sa    10.2.0.3
//	                     a/fake-exempt io.cilium.k8s.namespace.labels.lockdown=exempt   10.2.0.4
//	                     a/fake-other io.cilium.k8s.policy.derived-from=ops             10.2.0.5
//	c (no labels)        c/client     io.cilium.k8s.namespace.labels.team=backend       10.3.0.1
//	ops (lockdown=exempt) ops/tool app=tool                                             10.4.0.1
func fakedLabelsCluster() *policy.Cluster {
	a := netip.MustParseAddr
	pod := func(ns, name, ip string, labels map[string]string) policy.Endpoint {
		return policy.Endpoint{Namespace: ns, Name: name, Labels: labels, IPs: []netip.Addr{a(ip)},
			Ports: []policy.NamedPort{{Name: "http", Port: 80, Protocol: policy.ProtoTCP}}}
	}
	client := func(faked map[string]string) map[string]string {
		faked["app"] = "client"
		return faked
	}
	backendClient := pod("b", "client", "10.1.0.2", map[string]string{"app": "client"})
	backendClient.ServiceAccount = "backend-sa"
	return &policy.Cluster{
		Namespaces: []policy.Namespace{
			{Name: "a", Labels: map[string]string{"team": "frontend"}},
			{Name: "b", Labels: map[string]string{"team": "backend"}},
			{Name: "c"},
			{Name: "ops", Labels: map[string]string{"lockdown": "exempt"}},
		},
		Endpoints: []policy.Endpoint{
			pod("b", "server", "10.1.0.1", map[string]string{"app": "server"}),
			backendClient,
			pod("a", "client", "10.2.0.1", client(map[string]string{"io.cilium.k8s.namespace.labels.team": "backend"})),
			pod("a", "fake-ns", "10.2.0.2", client(map[string]string{"io.kubernetes.pod.namespace": "b"})),
			pod("a", "fake-sa", "10.2.0.3", client(map[string]string{"io.cilium.k8s.policy.serviceaccount": "backend-sa"})),
			pod("a", "fake-exempt", "10.2.0.4", client(map[string]string{"io.cilium.k8s.namespace.labels.lockdown": "exempt"})),
			pod("a", "fake-other", "10.2.0.5", client(map[string]string{"io.cilium.k8s.policy.derived-from": "ops"})),
			pod("c", "client", "10.3.0.1", client(map[string]string{"io.cilium.k8s.namespace.labels.team": "backend"})),
			pod("ops", "tool", "10.4.0.1", map[string]string{"app": "tool"}),
		},
	}
}

const citeCiliumSanitize = "cilium/cilium pkg/k8s/utils SanitizePodLabels: pod labels under io.cilium.k8s are dropped, namespace, service account and cluster labels come from their objects"

// TestPodCannotFakeDerivedLabels: a pod label never stands in for a label Cilium derives, so a
// pod gets past no namespace, service account or namespace-label selector by labelling itself.
func TestPodCannotFakeDerivedLabels(t *testing.T) {
	cases := []semanticCase{
		{name: "knp namespaceSelector", cite: citeCiliumSanitize + "; " + citeK8sSpec,
			policies: `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-backend, namespace: b}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: backend}}}]
`, probes: []flowProbe{
				"b/client -> b/server TCP/80 = allowed",
				"a/client -> b/server TCP/80 = default-denied",
				"c/client -> b/server TCP/80 = default-denied",
			}},
		{name: "cnp namespace-label selector", cite: citeCiliumSanitize,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-backend, namespace: b}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: backend}}]
`, probes: []flowProbe{
				"b/client -> b/server TCP/80 = allowed",
				"a/client -> b/server TCP/80 = default-denied",
				"c/client -> b/server TCP/80 = default-denied",
			}},
		{name: "cnp namespace-label selector with the k8s source", cite: citeCiliumSanitize,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-backend, namespace: b}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: backend}}]
`, probes: []flowProbe{
				"b/client -> b/server TCP/80 = allowed",
				"a/client -> b/server TCP/80 = default-denied",
				"c/client -> b/server TCP/80 = default-denied",
			}},
		{name: "ccnp egress lockdown exempting by namespace label", cite: citeCiliumSanitize,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: egress-lockdown}
spec:
  endpointSelector:
    matchExpressions: [{key: io.cilium.k8s.namespace.labels.lockdown, operator: NotIn, values: [exempt]}]
  egress:
  - toEndpoints: [{}]
`, probes: []flowProbe{
				"a/fake-exempt -> 8.8.8.8 TCP/80 = default-denied",
				"a/fake-exempt -> b/server TCP/80 = allowed",
				"ops/tool -> 8.8.8.8 TCP/80 = allowed",
				"b/client -> 8.8.8.8 TCP/80 = default-denied",
			}},
		{name: "ccnp namespace and service account selectors", cite: citeCiliumSanitize,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: server-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: b, app: client}
    - matchLabels: {io.cilium.k8s.policy.serviceaccount: backend-sa}
`, probes: []flowProbe{
				"b/client -> b/server TCP/80 = allowed",
				"a/fake-ns -> b/server TCP/80 = default-denied",
				"a/fake-sa -> b/server TCP/80 = default-denied",
			}},
		{name: "ccnp selector on any other io.cilium.k8s key", cite: citeCiliumSanitize,
			policies: `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: server-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.policy.derived-from: ops}}]
`, probes: []flowProbe{
				"a/fake-other -> b/server TCP/80 = default-denied",
			}},
	}
	for i := range cases {
		cases[i].cluster = fakedLabelsCluster
	}
	runSemantic(t, cases)
}

// TestClusterFileNamesIgnoredPodLabels: a reserved pod label is accepted, as Kubernetes accepts
// it, with a notice naming the pod, the label and its line.
func TestClusterFileNamesIgnoredPodLabels(t *testing.T) {
	const file = `namespaces: [{name: a}]
pods:
- name: attacker
  namespace: a
  ips: [10.2.0.1]
  labels:
    app: client
    io.cilium.k8s.namespace.labels.team: backend
    io.kubernetes.pod.namespace: b
`
	cf, err := policy.LoadClusterFile("cluster.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`notice: cluster.yaml:8: pod a/attacker: label "io.cilium.k8s.namespace.labels.team" is ignored for policy`,
		`notice: cluster.yaml:9: pod a/attacker: label "io.kubernetes.pod.namespace" is ignored for policy`,
	}
	if len(cf.Notices) != len(want) {
		t.Fatalf("notices %v, want %d", cf.Notices, len(want))
	}
	for i, w := range want {
		if got := cf.Notices[i].String(); !strings.HasPrefix(got, w) {
			t.Errorf("notice %q, want it to start with %q", got, w)
		}
	}
}
