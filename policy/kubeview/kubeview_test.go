package kubeview

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/policy"
)

// TestNodesGiveEachAddressOnce: nodes come out by name with their internal and external
// addresses; an address two nodes list is the first's by name, whatever order they came in.
func TestNodesGiveEachAddressOnce(t *testing.T) {
	node := func(name string, addrs ...corev1.NodeAddress) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
	}
	got := Nodes([]*corev1.Node{
		node("w2", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "172.18.0.3"},
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "172.18.0.2"}),
		node("w1", corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "::ffff:172.18.0.2"},
			corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
			corev1.NodeAddress{Type: corev1.NodeHostName, Address: "w1"},
			corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "not an address"}),
	})
	if s := fmt.Sprint(got); s != "[{w1 map[] [172.18.0.2 203.0.113.1]} {w2 map[] [172.18.0.3]}]" {
		t.Errorf("nodes %s", s)
	}
}

// TestEndpointsResolveClaims: an address claimed twice goes to the local pod, else to the newer;
// a node's address is no pod's; a pod of a namespace the cluster lacks is left out; a node the
// cluster lacks is not named; a pod claimed twice is one endpoint.
func TestEndpointsResolveClaims(t *testing.T) {
	now := time.Now()
	claim := func(ns, name, node string, created time.Time, ips ...string) Claim {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(created),
			Labels: map[string]string{"app": name}}, Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9, Protocol: "QUIC"}}}}}}
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		cl, ok := PodClaim(p)
		if !ok {
			t.Fatalf("%s/%s is not a pod's claim", ns, name)
		}
		return cl
	}
	c := &policy.Cluster{Namespaces: []policy.Namespace{{Name: "a"}},
		Nodes: []policy.Node{{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("172.18.0.2")}}}}
	local := claim("a", "local", "n1", now.Add(-time.Hour), "10.0.1.7")
	local.Local = true
	eps := Endpoints(c, []Claim{
		claim("a", "older", "n1", now.Add(-time.Minute), "10.0.2.9", "fd00::9"),
		claim("a", "newer", "gone", now, "10.0.2.9"),
		claim("a", "liar", "n1", now.Add(time.Minute), "10.0.1.7", "10.0.1.7", "::ffff:10.0.1.8"),
		local,
		claim("a", "hostish", "n1", now, "172.18.0.2"),
		claim("b", "early", "n1", now, "10.0.3.1"),
		claim("a", "newer", "n1", now, "10.0.2.10"),
	})
	if err := (&policy.Cluster{Namespaces: c.Namespaces, Nodes: c.Nodes, Endpoints: eps}).Validate(); err != nil {
		t.Fatalf("the endpoints do not validate: %v", err)
	}
	var got []string
	for _, ep := range eps {
		got = append(got, fmt.Sprintf("%s node=%q ips=%v ports=%v", ep.Key(), ep.Node, ep.IPs, ep.Ports))
	}
	want := []string{
		`a/hostish node="n1" ips=[] ports=[{http 80 TCP}]`,
		`a/liar node="n1" ips=[10.0.1.8] ports=[{http 80 TCP}]`,
		`a/local node="n1" ips=[10.0.1.7] ports=[{http 80 TCP}]`,
		`a/newer node="" ips=[10.0.2.9] ports=[{http 80 TCP}]`,
		`a/older node="n1" ips=[fd00::9] ports=[{http 80 TCP}]`,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("endpoints\n%s\nwant\n%s", fmt.Sprint(got), fmt.Sprint(want))
	}
}

// TestPodClaimLeavesOutHostNetwork: a host-network pod has its node's identity, not a claim.
func TestPodClaimLeavesOutHostNetwork(t *testing.T) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "enforcer"}, Spec: corev1.PodSpec{HostNetwork: true},
		Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "172.18.0.2"}}}}
	if _, ok := PodClaim(p); ok {
		t.Error("a host-network pod claims its node's address")
	}
}
