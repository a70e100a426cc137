package kubenode

// Masquerade: a pod's packets to a host outside the cluster leave the node from the node's
// address, as Cilium (and kindnet) masquerade them: the far end has no route back to pod
// addresses. Traffic between pods, and from pods to nodes, keeps the pod's address (policies at
// the other end see who sent it). The rules live in nftables table "inet netpact" and are made
// exactly what the Node objects say on every sync, in one transaction.

import (
	"context"
	"fmt"
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"
)

// MasqueradeTable is the nftables table (family inet) of the masquerade rules.
const MasqueradeTable = "netpact"

// clusterAddrs are the cluster's own addresses, which pods reach unmasqueraded: every node's pod
// CIDRs and InternalIPs, by family.
func clusterAddrs(nodes []*corev1.Node) (v4, v6 []string) {
	for _, n := range nodes {
		for _, c := range podCIDRs(n) {
			if c.Addr().Is4() {
				v4 = append(v4, c.String())
			} else {
				v6 = append(v6, c.String())
			}
		}
		for _, a := range n.Status.Addresses {
			ip, err := netip.ParseAddr(a.Address)
			if err != nil || a.Type != corev1.NodeInternalIP {
				continue
			}
			if ip.Is4() {
				v4 = append(v4, ip.String())
			} else {
				v6 = append(v6, ip.String())
			}
		}
	}
	sort.Strings(v4)
	sort.Strings(v6)
	return v4, v6
}

// MasqueradeTransaction is the transaction that makes table inet netpact masquerade the
// packets of this node's pods (own, its pod CIDRs) to anything but the cluster's addresses.
func MasqueradeTransaction(nft knftables.Interface, own []netip.Prefix, nodes []*corev1.Node) *knftables.Transaction {
	v4, v6 := clusterAddrs(nodes)
	tx := nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("netpact: masquerade of pod traffic leaving the cluster")})
	tx.Add(&knftables.Chain{Name: "pod-egress", Type: knftables.PtrTo(knftables.NATType),
		Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority)})
	tx.Flush(&knftables.Chain{Name: "pod-egress"})
	for _, set := range []struct {
		name, typ string
		elems     []string
	}{{"cluster-v4", "ipv4_addr", v4}, {"cluster-v6", "ipv6_addr", v6}} {
		tx.Add(&knftables.Set{Name: set.name, Type: set.typ, Flags: []knftables.SetFlag{knftables.IntervalFlag},
			AutoMerge: knftables.PtrTo(true)})
		tx.Flush(&knftables.Set{Name: set.name})
		for _, e := range set.elems {
			tx.Add(&knftables.Element{Set: set.name, Key: []string{e}})
		}
	}
	for _, c := range own {
		family, set := "ip", "cluster-v4"
		if c.Addr().Is6() {
			family, set = "ip6", "cluster-v6"
		}
		tx.Add(&knftables.Rule{Chain: "pod-egress",
			Rule: knftables.Concat(family, "saddr", c.String(), family, "daddr", "!=", "@"+set, "masquerade")})
	}
	return tx
}

// syncMasquerade applies MasqueradeTransaction with the node's nft.
func (a *Agent) syncMasquerade(own []netip.Prefix, nodes []*corev1.Node) error {
	if a.nft == nil {
		nft, err := knftables.New(knftables.InetFamily, MasqueradeTable)
		if err != nil {
			return fmt.Errorf("masquerade: nftables: %w", err)
		}
		a.nft = nft
	}
	if err := a.nft.Run(context.Background(), MasqueradeTransaction(a.nft, own, nodes)); err != nil {
		return fmt.Errorf("masquerade: %w", err)
	}
	return nil
}
