//go:build linux

package scenarios

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/netpact/netpact/enforcer/observe"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/localnode"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// LocalOptions configure a local node.
type LocalOptions struct {
	// ProbeTimeout bounds a probe that gets neither an answer nor a drop from the datapath; 5 s
	// when zero. A probe the datapath drops ends at the drop (probeContext), so the bound only
	// decides a probe nothing answered and nothing dropped.
	ProbeTimeout time.Duration
	// Retain keeps namespaces, veths and pins after the run, for debugging.
	Retain bool
	// Policy are the engine options the enforcer uses.
	Policy policy.Options
	// Pods, when set, are pods made beforehand (keyed namespace/name, for example by another
	// process of a parallel test suite); the node uses them instead of creating its own and
	// leaves them in place when it stops.
	Pods map[string]*podnet.Pod
	// Ring, when set, keeps the node's flows as Hubble reports them (netpact test serves it to
	// `netpact observe`).
	Ring *observe.Ring
}

// LocalNode is a Backend made of network namespaces on this host: an enforcer/localnode node
// (pods, datapath, enforcer) with the scenario's workloads and probes on top.
type LocalNode struct {
	opts       LocalOptions
	sc         *Scenario
	node       *localnode.Node
	servers    []*servers
	podServers map[string]*servers
	prober     *prober

	mu sync.Mutex
	// vips are the services' virtual addresses (ClusterIP and NodePort services), v4 and v6.
	vips map[string][2]netip.Addr
	// dnsNames answer the dns workload's queries: service names to their addresses.
	dnsNames map[string][]netip.Addr
	// backends are what each service frontend (virtual address and port) translates to, for the
	// probes' drop witness.
	backends map[netip.AddrPort][]netip.AddrPort
	// notes are what the step's probes said of how they ended, by cell, for Flows: a Kafka
	// probe's outcome, and why a probe timed out.
	notes map[string][]string
}

// NewLocal returns a local node backend; it needs root.
func NewLocal(opts LocalOptions) *LocalNode {
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = 5 * time.Second
	}
	return &LocalNode{opts: opts}
}

// Start brings up the node in the scenario's enforcement mode, makes its external hosts,
// creates the pods and starts their workloads.
func (n *LocalNode) Start(sc *Scenario) (*policy.Cluster, error) {
	n.sc = sc
	n.node = localnode.NewNode(localnode.Options{Retain: n.opts.Retain, Policy: sc.engineOptions(n.opts.Policy), Pods: n.opts.Pods,
		Ring: n.opts.Ring})
	n.podServers = map[string]*servers{}
	if err := n.node.Start(); err != nil {
		return nil, err
	}
	n.prober = &prober{sctp: newSCTPListeners()}
	if err := n.addExternals(); err != nil {
		return nil, err
	}
	n.vips = map[string][2]netip.Addr{}
	for i, svc := range sc.Services {
		if svc.Type != "Headless" {
			v4, v6 := n.node.VirtualAddrs(i)
			n.vips[svc.Key()] = [2]netip.Addr{v4, v6}
		}
	}
	c := &policy.Cluster{Nodes: []policy.Node{{Name: "local"}}, Namespaces: sc.namespaces()}
	for i, p := range sc.Pods {
		ep, err := n.AddPod(p, i)
		if err != nil {
			return nil, err
		}
		c.Endpoints = append(c.Endpoints, ep)
	}
	return c, nil
}

// addExternals makes the scenario's external hosts, at their addresses (ExternalAddrs), and
// starts their workloads.
func (n *LocalNode) addExternals() error {
	for i := range n.sc.Externals {
		e := &n.sc.Externals[i]
		v4, v6 := ExternalAddrs(i)
		p, err := n.node.AddExternal(ExternalKey(e.Name), i, v4, v6)
		if err != nil {
			return err
		}
		srv, err := startTLS(p, e)
		if err != nil {
			return err
		}
		n.servers = append(n.servers, srv)
	}
	return nil
}

