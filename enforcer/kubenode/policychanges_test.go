package kubenode

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/netpact/netpact/policy"
)

func cnp(uid, rv string, gen int64, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "p", "namespace": "a", "uid": uid, "resourceVersion": rv, "generation": gen},
		"spec":     spec}}
	return u
}

// TestPolicyChangesKeepLastGood: a refused new generation keeps the last good one enforced and
// reported; a new object under the same name that is refused enforces nothing of the old one;
// a deleted object is deleted.
func TestPolicyChangesKeepLastGood(t *testing.T) {
	e := newOffline(t)
	good := map[string]any{"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": "x"}},
		"ingress": []any{map[string]any{"fromEndpoints": []any{map[string]any{"matchLabels": map[string]any{"app": "y"}}}}}}
	bad := map[string]any{"endpointSelector": map[string]any{},
		"egress": []any{map[string]any{"toServices": []any{map[string]any{"k8sService": map[string]any{"serviceName": "s"}}}}}}
	key := policy.Key{Kind: policy.KindCNP, Namespace: "a", Name: "p"}
	apply := func() ([]*policy.Policy, []policy.Key) {
		e.mu.Lock()
		defer e.mu.Unlock()
		up, del := e.policyChangesLocked()
		for _, p := range up {
			e.enforced[p.Key] = p
		}
		for _, k := range del {
			delete(e.enforced, k)
		}
		return up, del
	}
	add(t, e.cnps.GetStore(), cnp("u1", "1", 1, good))
	if up, _ := apply(); len(up) != 1 {
		t.Fatalf("generation 1 not upserted: %v", up)
	}
	if up, del := apply(); len(up)+len(del) != 0 {
		t.Fatalf("an unchanged object changed something: %v %v", up, del)
	}
	if err := e.cnps.GetStore().Update(cnp("u1", "2", 2, bad)); err != nil {
		t.Fatal(err)
	}
	up, del := apply()
	if len(up)+len(del) != 0 {
		t.Fatalf("a refused generation changed the engine: %v %v", up, del)
	}
	ps, _, refused := e.policiesStatusLocked()
	if len(ps) != 1 || ps[0].Generation != 1 || ps[0].ObservedGeneration != 2 || refused != 1 ||
		!strings.Contains(ps[0].Error, "toServices") {
		t.Fatalf("status %+v", ps)
	}
	// The same name, a new object (uid), refused: the old object's rules go.
	if err := e.cnps.GetStore().Update(cnp("u2", "3", 1, bad)); err != nil {
		t.Fatal(err)
	}
	if _, del := apply(); len(del) != 1 || del[0] != key {
		t.Fatalf("the replaced object was not deleted: %v", del)
	}
	if err := e.cnps.GetStore().Update(cnp("u2", "4", 2, good)); err != nil {
		t.Fatal(err)
	}
	if up, _ := apply(); len(up) != 1 {
		t.Fatalf("the good generation of the new object was not upserted")
	}
	if err := e.cnps.GetStore().Delete(cnp("u2", "4", 2, good)); err != nil {
		t.Fatal(err)
	}
	if _, del := apply(); len(del) != 1 {
		t.Fatalf("a deleted object was not deleted")
	}
	if ps, _, _ := e.policiesStatusLocked(); len(ps) != 0 {
		t.Fatalf("status still lists %+v", ps)
	}
}
