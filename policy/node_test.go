package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestNodeCompilesOnlyItsEndpoints: an engine for one node gives that node's pods and host the
// same state as an engine for the whole cluster, and no state to the other nodes' pods, through
// the full and the incremental path.
func TestNodeCompilesOnlyItsEndpoints(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docs", "examples", "cluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := LoadClusterFile("cluster.yaml", raw)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load([]string{filepath.Join("..", "policies")}, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	all, one := NewEngine(Options{}), NewEngine(Options{Node: "node-1"})
	for _, e := range []*Engine{all, one} {
		if err := e.SetCluster(&cf.Cluster); err != nil {
			t.Fatal(err)
		}
	}
	check := func(stage string) {
		sa, so := all.State(), one.State()
		local := 0
		for _, ep := range cf.Cluster.Endpoints {
			k := ep.Key()
			got, ok := so.Endpoint(k)
			want, _ := sa.Endpoint(k)
			if ep.Node != "node-1" {
				if ok {
					t.Errorf("%s: %s of %s has a state on node-1's engine", stage, k, ep.Node)
				}
				continue
			}
			local++
			if !ok || !reflect.DeepEqual(got, want) {
				t.Errorf("%s: %s: node-1's engine differs from the whole cluster's", stage, k)
			}
		}
		if h, ok := so.Host("node-1"); !ok || !reflect.DeepEqual(h, must(sa.Host("node-1"))) {
			t.Errorf("%s: node-1's host state differs", stage)
		}
		if _, ok := so.Host("node-2"); ok {
			t.Errorf("%s: node-2's host has a state on node-1's engine", stage)
		}
		if local < 3 {
			t.Fatalf("%s: only %d pods on node-1", stage, local)
		}
		if len(so.Endpoints()) != len(sa.Endpoints()) {
			t.Errorf("%s: node-1's engine lists %d pods, the cluster has %d", stage, len(so.Endpoints()), len(sa.Endpoints()))
		}
	}
	for i, p := range b.Policies {
		all.Upsert(p)
		one.Upsert(p)
		check(fmt.Sprintf("after upsert %d (%s)", i, p.Key))
	}
	all.Delete(b.Policies[0].Key)
	one.Delete(b.Policies[0].Key)
	check("after a delete")
	all.SetPolicies(b.Policies)
	one.SetPolicies(b.Policies)
	check("after SetPolicies")
}

func must(st *EndpointState, _ bool) *EndpointState { return st }