// AddPod adds a pod to the running node (the i-th of the run; i picks its addresses), starts its
// workloads and returns it as an endpoint for the cluster. Enforce must follow to program it.
func (n *LocalNode) AddPod(p Pod, i int) (policy.Endpoint, error) {
	lp, err := n.node.AddPod(p.Key(), i)
	if err != nil {
		return policy.Endpoint{}, err
	}
	srv, err := startServers(lp, p.Workload, p.Ports, zone{lookup: n.lookupName, ttl: n.sc.dnsTTL()}, n.sc.kafkaTopics(p.Key()))
	if err != nil {
		return policy.Endpoint{}, err
	}
	n.servers = append(n.servers, srv)
	n.podServers[p.Key()] = srv
	if err := n.prober.sctp.listen(lp); err != nil {
		return policy.Endpoint{}, err
	}
	return p.endpoint("local", []netip.Addr{lp.IPv4, lp.IPv6}), nil
}

// RemovePod stops a pod's workloads and deletes it if the node made it (pods handed in through
// LocalOptions.Pods stay).
func (n *LocalNode) RemovePod(key string) error {
	if srv := n.podServers[key]; srv != nil {
		srv.Close()
		delete(n.podServers, key)
	}
	return n.node.RemovePod(key)
}

// Enforce programs every pod of the node, and the services' translation to the pods they
// select with the cluster's labels.
func (n *LocalNode) Enforce(c *policy.Cluster, policies []*policy.Policy) error {
	if err := n.node.Enforce(c, policies); err != nil {
		return err
	}
	return n.setServices(c)
}

// setServices gives every ClusterIP (and NodePort) service of the scenario its frontends on the
// node's virtual addresses, IPv4 and IPv6, per port, with the selected pods serving the target
// port as backends; and the DNS names the dns workload answers: the services' and the external
// hosts'.
func (n *LocalNode) setServices(c *policy.Cluster) error {
	labels := func(p *Pod) map[string]string {
		for _, ep := range c.Endpoints {
			if ep.Namespace == p.Namespace && ep.Name == p.Name {
				return ep.Labels
			}
		}
		return p.Labels
	}
	var fes []enforcer.Service
	dnsNames := map[string][]netip.Addr{}
	backends := map[netip.AddrPort][]netip.AddrPort{}
	for i, e := range n.sc.Externals {
		v4, v6 := ExternalAddrs(i)
		for _, name := range e.Names {
			dnsNames[policy.FQDN(name)] = []netip.Addr{v4, v6}
		}
	}
	for _, svc := range n.sc.Services {
		name := serviceName(svc)
		vip, ok := n.vips[svc.Key()]
		if ok {
			dnsNames[name] = vip[:]
		}
		for _, sp := range svc.Ports {
			pods, tp := n.sc.backends(&svc, sp, labels)
			if !ok {
				// Headless: the name resolves to the pods.
				for _, p := range pods {
					if lp := n.node.Pod(p.Key()); lp != nil && !slices.Contains(dnsNames[name], lp.IPv4) {
						dnsNames[name] = append(dnsNames[name], lp.IPv4, lp.IPv6)
					}
				}
				continue
			}
			if tp.Protocol != policy.ProtoTCP && tp.Protocol != policy.ProtoUDP {
				continue // SCTP: not translated
			}
			for fam, a := range vip {
				fe := enforcer.Service{Name: svc.Key(), Frontend: netip.AddrPortFrom(a, sp.Port), Proto: tp.Protocol}
				for _, p := range pods {
					if lp := n.node.Pod(p.Key()); lp != nil {
						addr := lp.IPv4
						if fam == 1 {
							addr = lp.IPv6
						}
						fe.Backends = append(fe.Backends, netip.AddrPortFrom(addr, tp.Port))
					}
				}
				fes = append(fes, fe)
				backends[fe.Frontend] = append(backends[fe.Frontend], fe.Backends...)
			}
		}
	}
	n.mu.Lock()
	n.dnsNames = dnsNames
	n.backends = backends
	n.mu.Unlock()
	if err := n.node.SetServices(fes); err != nil {
		return fmt.Errorf("services: %w", err)
	}
	return nil
}

// lookupName answers the dns workload: a service name, or not found.
func (n *LocalNode) lookupName(name string) ([]netip.Addr, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.dnsNames[name]
	return a, ok
}

