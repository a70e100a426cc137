package policy

import (
	"net/netip"
	"sort"
	"strconv"
	"sync/atomic"
)

// group is a set of endpoints that necessarily share one policy state: same identity and same
// named ports (pods), or one node (host endpoints).
type group struct {
	key       string
	identity  *Identity
	namespace string
	ports     []NamedPort
	node      *Node
	endpoints []EndpointKey
	// policies are the policies with a section selecting this group.
	policies map[Key]struct{}
	state    *EndpointState
}

// ipEntry is what an address resolves to.
type ipEntry struct {
	identity *Identity
	endpoint *Endpoint
	node     *Node
}

// universe is everything the engine knows about the cluster, derived once per cluster change:
// identities, the address cache, and the indexes that make selectors cheap to evaluate.
type universe struct {
	cluster     *Cluster
	clusterName string
	ids         map[ID]*Identity
	reserved    []*Identity
	pods        []*Identity
	podsByNS    map[string][]*Identity
	posting     map[string][]*Identity
	cidrs       []*Identity
	cidrByAddr  []int // indexes of cidrs by address, then length
	// cidrByPrefix finds a CIDR identity by its prefix; cidrBits are the lengths in use, longest
	// first.
	cidrByPrefix map[netip.Prefix]*Identity
	cidrBits     []int
	cidrSet      map[netip.Prefix]bool
	namespaces   map[string]*Namespace
	nodes        map[string]*Node
	endpoints    map[EndpointKey]*Endpoint
	groups       map[string]*group
	groupsByID   map[ID][]*group
	epGroup      map[EndpointKey]*group
	hostGroup    map[string]*group
	ipcache      map[netip.Addr]ipEntry
	// namedPorts are the named ports of the pods of each identity.
	namedPorts map[ID][]NamedPort
	allPorts   []NamedPort
	podIPs     []netip.Addr
	// fqdnSels are the policies' toFQDNs selectors by key (fqdnKeys, sorted); classes the FQDN
	// identities; learned the learned addresses' (replaced whole by SetLearned, read by any
	// goroutine holding a State).
	fqdnSels   map[string]FQDNSelector
	fqdnKeys   []string
	classes    []*Identity
	classByKey map[string]*Identity
	learned    atomic.Pointer[map[netip.Addr]*Identity]
}

func postingKey(key, value string) string { return key + "\x00" + value }

