package scenarios

import (
	"sync"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// BenchmarkMatrix486 probes cyclonus' full matrix on a local node: 9 pods x 9 pods x 6
// port/protocols (TCP, UDP and raw-packet SCTP on 80 and 81), with everything open and with a
// default deny that makes half the probes time out.
func BenchmarkMatrix486(b *testing.B) {
	testenv.RequireBPF(b)
	sc := &Scenario{Name: "matrix"}
	for _, ns := range []string{"x", "y", "z"} {
		sc.Namespaces = append(sc.Namespaces, Namespace{Name: ns})
	}
	node := NewLocal(LocalOptions{})
	if _, err := node.Start(sc); err != nil {
		b.Fatal(err)
	}
	defer node.Stop()
	cluster := &policy.Cluster{Nodes: []policy.Node{{Name: "local"}}}
	var pods []Pod
	i := 0
	for _, ns := range []string{"x", "y", "z"} {
		cluster.Namespaces = append(cluster.Namespaces, policy.Namespace{Name: ns, Labels: map[string]string{"ns": ns}})
		for _, name := range []string{"a", "b", "c"} {
			p := cyclonusPod(ns, name, map[string]string{"pod": name})
			ep, err := node.AddPod(p, 30+i)
			i++
			if err != nil {
				b.Fatal(err)
			}
			cluster.Endpoints = append(cluster.Endpoints, ep)
			pods = append(pods, p)
		}
	}
	sc.Pods = pods
	var cells []Cell
	for _, from := range pods {
		for _, to := range pods {
			for _, port := range to.Ports {
				cells = append(cells, Cell{From: from.Key(), To: to.Key(), Port: port})
			}
		}
	}
	half, err := policy.LoadBytes("deny.yaml", []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-x-y, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
`), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		policies []*policy.Policy
	}{{"open", nil}, {"x-denies-x-and-y", half.Policies}} {
		b.Run(c.name, func(b *testing.B) {
			if err := node.Enforce(cluster, c.policies); err != nil {
				b.Fatal(err)
			}
			// The case the benchmark names: every probe's outcome is what the engine predicts
			// (checked on the first round, before it counts), so a broken node cannot look fast.
			state, err := policy.Compile(cluster, &policy.Bundle{Policies: c.policies}, policy.Options{})
			if err != nil {
				b.Fatal(err)
			}
			var mu sync.Mutex
			var wrong, blocked int
			for n := 0; n < b.N; n++ {
				node.BeginStep() // each round's flows and notes alone, as a step's
				var wg sync.WaitGroup
				sem := make(chan struct{}, 96)
				for _, cell := range cells {
					wg.Add(1)
					go func() {
						defer wg.Done()
						sem <- struct{}{}
						got := node.Probe(cell)
						<-sem
						if n > 0 || cell.From == cell.To {
							return
						}
						want, _ := predict(sc, state, cell)
						mu.Lock()
						if got != want {
							wrong++
						}
						if want == Timeout {
							blocked++
						}
						mu.Unlock()
					}()
				}
				wg.Wait()
				if n == 0 && wrong > 0 {
					b.Fatalf("%d of %d probes disagree with the engine: the benchmark would measure a broken node", wrong, len(cells))
				}
			}
			if c.policies != nil && blocked == 0 {
				b.Fatal("the default-deny case blocked nothing")
			}
			b.ReportMetric(float64(len(cells)), "probes")
		})
	}

}