// resolverAddr is the kube-dns ClusterIP the pods' resolver asks, when the scenario has one
// served by a pod with the dns workload.
func (n *LocalNode) resolverAddr() (netip.Addr, bool) {
	svc, ok := n.sc.service(DNSService)
	if !ok {
		return netip.Addr{}, false
	}
	for _, sp := range svc.Ports {
		pods, _ := n.sc.backends(svc, sp, nil)
		for _, p := range pods {
			if p.Workload == "dns" {
				return n.vips[DNSService][0], n.vips[DNSService][0].IsValid()
			}
		}
	}
	return netip.Addr{}, false
}

// BeginStep forgets the flows of earlier steps.
func (n *LocalNode) BeginStep() {
	n.node.ResetFlows()
	n.mu.Lock()
	n.notes = map[string][]string{}
	n.mu.Unlock()
}

// Probe runs one probe from the source pod: to the destination pod, through the service's
// virtual address, to an external host, or a lookup with the pod's resolver (kube-dns's virtual
// address).
func (n *LocalNode) Probe(c Cell) Outcome {
	from := n.node.Pod(c.From)
	if from == nil {
		return Timeout
	}
	if c.External != "" {
		return n.probeExternal(from, c)
	}
	if c.Lookup != "" {
		a, err := n.resolve(from, c.String(), c.From, c.Lookup)
		if err == errNoResolver {
			return "error"
		}
		return Outcome(probeagent.LookupOutcome(a, err, c.ExactRCode))
	}
	addr, port := netip.Addr{}, c.Port.Port
	if c.Service != "" {
		var o Outcome
		if addr, port, o = n.serviceTarget(from, c); o != "" {
			return o
		}
		if len(c.Backends) > 1 && addr == n.vips[c.Service][0] {
			// Translation picks a backend per connection: enough probes to meet each.
			outs := make([]Outcome, 0, 4*len(c.Backends))
			for range min(4*len(c.Backends), 16) {
				outs = append(outs, n.probeAddr(from, c, addr, port))
			}
			return combineSet(outs)
		}
	} else {
		to := n.node.Pod(c.To)
		if to == nil {
			return Timeout
		}
		addr = to.IPv4
	}
	return n.probeAddr(from, c, addr, port)
}

// serviceTarget is where a service probe connects: the service's virtual address (for
// clusterIP, and for nodePort: the local node has no kube-proxy), or the address its DNS name
// resolves to with the pod's resolver (the harness's own answer when the scenario has no
// kube-dns). A non-empty outcome ends the probe (the lookup failed).
func (n *LocalNode) serviceTarget(from *podnet.Pod, c Cell) (netip.Addr, uint16, Outcome) {
	if c.Via != "dns" {
		return n.vips[c.Service][0], c.ServicePort.Port, ""
	}
	svc, _ := n.sc.service(c.Service)
	port := c.ServicePort.Port
	if svc.Type == "Headless" {
		port = c.Port.Port
	}
	name := serviceName(*svc)
	if _, ok := n.resolverAddr(); ok {
		a, err := n.resolve(from, c.String(), c.From, name)
		if o := Outcome(probeagent.LookupOutcome(a, err, false)); o != Allow || len(a.Addrs) == 0 {
			if o == Allow {
				o = "error"
			}
			return netip.Addr{}, 0, o
		}
		return a.Addrs[0], port, ""
	}
	addrs, ok := n.lookupName(name)
	if !ok || len(addrs) == 0 {
		return netip.Addr{}, 0, "error"
	}
	return addrs[0], port, ""
}

// errNoResolver: the scenario has no kube-dns served by the dns workload (validation requires
// one for lookup probes).
var errNoResolver = errors.New("no kube-dns service over a pod of the dns workload")

// resolve resolves name from the source pod (namespace/name: key) with the pod's resolver:
// kube-dns's virtual address, and the search list of the pod's namespace. How the lookup ended
// is noted under cell.
func (n *LocalNode) resolve(from *podnet.Pod, cell, key, name string) (probeagent.Answer, error) {
	resolver, ok := n.resolverAddr()
	if !ok {
		return probeagent.Answer{}, errNoResolver
	}
	ns, _, _ := strings.Cut(key, "/")
	ctx, done := n.probeContext(from, cell)
	defer done()
	return n.prober.resolve(ctx, from, ns, resolver, name)
}

