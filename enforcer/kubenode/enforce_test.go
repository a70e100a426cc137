package kubenode

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/policy"
)

// newOffline is an Enforcement whose informers are never started: the tests fill their stores
// the way the informers would, and read what the sync derives from them. No API server is
// asked anything (the address is closed).
func newOffline(t *testing.T) *Enforcement {
	t.Helper()
	cfg := &rest.Config{Host: "http://127.0.0.1:1"}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return NewEnforcement(EnforceConfig{NodeName: "n1", Client: client, Dynamic: dyn, EndpointDir: t.TempDir()})
}

func pod(ns, name, node, ip string, created time.Time, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name),
		Labels: map[string]string{"app": name}, CreationTimestamp: metav1.NewTime(created)}}
	p.Spec.NodeName = node
	p.Status.Phase = corev1.PodRunning
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func add(t *testing.T, store interface{ Add(any) error }, objs ...any) {
	t.Helper()
	for _, o := range objs {
		if err := store.Add(o); err != nil {
			t.Fatal(err)
		}
	}
}

func TestClusterFromInformers(t *testing.T) {
	e := newOffline(t)
	now := time.Now()
	add(t, e.nss.GetStore(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"team": "x"}}})
	add(t, e.nodes.GetStore(),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.18.0.2"}}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.18.0.3"}}}})
	add(t, e.pods.GetStore(),
		// Local: its address comes from the CNI record, not from the (not yet written) status.
		pod("a", "local", "n1", "", now),
		// A finished pod and a new one with its address: the new one owns it.
		pod("a", "old", "n2", "10.0.2.5", now.Add(-time.Hour), func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		pod("a", "new", "n2", "10.0.2.5", now),
		// Two running pods on one address: the newer wins, the older keeps no address.
		pod("a", "older", "n2", "10.0.2.9", now.Add(-time.Minute)),
		pod("a", "newer", "n2", "10.0.2.9", now),
		// A remote pod claiming the local pod's address loses it.
		pod("a", "liar", "n2", "10.0.1.7", now.Add(time.Minute)),
		// Host network: the node's identity, not a pod.
		pod("a", "hostnet", "n1", "172.18.0.2", now, func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		// A namespace the informer has not delivered yet: left out until it has.
		pod("b", "early", "n2", "10.0.2.20", now))
	if err := cniplugin.WriteEndpoint(e.cfg.EndpointDir, cniplugin.Endpoint{ContainerID: "c1", Namespace: "a", Pod: "local",
		PodUID: "a-local", HostVeth: "npdoesnotexist", HostIfIndex: 4242, IPs: []string{"10.0.1.7"}}); err != nil {
		t.Fatal(err)
	}
	if err := cniplugin.WriteEndpoint(e.cfg.EndpointDir, cniplugin.Endpoint{ContainerID: "c2", Namespace: "a", Pod: "unknown",
		HostVeth: "npdoesnotexis2", HostIfIndex: 4243, IPs: []string{"10.0.1.8"}}); err != nil {
		t.Fatal(err)
	}
	local, c, err := e.cluster()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the cluster does not validate: %v", err)
	}
	ips := map[string][]netip.Addr{}
	for _, ep := range c.Endpoints {
		ips[ep.Key().String()] = ep.IPs
	}
	want := map[string]string{"a/local": "10.0.1.7", "a/new": "10.0.2.5", "a/newer": "10.0.2.9", "a/older": "", "a/liar": ""}
	for k, w := range want {
		got, ok := ips[k]
		if !ok {
			t.Errorf("%s missing from the cluster", k)
			continue
		}
		if s := addrs(got); s != w {
			t.Errorf("%s has %q, want %q", k, s, w)
		}
	}
	for _, gone := range []string{"a/old", "a/hostnet", "b/early"} {
		if _, ok := ips[gone]; ok {
			t.Errorf("%s is in the cluster", gone)
		}
	}
	// Both records are local pods: the unknown one is failed closed by the enforcer (it is not
	// in the cluster), never left open.
	keys := map[string]int{}
	for _, lp := range local {
		keys[lp.Key.String()] = lp.Ifindex
	}
	if keys["a/local"] != 4242 || keys["a/unknown"] != 4243 || len(keys) != 2 {
		t.Errorf("local pods %v", keys)
	}
	if len(c.Nodes) != 2 || len(c.Nodes[0].IPs) != 1 {
		t.Errorf("nodes %+v", c.Nodes)
	}
}

func addrs(a []netip.Addr) string {
	var s []string
	for _, ip := range a {
		s = append(s, ip.String())
	}
	return strings.Join(s, ",")
}

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
