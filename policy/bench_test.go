package policy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

const (
	benchNamespaces    = 500
	benchPodsPerNS     = 10
	benchPoliciesPerNS = 20
)

// benchCluster is 500 namespaces of 10 pods: five apps of two replicas each, in three tiers.
func benchCluster() *policy.Cluster { return benchClusterOn(1) }

// benchClusterOn is benchCluster with its pods spread over nodes, the replicas of an app on two.
func benchClusterOn(nodes int) *policy.Cluster {
	c := &policy.Cluster{}
	for i := 0; i < nodes; i++ {
		c.Nodes = append(c.Nodes, policy.Node{Name: fmt.Sprintf("node-%d", i+1), IPs: []netip.Addr{netip.AddrFrom4([4]byte{172, 18, byte(i / 250), byte(i%250 + 2)})}})
	}
	for n := 0; n < benchNamespaces; n++ {
		ns := fmt.Sprintf("ns-%d", n)
		c.Namespaces = append(c.Namespaces, policy.Namespace{Name: ns, Labels: map[string]string{"team": fmt.Sprintf("team-%d", n%50), "env": []string{"prod", "dev"}[n%2]}})
		for p := 0; p < benchPodsPerNS; p++ {
			app := p / 2
			ip := netip.AddrFrom4([4]byte{10, byte(n / 250), byte(n % 250), byte(p + 1)})
			c.Endpoints = append(c.Endpoints, policy.Endpoint{
				Namespace: ns, Name: fmt.Sprintf("app-%d-%d", app, p%2), Node: fmt.Sprintf("node-%d", (n*benchPodsPerNS+p)%nodes+1),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": []string{"web", "api", "db"}[app%3]},
				IPs:    []netip.Addr{ip},
				Ports:  []policy.NamedPort{{Name: "http", Port: uint16(8000 + app), Protocol: policy.ProtoTCP}},
			})
		}
	}
	return c
}

// benchPolicy returns the i-th policy of a namespace; variant changes its ports so that an
// update has something to do.
func benchPolicy(n, i, variant int) string {
	ns := fmt.Sprintf("ns-%d", n)
	app, peer := i%5, (i+1)%5
	port := 8000 + app + variant*100
	switch i % 4 {
	case 0:
		return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p%d, namespace: %s}
spec:
  endpointSelector: {matchLabels: {app: app-%d}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: app-%d}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: team-%d, tier: web}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`, i, ns, app, peer, port, (n+1)%50, port)
	case 1:
		return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p%d, namespace: %s}
spec:
  podSelector: {matchLabels: {app: app-%d}}
  ingress:
  - from:
    - podSelector: {matchLabels: {tier: api}}
    - namespaceSelector: {matchLabels: {team: team-%d}}
      podSelector: {matchLabels: {app: app-%d}}
    ports: [{port: %d}, {port: http}]
`, i, ns, app, (n+7)%50, peer, port)
	case 2:
		return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p%d, namespace: %s}
spec:
  endpointSelector: {matchLabels: {tier: db}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
  - toEndpoints: [{matchLabels: {app: app-%d}}]
    toPorts: [{ports: [{port: "%d", endPort: %d, protocol: TCP}]}]
  egressDeny:
  - toCIDR: [192.0.2.%d/32]
`, i, ns, peer, port, port+10, (n*benchPoliciesPerNS+i)%250)
	default:
		return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p%d, namespace: %s}
spec:
  podSelector: {matchLabels: {tier: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 10.%d.0.0/16, except: [10.%d.%d.0/24]}}]
    ports: [{port: %d, protocol: TCP}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {env: prod}}}]
`, i, ns, n/250, n/250, n%250, port)
	}
}

func benchBundle(b *testing.B) *policy.Bundle {
	b.Helper()
	var docs []string
	for n := 0; n < benchNamespaces; n++ {
		for i := 0; i < benchPoliciesPerNS; i++ {
			docs = append(docs, benchPolicy(n, i, 0))
		}
	}
	bundle, err := policy.LoadBytes("bench.yaml", []byte(strings.Join(docs, "---\n")), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if len(bundle.Policies) != benchNamespaces*benchPoliciesPerNS {
		b.Fatalf("%d policies", len(bundle.Policies))
	}
	return bundle
}

// BenchmarkCompileFull compiles 10,000 policies over 5,000 endpoints in 500 namespaces.
func BenchmarkCompileFull(b *testing.B) {
	cluster, bundle := benchCluster(), benchBundle(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := policy.NewEngine(policy.Options{})
		if err := e.SetCluster(cluster); err != nil {
			b.Fatal(err)
		}
		e.SetPolicies(bundle.Policies)
	}
	b.StopTimer()
	reportEntries(b, cluster, bundle)
}

// BenchmarkCompileOneNode compiles the same policies for the pods of one node of 20, as an
// enforcer does (Options.Node): 250 pods, whose groups have a replica there.
func BenchmarkCompileOneNode(b *testing.B) {
	cluster, bundle := benchClusterOn(20), benchBundle(b)
	opts := policy.Options{Node: "node-1"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := policy.NewEngine(opts)
		if err := e.SetCluster(cluster); err != nil {
			b.Fatal(err)
		}
		e.SetPolicies(bundle.Policies)
	}
	b.StopTimer()
	reportEntriesOpts(b, cluster, bundle, opts)
}

func reportEntries(b *testing.B, cluster *policy.Cluster, bundle *policy.Bundle) {
	reportEntriesOpts(b, cluster, bundle, policy.Options{})
}

func reportEntriesOpts(b *testing.B, cluster *policy.Cluster, bundle *policy.Bundle, opts policy.Options) {
	st, err := policy.Compile(cluster, bundle, opts)
	if err != nil {
		b.Fatal(err)
	}
	entries := 0
	for _, k := range st.Endpoints() {
		es, _ := st.Endpoint(k)
		if es == nil {
			continue // another node's
		}
		entries += len(es.Ingress.Entries) + len(es.Egress.Entries)
	}
	b.ReportMetric(float64(entries), "entries")
}

// BenchmarkCompileOneChange updates one policy of the 10,000 and recompiles what it affects.
func BenchmarkCompileOneChange(b *testing.B) {
	cluster, bundle := benchCluster(), benchBundle(b)
	e := policy.NewEngine(policy.Options{})
	if err := e.SetCluster(cluster); err != nil {
		b.Fatal(err)
	}
	e.SetPolicies(bundle.Policies)
	var versions []*policy.Policy
	for v := 0; v < 2; v++ {
		nb, err := policy.LoadBytes("change.yaml", []byte(benchPolicy(250, 1, 1-v)), policy.LoadOptions{})
		if err != nil {
			b.Fatal(err)
		}
		versions = append(versions, nb.Policies[0])
	}
	b.ReportAllocs()
	b.ResetTimer()
	changed := 0
	for i := 0; i < b.N; i++ {
		changed = len(e.Upsert(versions[i%2]))
	}
	b.ReportMetric(float64(changed), "endpoints-changed")
}

// BenchmarkDecide measures one verdict from the compiled state.
func BenchmarkDecide(b *testing.B) {
	cluster, bundle := benchCluster(), benchBundle(b)
	st, err := policy.Compile(cluster, bundle, policy.Options{})
	if err != nil {
		b.Fatal(err)
	}
	src, dst := netip.MustParseAddr("10.0.7.3"), netip.MustParseAddr("10.0.7.1")
	st.Decide(src, dst, policy.ProtoTCP, 8000) // builds the lookup indexes once
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st.Decide(src, dst, policy.ProtoTCP, 8000)
	}
}