// probeExternal connects from a pod to an external host over HTTPS: to its IPv4 address, or
// for a lookup-then-connect cell to the address its name resolved to with the pod's resolver
// (the outcome of a lookup that gave none ends the probe). The host must answer with its name.
func (n *LocalNode) probeExternal(from *podnet.Pod, c Cell) Outcome {
	ext := n.node.External(ExternalKey(c.External))
	e, _, ok := n.sc.external(c.External)
	if ext == nil || !ok {
		return "error"
	}
	to, serverName := ext.IPv4, ext.IPv4.String()
	if len(e.Names) > 0 {
		serverName = e.Names[0]
	}
	if c.Resolve != nil {
		a, err := n.resolve(from, c.String(), c.Resolve.From, c.Resolve.Lookup)
		if err == errNoResolver {
			return "error"
		}
		addr, o := probeagent.ConnectTarget(a, err)
		if o != "" {
			return Outcome(o)
		}
		to, serverName = addr, strings.TrimSuffix(c.Resolve.Lookup, ".")
	}
	ctx, done := n.probeContext(from, c.String())
	defer done()
	return n.prober.tlsGet(ctx, from, netip.AddrPortFrom(to, c.Port.Port), serverName, probeagent.ExternalBody(c.External))
}

// probeContext is the context one probe runs in. It ends when the datapath reports that it
// dropped a packet of one of the probe's own sockets (probeSockets: from the source pod's
// address, with the socket's protocol and port, to the address and port it connected to or, for
// a service's, to one of its backends), so a blocked probe ends on the datapath's word, at
// once, and a probe that gets an answer ends with it; only a probe that got neither waits out
// the probe timeout. An allowed connection that is slow because the CPUs are busy is therefore
// never taken for a blocked one, and another connection's drop (an earlier step's, or the L7
// proxy's own connection onwards, whose port is the host's) never ends this probe. Why a probe
// ended without an answer goes to the cell's notes (Flows).
func (n *LocalNode) probeContext(from *podnet.Pod, cell string) (context.Context, func()) {
	socks := &probeSockets{ports: map[probePort]netip.AddrPort{}}
	n.mu.Lock()
	backends := n.backends // replaced, never changed, by setServices
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), probeSocketsKey{}, socks), n.opts.ProbeTimeout)
	dropped, stop := n.node.WatchDrops(func(f datapath.Flow) bool { return witnesses(f, from, socks, backends) })
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		select {
		case f := <-dropped:
			n.note(cell, "dropped by the datapath: "+n.node.Describe(f))
			cancel()
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				n.note(cell, fmt.Sprintf("no answer, and no drop of its packets, within the probe timeout (%s)", n.opts.ProbeTimeout))
			}
		}
	}()
	return ctx, func() {
		stop()
		cancel()
		<-finished
		if err := socks.failed(); err != nil {
			n.note(cell, err.Error())
		}
	}
}

// witnesses says whether the datapath's drop f is of one of the probe's own packets: from the
// source pod's address, with a socket's protocol and port, to where that socket connected (or a
// backend of that service frontend). A packet dropped as spoofed is another pod's forgery of the
// probe's address, never the probe's own: it does not end the probe.
func witnesses(f datapath.Flow, from *podnet.Pod, socks *probeSockets, backends map[netip.AddrPort][]netip.AddrPort) bool {
	if f.Reason == datapath.ReasonDropSpoof || (f.Src != from.IPv4 && f.Src != from.IPv6) {
		return false
	}
	to, ok := socks.remote(f.Proto, f.SrcPort)
	dst := netip.AddrPortFrom(f.Dst, f.DstPort)
	return ok && (dst == to || slices.Contains(backends[to], dst))
}

// maxNotes bounds the lines noted of one cell in a step (a service probe is several connections).
const maxNotes = 4

// note adds a line to what Flows says of a cell, once.
func (n *LocalNode) note(cell, line string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.notes == nil {
		n.notes = map[string][]string{}
	}
	if l := n.notes[cell]; len(l) < maxNotes && !slices.Contains(l, line) {
		n.notes[cell] = append(l, line)
	}
}

