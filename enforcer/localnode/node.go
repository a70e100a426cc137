// Package localnode is the enforcer on a node of network namespaces on this host: pods are named
// network namespaces on veths (podnet), netpact's datapath enforces on their host veths, and run
// ids keep parallel nodes on one host apart.
package localnode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/netpact/netpact/enforcer/observe"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/policy"
	"golang.org/x/sys/unix"
)

// Options configure a local node.
type Options struct {
	// Retain keeps namespaces, veths and pins after Stop, for debugging.
	Retain bool
	// Policy are the engine options the enforcer uses.
	Policy policy.Options
	// Pods, when set, are pods made beforehand (keyed namespace/name, for example by another
	// process of a parallel test suite); AddPod adopts them instead of creating its own, and Stop
	// leaves them in place.
	Pods map[string]*podnet.Pod
	// HTTP are the L7 HTTP proxy's options (its Limits: a zero field takes its default); the
	// node fills in its own decisions, mark and flow events.
	HTTP proxy.Options
	// DriftInterval is how often the datapath maps are compared with what the enforcer wrote
	// and repaired (enforcer.RunDriftRepair): 10 s when 0, never when negative.
	DriftInterval time.Duration
	// Log gets the node's log lines (one per repaired entry); standard error, prefixed
	// "netpact: ", when nil.
	Log func(string)
	// Ring, when set, keeps the node's flows as Hubble reports them (the caller serves it to
	// `netpact observe`); the node keeps a ring of its own otherwise.
	Ring *observe.Ring
}

// Node is the enforcer on a node of network namespaces: pods on veths of this host, netpact's
// datapath attached to them, the enforcer programming them, and the datapath's flow events. It is
// the local counterpart of enforcer/kubenode: what the reconciler's node target and the scenario
// harness drive.
type Node struct {
	opts      Options
	id        int
	releaseID func()
	dp        *datapath.Datapath
	enf       *enforcer.Enforcer
	pods      map[string]*podnet.Pod
	owned     []*podnet.Pod
	// externals are the hosts outside the cluster the pods reach (external.go), by name.
	externals map[string]*podnet.Pod
	// ready are the pods whose network was seen carrying traffic (awaitReady).
	ready map[*podnet.Pod]bool

	mu    sync.Mutex
	flows []datapath.Flow
	// drops are the watches WatchDrops registered and no drop has ended yet.
	drops map[*dropWatch]struct{}

	// rt is the node's runtime (enforcer.StartNode); dp, enf and fr are its parts.
	rt *enforcer.Node
	// stopDrift ends the drift repair loop and waits for it.
	stopDrift func()
}

// maxFlows bounds the flow events a node keeps between two ResetFlows.
const maxFlows = 100000

// NewNode returns a local node; Start brings it up (it needs root).
func NewNode(opts Options) *Node {
	return &Node{opts: opts, pods: map[string]*podnet.Pod{}, externals: map[string]*podnet.Pod{}, ready: map[*podnet.Pod]bool{}}
}

// runPinRoot is the bpffs directory under which each local node pins its datapath.
const runPinRoot = datapath.DefaultPinPath + "-run"

func (n *Node) pinPath() string {
	return filepath.Join(runPinRoot, fmt.Sprintf("%d-%d", os.Getpid(), n.id))
}

// Start claims a run id, turns on forwarding, and starts the node's runtime (enforcer.StartNode):
// the datapath pinned under the run's directory, its flow events, and the L7 proxy on a port and
// routing table of the run's own (nodes of parallel runs share the host's network namespace).
// After an error, Stop releases what Start made.
func (n *Node) Start() error {
	id, release, err := ClaimRunID()
	if err != nil {
		return err
	}
	n.id, n.releaseID = id, release
	if err := podnet.PrepareHost(); err != nil {
		return err
	}
	sweepDeadRuns()
	// The node's processes are this process and its children: the socket programs that
	// translate Service addresses attach to its cgroup (the node's pods are namespaces of it).
	cg, err := datapath.OwnCgroup()
	if err != nil {
		return err
	}
	http := n.opts.HTTP
	if http.OnRequest == nil {
		http.OnRequest = n.publishL7
	}
	rt, err := enforcer.StartNode(context.Background(), enforcer.NodeOptions{Name: "local",
		Datapath: datapath.Options{PinPath: n.pinPath(), Cgroup: cg}, Policy: n.opts.Policy,
		HTTP: http, Routes: proxyRoutes(n.id), Ring: n.opts.Ring})
	if err != nil {
		return err
	}
	n.rt, n.dp, n.enf = rt, rt.Datapath, rt.Enforcer
	n.startDriftRepair()
	rt.Flows.Subscribe(n.collectFlow)
	return nil
}

