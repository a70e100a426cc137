package kubenode

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/knftables"
)

// TestMasqueradeRules: this node's pod CIDRs are masqueraded towards anything but the cluster's
// pod CIDRs and node addresses, per family; a second sync with a node gone drops its addresses.
func TestMasqueradeRules(t *testing.T) {
	node := func(name, ip4, ip6, c4, c6 string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.NodeSpec{PodCIDRs: []string{c4, c6}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: ip4}, {Type: corev1.NodeInternalIP, Address: ip6}}}}
	}
	nodes := []*corev1.Node{node("a", "172.18.0.2", "fc00::2", "10.244.0.0/24", "fd00:10:244::/64"),
		node("b", "172.18.0.3", "fc00::3", "10.244.1.0/24", "fd00:10:244:1::/64")}
	own := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/64")}
	nft := knftables.NewFake(knftables.InetFamily, MasqueradeTable)
	if err := nft.Run(context.Background(), MasqueradeTransaction(nft, own, nodes)); err != nil {
		t.Fatal(err)
	}
	dump := nft.Dump()
	for _, want := range []string{
		"add rule inet netpact pod-egress ip saddr 10.244.0.0/24 ip daddr != @cluster-v4 masquerade",
		"add rule inet netpact pod-egress ip6 saddr fd00:10:244::/64 ip6 daddr != @cluster-v6 masquerade",
		"add element inet netpact cluster-v4 { 10.244.1.0/24 }",
		"add element inet netpact cluster-v4 { 172.18.0.3 }",
		"add element inet netpact cluster-v6 { fc00::3 }",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("want %q in\n%s", want, dump)
		}
	}
	if err := nft.Run(context.Background(), MasqueradeTransaction(nft, own, nodes[:1])); err != nil {
		t.Fatal(err)
	}
	if dump := nft.Dump(); strings.Contains(dump, "172.18.0.3") || strings.Count(dump, "saddr") != 2 {
		t.Errorf("after node b left:\n%s", dump)
	}
}