// probeAddr probes addr:port from a pod: a pod's address, or a service's virtual address.
func (n *LocalNode) probeAddr(from *podnet.Pod, c Cell, addr netip.Addr, port uint16) Outcome {
	ctx, done := n.probeContext(from, c.String())
	defer done()
	switch {
	case c.Kafka != "":
		o, note := n.prober.kafka(ctx, from, addr, port, c)
		n.note(c.String(), strings.TrimSuffix(fmt.Sprintf("%s from %s to %s: %s", o, c.From, netip.AddrPortFrom(addr, port), note), ": "))
		return o
	case c.GRPC:
		return n.prober.grpc(ctx, from, addr, port, c.path())
	case c.HTTP:
		return n.prober.http(ctx, from, addr, port, c)
	case c.Port.Protocol == policy.ProtoTCP:
		return n.prober.tcp(ctx, from, addr, port)
	case c.Port.Protocol == policy.ProtoUDP:
		return n.prober.udp(ctx, from, addr, port)
	case c.Port.Protocol == policy.ProtoSCTP:
		return n.prober.sctpInit(ctx, from, addr, port)
	}
	return Timeout
}

// Flows returns what the cells' probes noted, then the datapath's flow events between the
// cells' pods (and external hosts, and the resolver's pod of a lookup-then-connect cell), with the
// deciding rule.
func (n *LocalNode) Flows(cells []Cell) []string {
	var notes []string
	n.mu.Lock()
	for _, c := range cells {
		if l, ok := n.notes[c.String()]; ok {
			notes = append(notes, c.String()+": "+strings.Join(l, "; "))
		}
	}
	n.mu.Unlock()
	pairs := map[[2]netip.Addr]bool{}
	for _, c := range cells {
		for _, c := range []*Cell{&c, c.Resolve} {
			if c == nil {
				continue
			}
			from := n.node.Pod(c.From)
			if to, ok := n.target(c.To); from != nil && ok {
				pairs[[2]netip.Addr{from.IPv4, to}] = true
			}
		}
	}
	return append(notes, n.node.Flows(pairs, 50)...)
}

// target is the IPv4 address of a cell's destination: a pod, or an external host.
func (n *LocalNode) target(key string) (netip.Addr, bool) {
	if p := n.node.Pod(key); p != nil {
		return p.IPv4, true
	}
	if name, ok := strings.CutPrefix(key, ExternalKey("")); ok {
		if p := n.node.External(ExternalKey(name)); p != nil {
			return p.IPv4, true
		}
	}
	return netip.Addr{}, false
}

// Seen reports whether a packet from the cell's source pod to its destination pod (IPv4, as the
// probes go) reached the datapath since the step began, at either pod's veth, from its flow
// events; for a service cell, to any of its backends, as translation may pick any. Unknown when
// the node kept no complete record of them.
func (n *LocalNode) Seen(c Cell) (bool, bool) {
	from := n.node.Pod(c.From)
	targets := c.Backends
	if len(targets) == 0 {
		targets = []string{c.To}
	}
	if from == nil {
		return false, false
	}
	for _, t := range targets {
		to, ok := n.target(t)
		if !ok {
			return false, false
		}
		if seen, known := n.node.SawPair(from.IPv4, to); seen || !known {
			return seen, known
		}
	}
	return false, true
}

// Audited reports whether the datapath reported the cell's connection (IPv4, as the probes go;
// to any backend of a service) as AUDIT since the step began.
func (n *LocalNode) Audited(c Cell) (bool, bool) {
	from := n.node.Pod(c.From)
	if from == nil {
		return false, false
	}
	targets := c.Backends
	if len(targets) == 0 {
		targets = []string{c.To}
	}
	for _, t := range targets {
		to, ok := n.target(t)
		if !ok {
			return false, false
		}
		// Port is the backend's target port for a service cell.
		if audited, known := n.node.SawAudit(from.IPv4, to, c.Port.Protocol, c.Port.Port); audited || !known {
			return audited, known
		}
	}
	return false, true
}

// Stop stops the workloads and tears the node down unless it is retained.
func (n *LocalNode) Stop() error {
	for _, s := range n.servers {
		s.Close()
	}
	if n.prober != nil {
		n.prober.sctp.Close()
	}
	if n.node == nil {
		return nil
	}
	return n.node.Stop()
}

// Verify checks that the datapath maps hold exactly the last enforced state.
func (n *LocalNode) Verify() error { return n.node.Verify() }