// proxyRoutes is the routing of run id's proxy: a table and rule of its own.
func proxyRoutes(id int) proxy.Routes { return proxy.Routes{Table: 2100 + id, Priority: 9} }

// StopProxy stops the node's L7 proxy (tests of failing closed): flows an L7 rule governs are
// dropped from then on.
func (n *Node) StopProxy() error {
	if n.rt == nil {
		return nil
	}
	return n.rt.StopProxy()
}

// publishL7 puts a request the proxy judged on the node's flow stream.
func (n *Node) publishL7(r proxy.Request) {
	n.dp.PublishL7(enforcer.L7Flow(r, n.enf.State()))
}

// sweepDeadRuns removes the pin directories of local nodes whose process is gone (killed before
// it could stop them): <pid>-<id> under the runs' pin root.
func sweepDeadRuns() {
	entries, err := os.ReadDir(runPinRoot)
	if err != nil {
		return
	}
	for _, e := range entries {
		var pid, id int
		if _, err := fmt.Sscanf(e.Name(), "%d-%d", &pid, &id); err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			os.RemoveAll(filepath.Join(runPinRoot, e.Name()))
			if idHeld(id, pid) {
				// Another process has claimed the dead run's id since, and routes through the
				// same table: it removed the dead run's routing when it claimed the id
				// (removeStalePods), and what is there now is its own.
				continue
			}
			_ = proxyRoutes(id).Remove() // its proxy's routing too
			_ = removeExternalRules(id)
		}
	}
}

// MakePod creates the i-th pod of run id: namespace np<id>-<i>, host veth np<id>h<i>, addresses
// 10.250.<id>.<i+1> and fd00:250:<id>::<i+1>.
func MakePod(key string, id, i int) (*podnet.Pod, error) {
	v4 := netip.AddrFrom4([4]byte{10, 250, byte(id), byte(i + 1)})
	v6 := netip.MustParseAddr(fmt.Sprintf("fd00:250:%x::%x", id, i+1))
	return podnet.CreatePod(key, fmt.Sprintf("np%d-%d", id, i), fmt.Sprintf("np%dh%d", id, i), v4, v6)
}

