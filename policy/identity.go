package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// ID is a numeric security identity, as in Cilium.
type ID uint32

// Reserved identities, numbered as Cilium numbers them.
const (
	IDUnknown       ID = 0
	IDHost          ID = 1
	IDWorld         ID = 2
	IDUnmanaged     ID = 3
	IDHealth        ID = 4
	IDInit          ID = 5
	IDRemoteNode    ID = 6
	IDKubeAPIServer ID = 7
	IDIngress       ID = 8
	IDWorldIPv4     ID = 9
	IDWorldIPv6     ID = 10

	// FirstClusterID is the first identity given to a pod label set.
	FirstClusterID ID = 256
	// FirstLocalID is the first identity given to a CIDR (node-local scope, as in Cilium).
	FirstLocalID ID = 1 << 24
)

var reservedNames = map[ID]string{
	IDHost: "host", IDWorld: "world", IDUnmanaged: "unmanaged", IDHealth: "health", IDInit: "init",
	IDRemoteNode: "remote-node", IDKubeAPIServer: "kube-apiserver", IDIngress: "ingress",
	IDWorldIPv4: "world-ipv4", IDWorldIPv6: "world-ipv6",
}

// IdentityKind says what an identity stands for.
type IdentityKind uint8

const (
	IdentityReserved IdentityKind = iota
	IdentityPod
	IdentityCIDR
	// IdentityFQDN is a node-local identity of addresses DNS answers gave for names that
	// toFQDNs selectors match: one per set of selectors and CIDR identity the address has.
	IdentityFQDN
)

// Identity is a security identity and the labels it stands for.
type Identity struct {
	ID   ID
	Kind IdentityKind
	// Namespace is the namespace of a pod identity.
	Namespace string
	// Prefix is the CIDR of a CIDR identity, and 0.0.0.0/0 or ::/0 for world-ipv4/world-ipv6;
	// for an FQDN identity, the prefix of the CIDR identity its addresses have besides.
	Prefix netip.Prefix
	// FQDNs are the toFQDNs selectors an FQDN identity's addresses are selected by, and Base
	// the identity they would have without them (a CIDR identity, world-ipv4 or world-ipv6).
	FQDNs  []string
	Base   ID
	labels labelSet
}

// Labels returns the identity's labels as sorted "source:key=value" strings.
func (id *Identity) Labels() []string { return id.labels.Sorted() }

func (id *Identity) String() string {
	if name, ok := reservedNames[id.ID]; ok {
		return fmt.Sprintf("%d (reserved:%s)", id.ID, name)
	}
	if id.Kind == IdentityCIDR {
		return fmt.Sprintf("%d (cidr:%s)", id.ID, id.Prefix)
	}
	if id.Kind == IdentityFQDN {
		return fmt.Sprintf("%d (fqdn:%s)", id.ID, strings.Join(id.FQDNs, ","))
	}
	return fmt.Sprintf("%d", id.ID)
}

// allocator hands out identity numbers and keeps them stable for a label set for as long as the
// engine lives, so that the datapath does not churn when unrelated pods come and go. Preferred
// numbers (what a datapath that outlived an earlier engine holds) are given to label sets met
// for the first time when no other label set has them.
type allocator struct {
	byLabels  map[string]ID
	used      map[ID]bool
	nextPod   ID
	nextLocal ID
	// preferAddr and preferPrefix are the numbers an earlier engine gave the pod at an address
	// and the CIDR of a prefix.
	preferAddr   map[netip.Addr]ID
	preferPrefix map[netip.Prefix]ID
	// preferred are those numbers: a fresh number is never one of them, so that the label set
	// that had it still finds it free when it comes.
	preferred map[ID]bool
}

func newAllocator() *allocator {
	return &allocator{byLabels: map[string]ID{}, used: map[ID]bool{}, nextPod: FirstClusterID, nextLocal: FirstLocalID}
}

// pod returns the identity of a pod label set; ips are the addresses of a pod that has it, for
// a preferred number.
func (a *allocator) pod(ls labelSet, ips []netip.Addr) ID {
	k := ls.String()
	if id, ok := a.byLabels[k]; ok {
		return id
	}
	for _, ip := range ips {
		if id, ok := a.preferAddr[ip]; ok && id >= FirstClusterID && id < FirstLocalID && !a.used[id] {
			return a.give(k, id)
		}
	}
	for a.used[a.nextPod] || a.preferred[a.nextPod] {
		a.nextPod++
	}
	id := a.nextPod
	a.nextPod++
	return a.give(k, id)
}

func (a *allocator) give(k string, id ID) ID {
	a.byLabels[k] = id
	a.used[id] = true
	return id
}

func (a *allocator) cidr(p netip.Prefix) ID {
	return a.local("cidr:"+p.String(), p)
}

// local gives a node-local identity (a CIDR's, an FQDN class's) to a key, preferring the number
// an earlier engine gave the prefix.
func (a *allocator) local(k string, p netip.Prefix) ID {
	if id, ok := a.byLabels[k]; ok {
		return id
	}
	if id, ok := a.preferPrefix[p]; ok && id >= FirstLocalID && !a.used[id] {
		return a.give(k, id)
	}
	for a.used[a.nextLocal] || a.preferred[a.nextLocal] {
		a.nextLocal++
	}
	id := a.nextLocal
	a.nextLocal++
	return a.give(k, id)
}

func reservedIdentity(id ID) *Identity {
	ident := &Identity{ID: id, Kind: IdentityReserved, labels: labelSet{reservedNames[id]: {sourceReserved, ""}}}
	switch id {
	case IDWorldIPv4:
		ident.Prefix = netip.MustParsePrefix("0.0.0.0/0")
		ident.labels["world"] = labelValue{sourceReserved, ""}
	case IDWorldIPv6:
		ident.Prefix = netip.MustParsePrefix("::/0")
		ident.labels["world"] = labelValue{sourceReserved, ""}
	}
	return ident
}

// cidrIdentities allocates an identity for each CIDR named by a policy, sorted longest prefix
// first so that an address resolves to the most specific one.
func cidrIdentities(a *allocator, prefixes map[netip.Prefix]bool) []*Identity {
	out := make([]*Identity, 0, len(prefixes))
	for p := range prefixes {
		if p.Bits() == 0 {
			continue // the whole address family is world-ipv4 / world-ipv6
		}
		out = append(out, &Identity{ID: a.cidr(p), Kind: IdentityCIDR, Prefix: p,
			labels: labelSet{"cidr:" + p.String(): {sourceCIDR, ""}, "world": {sourceReserved, ""}}})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Prefix.Bits() != out[j].Prefix.Bits() {
			return out[i].Prefix.Bits() > out[j].Prefix.Bits()
		}
		return out[i].Prefix.Addr().Less(out[j].Prefix.Addr())
	})
	return out
}
