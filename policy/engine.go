package policy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
)

// EnforcementMode is Cilium's policy enforcement mode.
type EnforcementMode string

const (
	// ModeDefault enforces a direction of an endpoint once a policy with rules for that direction
	// selects it.
	ModeDefault EnforcementMode = "default"
	// ModeAlways enforces every endpoint in both directions, with or without policies.
	ModeAlways EnforcementMode = "always"
	// ModeNever enforces nothing.
	ModeNever EnforcementMode = "never"
)

// ParseMode reads an enforcement mode name.
func ParseMode(s string) (EnforcementMode, error) {
	switch m := EnforcementMode(s); m {
	case ModeDefault, ModeAlways, ModeNever:
		return m, nil
	case "":
		return ModeDefault, nil
	}
	return "", fmt.Errorf("unknown policy enforcement mode %q: use default, always or never", s)
}

// Options are the engine's settings.
type Options struct {
	Mode EnforcementMode
	// EnforceHost stops the implicit allow of the local host to local endpoints (Cilium's
	// allow-localhost=policy). By default the host may reach its endpoints, so kubelet probes work.
	EnforceHost bool
	// Node, when set, compiles only the endpoints that share a group (identity, namespace,
	// ports) with one on that node, and that node's host: an enforcer's own pods. The others
	// keep identities and addresses, without state. Empty compiles all.
	Node string
}

// Engine compiles policies over a cluster into per-endpoint map state. It recomputes the state
// of the endpoints a change can affect and leaves the others untouched; a full recompute happens
// when the cluster or the set of policy CIDRs changes.
type Engine struct {
	opts     Options
	alloc    *allocator
	cluster  *Cluster
	u        *universe
	policies map[Key]*normPolicy
	sources  map[Key]*Policy
	rules    map[RuleID]*RuleInfo
	nextRule RuleID
	selCache map[string][]ID
	// gen counts universe rebuilds; a rule's resolved peers are valid for one generation.
	gen uint64
	// learned is what DNS answers taught the node (SetLearned).
	learned Learned
	// work is the state compileGroup builds a group's in before copying it out; shared the
	// directions compiled in the current batch (rebuild, refresh), by dirKey; secs and keyBuf
	// are reused buffers.
	work   *EndpointState
	shared map[string]*DirectionState
	secs   []*section
	keyBuf []byte
}

// NewEngine returns an engine with an empty cluster and no policies.
func NewEngine(opts Options) *Engine {
	if opts.Mode == "" {
		opts.Mode = ModeDefault
	}
	e := &Engine{
		opts: opts, alloc: newAllocator(), cluster: &Cluster{},
		policies: map[Key]*normPolicy{}, sources: map[Key]*Policy{},
		rules: map[RuleID]*RuleInfo{RuleAllowLocalhost: localhostRule}, nextRule: firstPolicyRule,
	}
	e.rebuild()
	return e
}

// PreferIdentities asks for the identity numbers a datapath already holds (from an earlier
// engine, before a restart): the ipcache's entries, host addresses (/32, /128) of pods and
// CIDR prefixes. A label set or CIDR met for the first time gets its preferred number when no
// other has it, so that a restarted enforcer does not renumber what the pinned maps hold. Call
// it before the first SetCluster.
func (e *Engine) PreferIdentities(ipcache map[netip.Prefix]ID) {
	a := e.alloc
	a.preferAddr, a.preferPrefix, a.preferred = map[netip.Addr]ID{}, map[netip.Prefix]ID{}, map[ID]bool{}
	for p, id := range ipcache {
		switch {
		case id >= FirstLocalID:
			a.preferPrefix[p] = id
		case id >= FirstClusterID && p.IsSingleIP():
			a.preferAddr[p.Addr()] = id
		default:
			continue
		}
		a.preferred[id] = true
	}
}

// Compile is the one-shot form: the state of a cluster under a bundle.
func Compile(c *Cluster, b *Bundle, opts Options) (*State, error) {
	e := NewEngine(opts)
	if err := e.SetCluster(c); err != nil {
		return nil, err
	}
	e.SetPolicies(b.Policies)
	return e.State(), nil
}