// AddPod adopts the pod key from Options.Pods or makes it as the i-th pod of the run (i picks
// its names and addresses). The pod is closed (every packet from or to it dropped) until Enforce
// programs it, as a new pod is in Cilium: a workload started in it before then reaches nothing.
func (n *Node) AddPod(key string, i int) (*podnet.Pod, error) {
	if p, ok := n.pods[key]; ok {
		return p, nil
	}
	p, ok := n.opts.Pods[key]
	if !ok {
		var err error
		if p, err = MakePod(key, n.id, i); err != nil {
			return nil, err
		}
		n.owned = append(n.owned, p)
	}
	n.pods[key] = p
	if err := n.dp.CloseEndpoint(datapath.Endpoint{Ifindex: p.Ifindex, Ifname: p.HostIfname}); err != nil {
		return nil, fmt.Errorf("add pod %s: %w", key, err)
	}
	if len(n.externals) > 0 {
		if err := n.routeToExternals(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// AddCluster makes a pod for every endpoint of c, in order, and returns c with each endpoint on
// node "local" at its pod's addresses (the addresses c gives are not used).
func (n *Node) AddCluster(c *policy.Cluster) (*policy.Cluster, error) {
	out := *c
	out.Nodes = []policy.Node{{Name: "local"}}
	out.Endpoints = make([]policy.Endpoint, len(c.Endpoints))
	for i, ep := range c.Endpoints {
		p, err := n.AddPod(ep.Key().String(), i)
		if err != nil {
			return nil, err
		}
		ep.Node, ep.IPs = "local", []netip.Addr{p.IPv4, p.IPv6}
		out.Endpoints[i] = ep
	}
	return &out, nil
}

// VirtualAddrs are the i-th Service (ClusterIP) addresses of the node: 10.251.<id>.<i+1> and
// fd00:251:<id>::<i+1>, apart from every other run's on this host.
func (n *Node) VirtualAddrs(i int) (netip.Addr, netip.Addr) {
	return netip.AddrFrom4([4]byte{10, 251, byte(n.id), byte(i + 1)}), netip.MustParseAddr(fmt.Sprintf("fd00:251:%x::%x", n.id, i+1))
}

// SetServices makes the node translate these Service frontends (see enforcer.SetServices).
func (n *Node) SetServices(svcs []enforcer.Service) error { return n.enf.SetServices(svcs) }

// Pod returns the pod key, or nil.
func (n *Node) Pod(key string) *podnet.Pod { return n.pods[key] }

// RemovePod deletes a pod the node made (adopted pods stay) and forgets it.
func (n *Node) RemovePod(key string) error {
	p, ok := n.pods[key]
	if !ok {
		return fmt.Errorf("remove pod %s: no such pod", key)
	}
	delete(n.pods, key)
	delete(n.ready, p)
	if len(n.externals) > 0 {
		if err := n.unrouteFromExternals(p); err != nil {
			return err
		}
	}
	for i, o := range n.owned {
		if o == p {
			n.owned = append(n.owned[:i], n.owned[i+1:]...)
			return p.Delete()
		}
	}
	return nil
}

// Enforce programs every pod of the node with the policies' state for cluster c; every endpoint
// of c must be a pod of the node. A pod programmed for the first time is then waited on until
// its network carries traffic (awaitReady).
func (n *Node) Enforce(c *policy.Cluster, policies []*policy.Policy) error {
	local := make([]enforcer.LocalPod, 0, len(c.Endpoints))
	for _, ep := range c.Endpoints {
		p := n.pods[ep.Key().String()]
		if p == nil {
			return fmt.Errorf("enforce: pod %s is in the cluster but not on the local node", ep.Key())
		}
		local = append(local, enforcer.LocalPod{Key: ep.Key(), Ifindex: p.Ifindex, HostIfname: p.HostIfname, NetnsCookie: p.NetnsCookie})
	}
	if err := n.enf.Sync(c, policies, local); err != nil {
		return err
	}
	return n.awaitReady(c)
}

// awaitReady waits until the network of every pod programmed for the first time carries
// traffic (podnet.Pod.WaitReady: links up, addresses usable, routes, neighbours resolved both
// ways), so that nothing probes or serves a pod whose first packets the kernel would still drop.
// Its neighbours can only be resolved once its endpoint is open, hence after the first Enforce.
// The error names the pod and the condition that did not hold within the bound.
func (n *Node) awaitReady(c *policy.Cluster) error {
	var wait []*podnet.Pod
	var addrs [][]netip.Addr
	for _, ep := range c.Endpoints {
		if p := n.pods[ep.Key().String()]; p != nil && !n.ready[p] {
			// The addresses the cluster gives the pod: the only ones its endpoint may use.
			var as []netip.Addr
			for _, a := range ep.IPs {
				if a = a.Unmap(); a == p.IPv4 || a == p.IPv6 {
					as = append(as, a)
				}
			}
			wait, addrs = append(wait, p), append(addrs, as)
		}
	}
	errs := make([]error, len(wait))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, p := range wait {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = p.WaitReady(addrs[i], podnet.ReadyTimeout)
		})
	}
	wg.Wait()
	for i, p := range wait {
		if errs[i] == nil {
			n.ready[p] = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("enforce: %w", err)
	}
	return nil
}

// Verify checks that the datapath maps hold exactly the last enforced state.
func (n *Node) Verify() error { return n.enf.Verify() }

// collectFlow keeps a flow event for the probes' checks (SawPair, SawAudit, Flows) and ends
// the drop watches the packet matches.
func (n *Node) collectFlow(f datapath.Flow) {
	n.mu.Lock()
	if len(n.flows) < maxFlows {
		n.flows = append(n.flows, f)
	}
	if f.L7 == nil && f.Reason.Dropped() {
		for w := range n.drops {
			if f.Time >= w.since && w.match(f) {
				delete(n.drops, w)
				w.ch <- f
			}
		}
	}
	n.mu.Unlock()
}

// dropWatch is one WatchDrops call: the packets it waits for and the channel it closes.
type dropWatch struct {
	since time.Duration // CLOCK_MONOTONIC, as Flow.Time: packets from the call on
	match func(datapath.Flow) bool
	ch    chan datapath.Flow // buffered: the one drop that ends the watch
}

// WatchDrops returns a channel that gets the first dropped packet the datapath reports that
// match accepts (match runs on the node's flow goroutine and must not block), from the call on;
// stop ends the watch. It is the probes' witness that a connection is blocked by the datapath,
// not merely slow: a probe waits for an answer or this, not for a time.
func (n *Node) WatchDrops(match func(datapath.Flow) bool) (dropped <-chan datapath.Flow, stop func()) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// No clock to tell later packets from earlier ones: a watch that never fires, so the
		// probe waits for its answer or its bound, as it would without a witness.
		return make(chan datapath.Flow), func() {}
	}
	w := &dropWatch{since: time.Duration(ts.Nano()), match: match, ch: make(chan datapath.Flow, 1)}
	n.mu.Lock()
	if n.drops == nil {
		n.drops = map[*dropWatch]struct{}{}
	}
	n.drops[w] = struct{}{}
	n.mu.Unlock()
	return w.ch, func() {
		n.mu.Lock()
		delete(n.drops, w)
		n.mu.Unlock()
	}
}