func newUniverse(c *Cluster, alloc *allocator, cidrs map[netip.Prefix]bool) *universe {
	name := c.Name
	if name == "" {
		name = "default"
	}
	u := &universe{
		cluster: c, clusterName: name,
		ids: map[ID]*Identity{}, podsByNS: map[string][]*Identity{}, posting: map[string][]*Identity{},
		namespaces: map[string]*Namespace{}, nodes: map[string]*Node{}, endpoints: map[EndpointKey]*Endpoint{},
		groups: map[string]*group{}, groupsByID: map[ID][]*group{}, epGroup: map[EndpointKey]*group{}, hostGroup: map[string]*group{},
		ipcache: map[netip.Addr]ipEntry{}, namedPorts: map[ID][]NamedPort{}, cidrSet: cidrs,
	}
	for id := IDHost; id <= IDWorldIPv6; id++ {
		ident := reservedIdentity(id)
		u.ids[id] = ident
		u.reserved = append(u.reserved, ident)
	}
	for i := range c.Namespaces {
		u.namespaces[c.Namespaces[i].Name] = &c.Namespaces[i]
	}
	for i := range c.Nodes {
		n := &c.Nodes[i]
		u.nodes[n.Name] = n
		u.hostGroup[n.Name] = &group{key: "host:" + n.Name, identity: u.ids[IDHost], node: n, policies: map[Key]struct{}{}}
		for _, ip := range n.IPs {
			u.ipcache[ip] = ipEntry{node: n}
		}
	}
	// Allocate in a stable order so that identity numbers do not depend on input order.
	type byKey struct {
		key string
		ep  *Endpoint
	}
	eps := make([]byKey, len(c.Endpoints))
	for i := range c.Endpoints {
		eps[i] = byKey{c.Endpoints[i].Key().String(), &c.Endpoints[i]}
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].key < eps[j].key })
	type portSig struct {
		id   ID
		port NamedPort
	}
	seenPort := map[portSig]bool{}
	for _, e := range eps {
		ep := e.ep
		u.endpoints[ep.Key()] = ep
		ls := podLabels(name, u.namespaces[ep.Namespace], ep)
		id := alloc.pod(ls, ep.IPs)
		ident, ok := u.ids[id]
		if !ok {
			ident = &Identity{ID: id, Kind: IdentityPod, Namespace: ep.Namespace, labels: ls}
			u.ids[id] = ident
			u.pods = append(u.pods, ident)
			u.podsByNS[ep.Namespace] = append(u.podsByNS[ep.Namespace], ident)
			for k, v := range ls {
				pk := postingKey(k, v.value)
				u.posting[pk] = append(u.posting[pk], ident)
			}
		}
		gk := "id:" + strconv.FormatUint(uint64(ident.ID), 10) + "|" + portsSignature(ep.Ports)
		g, ok := u.groups[gk]
		if !ok {
			g = &group{key: gk, identity: ident, namespace: ep.Namespace, ports: ep.Ports, policies: map[Key]struct{}{}}
			u.groups[gk] = g
			u.groupsByID[id] = append(u.groupsByID[id], g)
		}
		g.endpoints = append(g.endpoints, ep.Key())
		u.epGroup[ep.Key()] = g
		for _, ip := range ep.IPs {
			u.ipcache[ip] = ipEntry{identity: ident, endpoint: ep}
			u.podIPs = append(u.podIPs, ip)
		}
		for _, p := range ep.Ports {
			if p.Name == "" {
				continue
			}
			sig := portSig{id, p}
			if !seenPort[sig] {
				seenPort[sig] = true
				u.namedPorts[id] = append(u.namedPorts[id], p)
				u.allPorts = append(u.allPorts, p)
			}
		}
	}
	u.cidrs = cidrIdentities(alloc, cidrs)
	u.cidrByAddr = make([]int, len(u.cidrs))
	u.cidrByPrefix = make(map[netip.Prefix]*Identity, len(u.cidrs))
	lengths := map[int]bool{}
	for i, ci := range u.cidrs {
		u.ids[ci.ID] = ci
		u.cidrByAddr[i] = i
		u.cidrByPrefix[ci.Prefix] = ci
		lengths[ci.Prefix.Bits()] = true
	}
	for b := range lengths {
		u.cidrBits = append(u.cidrBits, b)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(u.cidrBits)))
	sort.Slice(u.cidrByAddr, func(i, j int) bool {
		a, b := u.cidrs[u.cidrByAddr[i]].Prefix, u.cidrs[u.cidrByAddr[j]].Prefix
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c < 0
		}
		return a.Bits() < b.Bits()
	})
	return u
}

// resolve returns what an address is, as seen by the datapath of node observer: a node's own
// addresses carry the host identity there and remote-node everywhere else.
func (u *universe) resolve(observer string, ip netip.Addr) (ID, ipEntry) {
	ip = ip.Unmap()
	if e, ok := u.ipcache[ip]; ok {
		if e.node != nil {
			if e.node.Name == observer {
				return IDHost, e
			}
			return IDRemoteNode, e
		}
		return e.identity.ID, e
	}
	if ci, ok := u.learnedIdentity(ip); ok {
		return ci.ID, ipEntry{identity: ci}
	}
	ci := u.cidrIdentityOf(ip)
	return ci.ID, ipEntry{identity: ci}
}

// cidrIdentityOf is the most specific CIDR identity holding ip, or world-ipv4 / world-ipv6: one
// map lookup per prefix length in use, longest first (not a scan of every CIDR of every policy).
func (u *universe) cidrIdentityOf(ip netip.Addr) *Identity {
	for _, bits := range u.cidrBits {
		if bits > ip.BitLen() {
			continue
		}
		p, err := ip.Prefix(bits)
		if err != nil {
			continue
		}
		if ci, ok := u.cidrByPrefix[p]; ok {
			return ci
		}
	}
	if ip.Is4() {
		return u.ids[IDWorldIPv4]
	}
	return u.ids[IDWorldIPv6]
}

// candidates narrows the pod identities a selector can match using the namespace and
// label-value indexes.
func (u *universe) candidates(s *selector) []*Identity {
	if ns, ok := s.namespaceOf(); ok {
		return u.podsByNS[ns]
	}
	var best []*Identity
	found := false
	for _, r := range s.reqs {
		if r.op != opIn {
			continue
		}
		var list []*Identity
		for _, v := range r.values {
			list = append(list, u.posting[postingKey(r.key, v)]...)
		}
		if !found || len(list) < len(best) {
			best, found = list, true
		}
	}
	if found {
		return best
	}
	return u.pods
}

