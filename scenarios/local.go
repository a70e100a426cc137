package scenarios

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/localnode"
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
	Pods map[string]*localnode.Pod
}

// LocalNode is a Backend made of network namespaces on this host, enforced by netpact's
// datapath.
type LocalNode struct {
	opts    LocalOptions
	id      int
	dp      *datapath.Datapath
	enf     *enforcer.Enforcer
	pods    map[string]*localnode.Pod
	servers []*servers
	prober  *prober
	sc      *Scenario
	owned   []*localnode.Pod

	releaseID func()

	podServers map[string]*servers

	mu    sync.Mutex
	flows []datapath.Flow
	fr    *datapath.FlowReader
}

// NewLocal returns a local node backend; it needs root.
func NewLocal(opts LocalOptions) *LocalNode {
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = 400 * time.Millisecond
	}
	return &LocalNode{opts: opts}
}

func (n *LocalNode) pinPath() string {
	return filepath.Join(datapath.DefaultPinPath+"-run", fmt.Sprintf("%d-%d", os.Getpid(), n.id))
}

// Start creates the pods, starts their workloads and opens the datapath.
func (n *LocalNode) Start(sc *Scenario) (*policy.Cluster, error) {
	id, release, err := localnode.ClaimRunID()
	if err != nil {
		return nil, err
	}
	n.id, n.releaseID = id, release
	n.sc = sc
	n.pods = map[string]*localnode.Pod{}
	n.podServers = map[string]*servers{}
	if err := localnode.PrepareHost(); err != nil {
		return nil, err
	}
	dp, err := datapath.Open(datapath.Options{PinPath: n.pinPath()})
	if err != nil {
		return nil, err
	}
	n.dp = dp
	n.enf = enforcer.New("local", dp, n.opts.Policy)
	n.prober = &prober{timeout: n.opts.ProbeTimeout, sctp: newSCTPListeners()}
	c := &policy.Cluster{Nodes: []policy.Node{{Name: "local"}}}
	for _, ns := range sc.Namespaces {
		c.Namespaces = append(c.Namespaces, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	for i, p := range sc.Pods {
		ep, err := n.addPod(p, i)
		if err != nil {
			return nil, err
		}
		c.Endpoints = append(c.Endpoints, ep)
	}
	fr, err := dp.Flows()
	if err != nil {
		return nil, err
	}
	n.fr = fr
	go n.collectFlows()
	return c, nil
}

// addPod makes (or adopts) the i-th pod, starts its workloads and returns it as an endpoint.
func (n *LocalNode) addPod(p Pod, i int) (policy.Endpoint, error) {
	lp, ok := n.opts.Pods[p.Key()]
	if !ok {
		var err error
		lp, err = MakePod(p.Key(), n.id, i)
		if err != nil {
			return policy.Endpoint{}, err
		}
		n.owned = append(n.owned, lp)
	}
	n.pods[p.Key()] = lp
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

// AddPod adds a pod to the running node (the i-th of the run; i picks its addresses) and returns
// it as an endpoint for the cluster. Enforce must follow to program it.
func (n *LocalNode) AddPod(p Pod, i int) (policy.Endpoint, error) {
	return n.addPod(p, i)
}

// RemovePod deletes a pod the node made (pods handed in through LocalOptions.Pods stay).
func (n *LocalNode) RemovePod(key string) error {
	lp, ok := n.pods[key]
	if !ok {
		return fmt.Errorf("remove pod %s: no such pod", key)
	}
	if srv := n.podServers[key]; srv != nil {
		srv.Close()
		delete(n.podServers, key)
	}
	delete(n.pods, key)
	for i, o := range n.owned {
		if o == lp {
			n.owned = append(n.owned[:i], n.owned[i+1:]...)
			return lp.Delete()
		}
	}
	return nil
}

func (n *LocalNode) collectFlows() {
	for {
		f, err := n.fr.Read(time.Time{})
		if err != nil {
			if errors.Is(err, datapath.ErrClosed) {
				return
			}
			continue
		}
		n.mu.Lock()
		if len(n.flows) < 100000 {
			n.flows = append(n.flows, f)
		}
		n.mu.Unlock()
	}
}

// MakePod creates the i-th pod of run id: namespace np<id>-<i>, host veth np<id>h<i>, addresses
// 10.250.<id>.<i+1> and fd00:250:<id>::<i+1>.
func MakePod(key string, id, i int) (*localnode.Pod, error) {
	v4 := netip.AddrFrom4([4]byte{10, 250, byte(id), byte(i + 1)})
	v6 := netip.MustParseAddr(fmt.Sprintf("fd00:250:%x::%x", id, i+1))
	return localnode.CreatePod(key, fmt.Sprintf("np%d-%d", id, i), fmt.Sprintf("np%dh%d", id, i), v4, v6)
}

// Enforce programs every pod of the node.
func (n *LocalNode) Enforce(c *policy.Cluster, policies []*policy.Policy) error {
	var local []enforcer.LocalPod
	for _, ep := range c.Endpoints {
		lp := n.pods[ep.Key().String()]
		if lp == nil {
			return fmt.Errorf("pod %s is in the cluster but not on the local node", ep.Key())
		}
		local = append(local, enforcer.LocalPod{Key: ep.Key(), Ifindex: lp.Ifindex, HostIfname: lp.HostIfname})
	}
	return n.enf.Sync(c, policies, local)
}

// BeginStep forgets the flows of earlier steps.
func (n *LocalNode) BeginStep() {
	n.mu.Lock()
	n.flows = nil
	n.mu.Unlock()
}

// Probe runs one probe from the source pod.
func (n *LocalNode) Probe(c Cell) Outcome {
	from, to := n.pods[c.From], n.pods[c.To]
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
	n.mu.Lock()
	defer n.mu.Unlock()
	want := map[[2]netip.Addr]bool{}
	for _, c := range cells {
		from, to := n.pods[c.From], n.pods[c.To]
		if from != nil && to != nil {
			want[[2]netip.Addr{from.IPv4, to.IPv4}] = true
		}
	}
	// Flows a rule decided first, then the rest.
	flows := make([]datapath.Flow, 0, len(n.flows))
	for _, f := range n.flows {
		if want[[2]netip.Addr{f.Src, f.Dst}] && (f.Rule != 0 || f.Reason.Dropped()) {
			flows = append(flows, f)
		}
	}
	for _, f := range n.flows {
		if want[[2]netip.Addr{f.Src, f.Dst}] && !(f.Rule != 0 || f.Reason.Dropped()) {
			flows = append(flows, f)
		}
	}
	var out []string
	for _, f := range flows {
		rule := "no rule"
		if st := n.enf.State(); st != nil && f.Rule != 0 {
			if ri := st.Rule(f.Rule); ri != nil {
				rule = ri.String()
			}
		}
		out = append(out, fmt.Sprintf("%s %s %s:%d -> %s:%d %s (%s)", f.Direction, f.Proto, n.enf.Resolve(f.Src), f.SrcPort,
			n.enf.Resolve(f.Dst), f.DstPort, f.Reason, rule))
		if len(out) >= 50 {
			break
		}
	}
	return out
}

// Stop tears the node down unless it is retained.
func (n *LocalNode) Stop() error {
	var errs []error
	if n.fr != nil {
		n.fr.Close()
	}
	for _, s := range n.servers {
		s.Close()
	}
	if n.prober != nil {
		n.prober.sctp.Close()
	}
	if n.opts.Retain {
		return nil
	}
	if n.releaseID != nil {
		defer n.releaseID()
	}
	for _, p := range n.owned {
		errs = append(errs, p.Delete())
	}
	if n.dp != nil {
		errs = append(errs, n.dp.Teardown())
		// The runs' common parent goes with the last run (another run's pins keep it).
		_ = os.Remove(filepath.Dir(n.pinPath()))
	}
	return errors.Join(errs...)
}

// Verify checks that the datapath maps hold exactly the last enforced state.
func (n *LocalNode) Verify() error { return n.enf.Verify() }