// ResetFlows forgets the flow events read so far.
func (n *Node) ResetFlows() {
	n.mu.Lock()
	n.flows = nil
	n.mu.Unlock()
}

// SawPair reports whether a flow event of a packet from src to dst was read since the last
// ResetFlows; known is false when events may have been left out (the node's record is full).
func (n *Node) SawPair(src, dst netip.Addr) (seen, known bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, f := range n.flows {
		if f.Src == src && f.Dst == dst {
			return true, true
		}
	}
	return false, len(n.flows) < maxFlows
}

// flowSync bounds how long SawAudit waits for the flow events produced before it to be read.
const flowSync = 5 * time.Second

// SyncFlows waits until every flow event the datapath produced before the call was handed on
// (to the ring, and to the probes' record); false when that did not happen within flowSync.
func (n *Node) SyncFlows() bool {
	if n.rt == nil {
		return false
	}
	return n.rt.Flows.Sync(flowSync)
}

// SawAudit reports whether the datapath reported a new flow from src to dst with the protocol
// and destination port as AUDIT since the last ResetFlows (a policy in audit mode would have
// dropped it). It first waits until every event produced before the call was read; known is
// false when that did not happen, or the node's record is full.
func (n *Node) SawAudit(src, dst netip.Addr, proto policy.Proto, port uint16) (audited, known bool) {
	if !n.SyncFlows() {
		return false, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, f := range n.flows {
		if f.Src == src && f.Dst == dst && f.Proto == proto && f.DstPort == port && f.Reason.Audited() {
			return true, true
		}
	}
	return false, len(n.flows) < maxFlows
}

// Flows renders up to limit flow events between the given (source, destination) address pairs
// since the last ResetFlows, with pods named and the deciding rule: events a rule decided, or
// drops, first.
func (n *Node) Flows(pairs map[[2]netip.Addr]bool, limit int) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	decided := func(f datapath.Flow) bool { return f.Rule != 0 || f.Dropped() }
	flows := make([]datapath.Flow, 0, len(n.flows))
	for _, first := range []bool{true, false} {
		for _, f := range n.flows {
			if pairs[[2]netip.Addr{f.Src, f.Dst}] && decided(f) == first {
				flows = append(flows, f)
			}
		}
	}
	var out []string
	for _, f := range flows {
		if len(out) >= limit {
			break
		}
		out = append(out, n.describe(f))
	}
	return out
}