// selectIdentities evaluates a peer selector over pod identities, and over reserved identities
// when the selector names a reserved label.
func (u *universe) selectIdentities(s *selector) []ID {
	var out []ID
	for _, ident := range u.candidates(s) {
		if s.matches(ident.labels) {
			out = append(out, ident.ID)
		}
	}
	if s.hasSource(sourceReserved) {
		for _, ident := range u.reserved {
			if s.matches(ident.labels) {
				out = append(out, ident.ID)
			}
		}
	}
	return out
}

// entityIdentities returns the identities an entity stands for.
func (u *universe) entityIdentities(entity string) (ids []ID, all bool) {
	world := func(v4, v6 bool) {
		if v4 && v6 {
			ids = append(ids, IDWorld)
		}
		if v4 {
			ids = append(ids, IDWorldIPv4)
		}
		if v6 {
			ids = append(ids, IDWorldIPv6)
		}
		for _, ci := range u.cidrs {
			if (ci.Prefix.Addr().Is4() && v4) || (ci.Prefix.Addr().Is6() && v6) {
				ids = append(ids, ci.ID)
			}
		}
	}
	switch entity {
	case "all":
		return nil, true
	case "world":
		world(true, true)
	case "world-ipv4":
		world(true, false)
	case "world-ipv6":
		world(false, true)
	case "cluster":
		ids = append(ids, IDHost, IDRemoteNode, IDHealth, IDInit, IDUnmanaged, IDKubeAPIServer, IDIngress)
		for _, p := range u.pods {
			if p.labels[LabelCluster].value == u.clusterName {
				ids = append(ids, p.ID)
			}
		}
	case "host":
		ids = append(ids, IDHost)
	case "remote-node":
		ids = append(ids, IDRemoteNode)
	case "kube-apiserver":
		ids = append(ids, IDKubeAPIServer)
	case "health":
		ids = append(ids, IDHealth)
	case "init":
		ids = append(ids, IDInit)
	case "ingress":
		ids = append(ids, IDIngress)
	case "unmanaged":
		ids = append(ids, IDUnmanaged)
	}
	return ids, false
}

// cidrIdentitiesFor returns the CIDR and world identities a Cilium CIDR rule selects: those
// whose prefix lies inside the rule's CIDR and inside none of its exceptions.
func (u *universe) cidrIdentitiesFor(m cidrMatch) []ID {
	var ids []ID
	inside := func(p netip.Prefix) bool {
		if p.Addr().Is4() != m.prefix.Addr().Is4() || p.Bits() < m.prefix.Bits() || !m.prefix.Contains(p.Addr()) {
			return false
		}
		for _, e := range m.excepts {
			if p.Bits() >= e.Bits() && e.Contains(p.Addr()) {
				return false
			}
		}
		return true
	}
	// The prefixes inside the rule's CIDR are a run of u.cidrByAddr: those whose address is in
	// it. Found by binary search, not by a scan of every CIDR of every policy, so that a long
	// CIDR list costs its length, not its length times everyone's.
	start := m.prefix.Masked().Addr()
	lo := sort.Search(len(u.cidrByAddr), func(i int) bool {
		return u.cidrs[u.cidrByAddr[i]].Prefix.Addr().Compare(start) >= 0
	})
	var found []int
	for _, i := range u.cidrByAddr[lo:] {
		p := u.cidrs[i].Prefix
		if p.Addr().Is4() != start.Is4() || !m.prefix.Contains(p.Addr()) {
			break
		}
		if inside(p) {
			found = append(found, i)
		}
	}
	sort.Ints(found) // in u.cidrs' order, as a scan of it gives them
	for _, i := range found {
		ids = append(ids, u.cidrs[i].ID)
	}
	if m.prefix.Bits() == 0 {
		if m.prefix.Addr().Is4() {
			ids = append(ids, IDWorldIPv4, IDWorld)
		} else {
			ids = append(ids, IDWorldIPv6, IDWorld)
		}
	}
	return ids
}

// subjectGroups returns the groups a section's subject selects.
func (u *universe) subjectGroups(s subject) []*group {
	var out []*group
	if s.host {
		for _, n := range u.cluster.Nodes {
			ls := labelSet{}
			for k, v := range n.Labels {
				ls[k] = labelValue{sourceK8s, v}
			}
			if s.sel.matches(ls) {
				out = append(out, u.hostGroup[n.Name])
			}
		}
		return out
	}
	ids := map[ID]bool{}
	for _, ident := range u.candidates(s.sel) {
		if s.sel.matches(ident.labels) {
			ids[ident.ID] = true
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return u.groupsOf(ids)
}

func (u *universe) groupsOf(ids map[ID]bool) []*group {
	var out []*group
	for id := range ids {
		out = append(out, u.groupsByID[id]...)
	}
	return out
}