func (e *Engine) newRuleID() RuleID {
	id := e.nextRule
	e.nextRule++
	return id
}

func (e *Engine) policyCIDRs() map[netip.Prefix]bool {
	set := map[netip.Prefix]bool{}
	for _, np := range e.policies {
		for _, c := range np.cidrs {
			set[c] = true
		}
	}
	return set
}

// policyFQDNs are the toFQDNs selectors of every policy, by key.
func (e *Engine) policyFQDNs() map[string]FQDNSelector {
	set := map[string]FQDNSelector{}
	for _, np := range e.policies {
		for _, f := range np.fqdns {
			set[f.String()] = f
		}
	}
	return set
}

// idInputs are what the policies need identities for: a change to them renumbers peers.
type idInputs struct {
	cidrs map[netip.Prefix]bool
	fqdns map[string]FQDNSelector
}

func (e *Engine) idInputs() idInputs { return idInputs{e.policyCIDRs(), e.policyFQDNs()} }

func (a idInputs) same(b idInputs) bool {
	if !sameCIDRs(a.cidrs, b.cidrs) || len(a.fqdns) != len(b.fqdns) {
		return false
	}
	for k := range a.fqdns {
		if _, ok := b.fqdns[k]; !ok {
			return false
		}
	}
	return true
}

// rebuild derives the universe again and recompiles every endpoint.
func (e *Engine) rebuild() {
	e.u = newUniverse(e.cluster, e.alloc, e.policyCIDRs())
	e.u.addFQDNs(e.alloc, e.policyFQDNs(), e.learned)
	e.selCache = map[string][]ID{}
	e.gen++
	for _, np := range e.policies {
		e.index(np)
	}
	e.shared = map[string]*DirectionState{}
	for _, g := range e.allGroups() {
		g.state = e.compile(g)
	}
	e.shared = nil
}

// compile is the group's state, or nil for a group on another node than Options.Node.
func (e *Engine) compile(g *group) *EndpointState {
	if e.opts.Node != "" && !e.onNode(g) {
		return nil
	}
	return e.compileGroup(g)
}

// onNode says whether a group has an endpoint on Options.Node (pods of one identity share a
// group across nodes; a host group is its node's).
func (e *Engine) onNode(g *group) bool {
	if g.node != nil {
		return g.node.Name == e.opts.Node
	}
	for _, k := range g.endpoints {
		if ep := e.u.endpoints[k]; ep != nil && ep.Node == e.opts.Node {
			return true
		}
	}
	return false
}

func (e *Engine) allGroups() []*group {
	out := make([]*group, 0, len(e.u.groups)+len(e.u.hostGroup))
	for _, g := range e.u.groups {
		out = append(out, g)
	}
	for _, g := range e.u.hostGroup {
		out = append(out, g)
	}
	return out
}

// SetCluster replaces the cluster (namespaces, nodes, pods) and recompiles everything.
func (e *Engine) SetCluster(c *Cluster) error {
	if err := c.Validate(); err != nil {
		return err
	}
	e.cluster = c
	e.rebuild()
	return nil
}

// SetPolicies replaces every policy with the given ones.
func (e *Engine) SetPolicies(ps []*Policy) {
	for k, np := range e.policies {
		e.forget(np)
		delete(e.policies, k)
		delete(e.sources, k)
	}
	for _, p := range ps {
		np := normalize(p, e.newRuleID)
		e.policies[p.Key] = np
		e.sources[p.Key] = p
		for _, ri := range np.infos {
			e.rules[ri.ID] = ri
		}
	}
	e.rebuild()
}

// Upsert adds or replaces one policy and returns the endpoints whose state changed.
func (e *Engine) Upsert(p *Policy) []EndpointKey {
	before := e.idInputs()
	old := e.policies[p.Key]
	np := normalize(p, e.newRuleID)
	affected := map[*group]bool{}
	if old != nil {
		for _, g := range e.groupsOf(old) {
			affected[g] = true
		}
		e.forget(old)
	}
	e.policies[p.Key] = np
	e.sources[p.Key] = p
	for _, ri := range np.infos {
		e.rules[ri.ID] = ri
	}
	return e.refresh(before, np, affected)
}

