package kubenode

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/enforcer/cniplugin"
)

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
