package scenarios

import (
	"net/netip"
	"time"

	"github.com/netpact/netpact/enforcer/localnode"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/policy"
)

// LocalOptions configure a local node.
type LocalOptions struct {
	// ProbeTimeout bounds each probe; 400 ms when zero (everything is on one host).
	ProbeTimeout time.Duration
	// Retain keeps namespaces, veths and pins after the run, for debugging.
	Retain bool
	// Policy are the engine options the enforcer uses.
	Policy policy.Options
	// Pods, when set, are pods made beforehand (keyed namespace/name, for example by another
	// process of a parallel test suite); the node uses them instead of creating its own and
	// leaves them in place when it stops.
	Pods map[string]*podnet.Pod
}

// LocalNode is a Backend made of network namespaces on this host: an enforcer/localnode node
// (pods, datapath, enforcer) with the scenario's workloads and probes on top.
type LocalNode struct {
	opts       LocalOptions
	node       *localnode.Node
	servers    []*servers
	podServers map[string]*servers
	prober     *prober
}

// NewLocal returns a local node backend; it needs root.
func NewLocal(opts LocalOptions) *LocalNode {
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = 400 * time.Millisecond
	}
	return &LocalNode{opts: opts}
}

// Start brings up the node, creates the pods and starts their workloads.
func (n *LocalNode) Start(sc *Scenario) (*policy.Cluster, error) {
	n.node = localnode.NewNode(localnode.Options{Retain: n.opts.Retain, Policy: n.opts.Policy, Pods: n.opts.Pods})
	n.podServers = map[string]*servers{}
	if err := n.node.Start(); err != nil {
		return nil, err
	}
	n.prober = &prober{timeout: n.opts.ProbeTimeout, sctp: newSCTPListeners()}
	c := &policy.Cluster{Nodes: []policy.Node{{Name: "local"}}}
	for _, ns := range sc.Namespaces {
		c.Namespaces = append(c.Namespaces, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	for i, p := range sc.Pods {
		ep, err := n.AddPod(p, i)
		if err != nil {
			return nil, err
		}
		c.Endpoints = append(c.Endpoints, ep)
	}
	return c, nil
}

// AddPod adds a pod to the running node (the i-th of the run; i picks its addresses), starts its
// workloads and returns it as an endpoint for the cluster. Enforce must follow to program it.
func (n *LocalNode) AddPod(p Pod, i int) (policy.Endpoint, error) {
	lp, err := n.node.AddPod(p.Key(), i)
	if err != nil {
		return policy.Endpoint{}, err
	}
	srv, err := startServers(lp, p.Workload, p.Ports)
	if err != nil {
		return policy.Endpoint{}, err
	}
	n.servers = append(n.servers, srv)
	n.podServers[p.Key()] = srv
	if err := n.prober.sctp.listen(lp); err != nil {
		return policy.Endpoint{}, err
	}
	ep := policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, ServiceAccount: p.ServiceAccount,
		Node: "local", IPs: []netip.Addr{lp.IPv4, lp.IPv6}}
	for _, port := range p.Ports {
		ep.Ports = append(ep.Ports, policy.NamedPort{Name: port.Name, Port: port.Port, Protocol: port.Protocol})
	}
	return ep, nil
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

// Enforce programs every pod of the node.
func (n *LocalNode) Enforce(c *policy.Cluster, policies []*policy.Policy) error {
	return n.node.Enforce(c, policies)
}

// BeginStep forgets the flows of earlier steps.
func (n *LocalNode) BeginStep() { n.node.ResetFlows() }

// Probe runs one probe from the source pod.
func (n *LocalNode) Probe(c Cell) Outcome {
	from, to := n.node.Pod(c.From), n.node.Pod(c.To)
	if from == nil || to == nil {
		return Timeout
	}
	switch {
	case c.HTTP:
		return n.prober.http(from, to.IPv4, c.Port.Port, c.method(), c.path())
	case c.Port.Protocol == policy.ProtoTCP:
		return n.prober.tcp(from, to.IPv4, c.Port.Port)
	case c.Port.Protocol == policy.ProtoUDP:
		return n.prober.udp(from, to.IPv4, c.Port.Port)
	case c.Port.Protocol == policy.ProtoSCTP:
		return n.prober.sctpInit(from, from.IPv4, to.IPv4, c.Port.Port)
	}
	return Timeout
}

// Flows returns the datapath's flow events between the cells' pods, with the deciding rule.
func (n *LocalNode) Flows(cells []Cell) []string {
	pairs := map[[2]netip.Addr]bool{}
	for _, c := range cells {
		from, to := n.node.Pod(c.From), n.node.Pod(c.To)
		if from != nil && to != nil {
			pairs[[2]netip.Addr{from.IPv4, to.IPv4}] = true
		}
	}
	return n.node.Flows(pairs, 50)
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