// Describe renders a flow event as Flows does: pods named, and the deciding rule.
func (n *Node) Describe(f datapath.Flow) string { return n.describe(f) }

func (n *Node) describe(f datapath.Flow) string {
	st := n.enf.State()
	// A peer is named pod:port, or, when it is no pod (an external host, the host),
	// address:port and the identity the datapath gave it.
	peer := func(a netip.Addr, port uint16, id policy.ID) string {
		name := n.enf.Resolve(a)
		if st == nil || name != a.String() {
			return fmt.Sprintf("%s:%d", name, port)
		}
		addr := netip.AddrPortFrom(a, port).String()
		if ident, ok := st.IdentityOf(id); ok {
			return fmt.Sprintf("%s [identity %s]", addr, ident)
		}
		return fmt.Sprintf("%s [identity %d]", addr, id)
	}
	rule := "no rule"
	if st != nil && f.Rule != 0 {
		if ri := st.Rule(f.Rule); ri != nil {
			rule = ri.String()
		}
	}
	if f.L7 != nil {
		if f.L7.Denied && f.L7.Why != "" {
			rule = f.L7.Why
		} else if f.L7.HTTPRule >= 0 && f.L7.DNS != nil {
			rule += fmt.Sprintf(", dns rule %d", f.L7.HTTPRule)
		} else if f.L7.HTTPRule >= 0 && f.L7.Kafka != nil {
			rule += fmt.Sprintf(", kafka rule %d", f.L7.HTTPRule)
		} else if f.L7.HTTPRule >= 0 {
			rule += fmt.Sprintf(", http rule %d", f.L7.HTTPRule)
		}
		return fmt.Sprintf("%s %s -> %s %s (%s)", f.Direction, peer(f.Src, f.SrcPort, f.SrcIdentity),
			peer(f.Dst, f.DstPort, f.DstIdentity), f.L7String(), rule)
	}
	via := ""
	if f.Service != 0 {
		via = " via service " + n.dp.ServiceName(f.Service)
	}
	return fmt.Sprintf("%s %s %s -> %s%s %s (%s)", f.Direction, f.Proto, peer(f.Src, f.SrcPort, f.SrcIdentity),
		peer(f.Dst, f.DstPort, f.DstIdentity), via, f.Reason, rule)
}

// Stop stops reading flows and, unless retained, deletes the pods the node made and its external
// hosts, tears the datapath down (programs, links and pins) and releases the run id.
func (n *Node) Stop() error {
	if n.stopDrift != nil {
		n.stopDrift()
		n.stopDrift = nil
	}
	var errs []error
	if n.rt != nil {
		if n.opts.Retain {
			return n.rt.Close()
		}
		errs = append(errs, n.rt.Teardown())
		// The runs' common parent goes with the last run (another run's pins keep it).
		_ = os.Remove(runPinRoot)
		n.rt, n.dp = nil, nil
	}
	for _, p := range n.owned {
		errs = append(errs, p.Delete())
	}
	n.owned = nil
	errs = append(errs, n.stopExternals())
	if n.releaseID != nil {
		n.releaseID()
		n.releaseID = nil
	}
	return errors.Join(errs...)
}

// startDriftRepair runs the enforcer's drift repair every Options.DriftInterval until Stop.
func (n *Node) startDriftRepair() {
	every := n.opts.DriftInterval
	if every == 0 {
		every = 10 * time.Second
	}
	log := n.opts.Log
	if log == nil {
		log = func(line string) { fmt.Fprintln(os.Stderr, "netpact: "+line) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.enf.RunDriftRepair(ctx, every, func(r enforcer.DriftRepair) { log("drift repaired: " + r.String()) },
			func(err error) { log("drift repair: " + err.Error()) })
	}()
	n.stopDrift = func() { cancel(); <-done }
}