// Delete removes one policy and returns the endpoints whose state changed.
func (e *Engine) Delete(k Key) []EndpointKey {
	old, ok := e.policies[k]
	if !ok {
		return nil
	}
	before := e.idInputs()
	affected := map[*group]bool{}
	for _, g := range e.groupsOf(old) {
		affected[g] = true
	}
	e.forget(old)
	delete(e.policies, k)
	delete(e.sources, k)
	return e.refresh(before, nil, affected)
}

func (e *Engine) refresh(before idInputs, np *normPolicy, affected map[*group]bool) []EndpointKey {
	if !before.same(e.idInputs()) {
		e.rebuild()
		var changed []EndpointKey
		for _, g := range e.allGroups() {
			changed = append(changed, g.endpoints...)
		}
		sortKeys(changed)
		return changed
	}
	if np != nil {
		for _, g := range e.index(np) {
			affected[g] = true
		}
	}
	var changed []EndpointKey
	e.shared = map[string]*DirectionState{}
	for g := range affected {
		g.state = e.compile(g)
		changed = append(changed, g.endpoints...)
	}
	e.shared = nil
	sortKeys(changed)
	return changed
}

func keyLess(a, b Key) bool {
	if a.Kind != b.Kind {
		return a.Kind < b.Kind
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

func sortKeys(ks []EndpointKey) {
	sort.Slice(ks, func(i, j int) bool { return ks[i].String() < ks[j].String() })
}

func sameCIDRs(a, b map[netip.Prefix]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// index records which groups a policy's sections select.
func (e *Engine) index(np *normPolicy) []*group {
	var out []*group
	for _, sec := range np.sections {
		for _, g := range e.u.subjectGroups(sec.subject) {
			if _, dup := g.policies[np.key]; !dup {
				g.policies[np.key] = struct{}{}
				out = append(out, g)
			}
		}
	}
	return out
}

func (e *Engine) groupsOf(np *normPolicy) []*group {
	var out []*group
	for _, sec := range np.sections {
		out = append(out, e.u.subjectGroups(sec.subject)...)
	}
	return out
}

func (e *Engine) forget(np *normPolicy) {
	for _, g := range e.groupsOf(np) {
		delete(g.policies, np.key)
	}
	for _, ri := range np.infos {
		delete(e.rules, ri.ID)
	}
}

func (e *Engine) selectCached(s *selector) []ID {
	if ids, ok := e.selCache[s.str]; ok {
		return ids
	}
	ids := e.u.selectIdentities(s)
	e.selCache[s.str] = ids
	return ids
}

// peerSet is a resolved peer specification.
type peerSet struct {
	all      bool
	ids      []ID
	prefixes []netip.Prefix
}

func (e *Engine) resolvePeers(ps *peerSpec) peerSet {
	out := peerSet{all: ps.all, prefixes: ps.blocks}
	for _, s := range ps.selectors {
		out.ids = append(out.ids, e.selectCached(s)...)
	}
	for _, ent := range ps.entities {
		ids, all := e.u.entityIdentities(ent)
		out.all = out.all || all
		out.ids = append(out.ids, ids...)
	}
	for _, c := range ps.cidrs {
		out.ids = append(out.ids, e.u.cidrIdentitiesFor(c)...)
	}
	out.ids = e.u.withFQDNClasses(out.ids, ps.fqdns)
	return out
}

// compileGroup computes the state of one group from every policy selecting it. A direction
// whose inputs (the rules that apply, and the group's named ports where they resolve on it) are
// those of a direction compiled earlier in the batch shares that one's state.
func (e *Engine) compileGroup(g *group) *EndpointState {
	if e.opts.Mode == ModeNever {
		return newEndpointState()
	}
	keys := make([]Key, 0, len(g.policies))
	for k := range g.policies {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keyLess(keys[i], keys[j]) })
	secs := e.secs[:0]
	for _, k := range keys {
		for _, sec := range e.policies[k].sections {
			if e.sectionSelects(sec, g) {
				secs = append(secs, sec)
			}
		}
	}
	e.secs = secs
	if e.shared == nil {
		e.shared = map[string]*DirectionState{}
	}
	out := &EndpointState{}
	var need [2]bool
	var dirKeys [2]string
	for d := range need {
		e.keyBuf = dirKey(e.keyBuf[:0], secs, Direction(d), g)
		if ds, ok := e.shared[string(e.keyBuf)]; ok {
			out.Dir(Direction(d)).shareFrom(ds)
			continue
		}
		need[d], dirKeys[d] = true, string(e.keyBuf)
	}
	if !need[Ingress] && !need[Egress] {
		return out
	}
	if e.work == nil {
		e.work = newEndpointState()
		e.work.Ingress.pool, e.work.Egress.pool = &entryPool{}, &entryPool{}
	}
	st := e.work
	st.Ingress.reset()
	st.Egress.reset()
	// enforcedForReal: a policy not in audit mode switched default deny on, per direction.
	var enforcedForReal [2]bool
	for _, sec := range secs {
		for d := range sec.enforce {
			if sec.enforce[d] && need[d] {
				ds := st.Dir(Direction(d))
				ds.Enforced = true
				ds.EnforcedBy = append(ds.EnforcedBy, sec.enforceRule[d].ID)
				enforcedForReal[d] = enforcedForReal[d] || !sec.enforceRule[d].Audit
			}
		}
		for _, r := range sec.rules {
			if need[r.dir] {
				e.addRule(st, g, r)
			}
		}
	}
	// Mode always covers pods; the host is only enforced by host policies (Cilium's host firewall).
	if e.opts.Mode == ModeAlways && g.node == nil {
		st.Ingress.Enforced, st.Egress.Enforced = true, true
		enforcedForReal = [2]bool{true, true}
	}
	// Default deny that only policies in audit mode switched on is audited: reported, not
	// enforced.
	for d := range enforcedForReal {
		ds := st.Dir(Direction(d))
		ds.Audited = ds.Enforced && !enforcedForReal[d]
	}
	if st.Ingress.Enforced && !e.opts.EnforceHost && g.node == nil {
		st.Ingress.add(MapKey{Identity: IDHost, Proto: ProtoAny, PortLo: 0, PortHi: 65535}, VerdictAllow, nil, RuleAllowLocalhost)
	}
	st.Egress.widenDNSRedirects()
	for d := range need {
		if need[d] {
			st.Dir(Direction(d)).copyTo(out.Dir(Direction(d)))
			e.shared[dirKeys[d]] = out.Dir(Direction(d))
		}
	}
	return out
}

// dirKey appends what one direction of a group's state depends on: whether the group is a host,
// the ids of the rules (unique, never reused) of the sections selecting it, in order, and the
// group's named ports when an ingress rule names a port.
func dirKey(b []byte, secs []*section, d Direction, g *group) []byte {
	b = append(b, byte(d))
	if g.node != nil {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	named := false
	for _, sec := range secs {
		if sec.enforce[d] {
			b = binary.LittleEndian.AppendUint32(b, uint32(sec.enforceRule[d].ID))
		}
		for _, r := range sec.rules {
			if r.dir != d || r.none {
				continue
			}
			b = binary.LittleEndian.AppendUint32(b, uint32(r.info.ID))
			for _, ps := range r.ports {
				named = named || (d == Ingress && ps.name != "")
			}
		}
	}
	if named {
		b = append(b, 0xff, 0xff, 0xff, 0xff) // no rule has this id
		for _, p := range g.ports {
			b = append(b, p.Name...)
			b = append(b, 0, byte(p.Protocol))
			b = binary.LittleEndian.AppendUint16(b, p.Port)
		}
	}
	return b
}

func (e *Engine) sectionSelects(sec *section, g *group) bool {
	if sec.subject.host != (g.node != nil) {
		return false
	}
	if g.node != nil {
		ls := labelSet{}
		for k, v := range g.node.Labels {
			ls[k] = labelValue{sourceK8s, v}
		}
		return sec.subject.sel.matches(ls)
	}
	return sec.subject.sel.matches(g.identity.labels)
}

func (e *Engine) addRule(st *EndpointState, g *group, r *normRule) {
	if r.none {
		return
	}
	ds := st.Dir(r.dir)
	if r.resolvedGen != e.gen {
		r.resolved, r.resolvedGen = e.resolvePeers(&r.peers), e.gen
	}
	peers := r.resolved
	verdict := VerdictAllow
	if r.deny {
		verdict = VerdictDeny
		if r.info.Audit {
			verdict = VerdictAudit
		}
	}
	for _, ps := range r.ports {
		v := verdict
		if ps.l7 != nil && !r.deny {
			v = VerdictProxy
		}
		if ps.name == "" {
			e.addPeers(ds, peers, ps.proto, ps.lo, ps.hi, v, ps.l7, r.info.ID)
			continue
		}
		if r.dir == Ingress {
			// Named ports of ingress rules resolve on the endpoint itself.
			for _, np := range resolveNamed(g.ports, ps) {
				e.addPeers(ds, peers, np.Protocol, np.Port, np.Port, v, ps.l7, r.info.ID)
			}
			continue
		}
		// Named ports of egress rules resolve on the destination: on the pods of each peer
		// identity, on every pod for a wildcard peer, and on the pods inside an ipBlock.
		if peers.all {
			for _, np := range resolveNamed(e.u.allPorts, ps) {
				ds.add(MapKey{Proto: np.Protocol, PortLo: np.Port, PortHi: np.Port}, v, ps.l7, r.info.ID)
			}
		}
		for _, id := range peers.ids {
			for _, np := range resolveNamed(e.u.namedPorts[id], ps) {
				ds.add(MapKey{Identity: id, Proto: np.Protocol, PortLo: np.Port, PortHi: np.Port}, v, ps.l7, r.info.ID)
			}
		}
		for _, pfx := range peers.prefixes {
			for _, ip := range e.u.podIPs {
				if !pfx.Contains(ip) {
					continue
				}
				ent := e.u.ipcache[ip]
				for _, np := range resolveNamed(ent.endpoint.Ports, ps) {
					host := netip.PrefixFrom(ip, ip.BitLen())
					ds.add(PrefixKey(host, np.Protocol, np.Port, np.Port), v, ps.l7, r.info.ID)
				}
			}
		}
	}
}

func resolveNamed(ports []NamedPort, ps portSpec) []NamedPort {
	var out []NamedPort
	for _, p := range ports {
		if p.Name == ps.name && (ps.proto == ProtoAny || ps.proto == p.Protocol) {
			out = append(out, p)
		}
	}
	return out
}

func (e *Engine) addPeers(ds *DirectionState, peers peerSet, proto Proto, lo, hi uint16, v Verdict, l7 *L7Policy, rule RuleID) {
	if peers.all {
		ds.add(MapKey{Proto: proto, PortLo: lo, PortHi: hi}, v, l7, rule)
	}
	for _, id := range peers.ids {
		ds.add(MapKey{Identity: id, Proto: proto, PortLo: lo, PortHi: hi}, v, l7, rule)
	}
	for _, p := range peers.prefixes {
		ds.add(PrefixKey(p, proto, lo, hi), v, l7, rule)
	}
}

// State returns a snapshot of the compiled state. Snapshots are immutable: later changes to the
// engine produce new endpoint states and leave the snapshot as it was.
func (e *Engine) State() *State {
	s := &State{
		u:         e.u,
		endpoints: make(map[EndpointKey]*EndpointState, len(e.u.epGroup)),
		hosts:     make(map[string]*EndpointState, len(e.u.hostGroup)),
		rules:     make(map[RuleID]*RuleInfo, len(e.rules)),
		policies:  make(map[Key]*Policy, len(e.sources)),
		cidrsOf:   make(map[Key][]netip.Prefix, len(e.policies)),
	}
	for k, np := range e.policies {
		if len(np.cidrs) > 0 {
			s.cidrsOf[k] = np.cidrs
		}
	}
	for k, g := range e.u.epGroup {
		s.endpoints[k] = g.state
	}
	for n, g := range e.u.hostGroup {
		s.hosts[n] = g.state
	}
	for id, ri := range e.rules {
		s.rules[id] = ri
	}
	for k, p := range e.sources {
		s.policies[k] = p
	}
	return s
}
