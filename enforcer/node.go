package enforcer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/dnsproxy"
	"github.com/netpact/netpact/enforcer/kafkaproxy"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/policy"
)

// NodeOptions configure a node's runtime: what StartNode brings up, on a Kubernetes node
// (enforcer/kubenode, `netpact enforcer`) as on a node of network namespaces (enforcer/localnode).
type NodeOptions struct {
	// Name is the node's name, as policy knows it.
	Name string
	// Datapath are the datapath's options (pins, the cgroup for Service translation).
	Datapath datapath.Options
	// Policy are the engine's options.
	Policy policy.Options
	// HTTP configures the L7 HTTP proxy. Its Decide, Mark, KeepSource and OnRequest are the
	// node's own when left nil or zero: the enforcer's decisions, the datapath's mark, and the
	// judged requests published on the datapath's flow stream.
	HTTP proxy.Options
	// HTTPPort is the proxy's port on 127.0.0.1 and ::1; 0 picks a free one.
	HTTPPort uint16
	// PortWait is how long the proxy waits for HTTPPort while another process (the enforcer this
	// one replaces) still holds it.
	PortWait time.Duration
	// Routes deliver to the node's own sockets what the datapath marks for the proxy.
	Routes proxy.Routes
	// DNS configures the DNS proxy. Its Decide, Learn, OnQuery, Mark and KeepSource are the
	// node's own when left nil or zero: the enforcer's decisions, what it learns for toFQDNs, the
	// judged queries on the flow stream, the datapath's mark.
	DNS dnsproxy.Options
	// DNSPort is the DNS proxy's port on 127.0.0.1 and ::1 (UDP and TCP); 0 picks a free one.
	DNSPort uint16
	// Kafka configures the Kafka proxy. Its Decide, Mark, KeepSource and OnRequest are the
	// node's own when left nil or zero, as the HTTP proxy's.
	Kafka kafkaproxy.Options
	// KafkaPort is the Kafka proxy's port on 127.0.0.1 and ::1; 0 picks a free one.
	KafkaPort uint16
	// FQDN configures what the node learns from DNS answers for toFQDNs rules; LearnedGC is how
	// often it expires and saves them (1 s when 0).
	FQDN      FQDNOptions
	LearnedGC time.Duration
	// Uplink is the interface traffic from other nodes arrives on, where ingress L7 rules hand it
	// to the proxy: "auto" is the IPv4 default route's, "" none.
	Uplink string
	// FlowRing is how many flows the node keeps for `netpact observe` (observe.DefaultRingCapacity
	// when 0; rounded up to 2^n-1); Ring, when set, is a ring of the caller's to keep them in
	// instead (one a process serves for all the nodes it runs, one after the other).
	FlowRing int
	Ring     *observe.Ring
	// Log gets a line per step; discarded when nil.
	Log *slog.Logger
}

// Node is a node's runtime, as StartNode brought it up.
type Node struct {
	Datapath *datapath.Datapath
	Enforcer *Enforcer
	// Flows hands the datapath's flow events to every consumer subscribed.
	Flows *FlowHub
	// Ring keeps the node's recent flows as Hubble reports them, for `netpact observe`.
	Ring *observe.Ring
	name string
	// Proxy is the L7 HTTP proxy; nil once StopProxy stopped it.
	Proxy *proxy.Proxy
	// DNSProxy is the DNS proxy; nil once StopProxy stopped it.
	DNSProxy *dnsproxy.Proxy
	// KafkaProxy is the Kafka proxy; nil once StopProxy stopped it.
	KafkaProxy *kafkaproxy.Proxy
	routes     *proxy.Routes
	uplink     string
	log        *slog.Logger
	// stopGC ends the learned names' expiry loop and waits for it; stopLost the lost events'.
	stopGC   func()
	stopLost func()
	// lostHooks are told of every lost count countLost enters in the ring.
	lostMu    sync.Mutex
	lostHooks []func(observe.LostEventSource, uint64)
}

// startStep is one named step of a node's start. A step that fails leaves the node to Close.
type startStep struct {
	name string
	run  func(n *Node, ctx context.Context, o *NodeOptions) error
}

// startSteps are the node's start, in order. The DNS and Kafka proxies come as one step each.
var startSteps = []startStep{
	{"open datapath", (*Node).openDatapath},
	{"restore learned DNS names", (*Node).restoreLearned},
	{"read flow events", (*Node).readFlows},
	{"observe flows", (*Node).observeFlows},
	{"route redirected flows to the proxy", (*Node).routeToProxy},
	{"start the HTTP proxy", (*Node).startHTTPProxy},
	{"start the DNS proxy", (*Node).startDNSProxy},
	{"start the Kafka proxy", (*Node).startKafkaProxy},
	{"attach the uplink", (*Node).attachUplink},
}

// StartNode brings a node's runtime up, step by step. An error names the step that failed, and
// everything already started is closed.
func StartNode(ctx context.Context, o NodeOptions) (*Node, error) {
	n := &Node{log: o.Log}
	if n.log == nil {
		n.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for _, s := range startSteps {
		if err := s.run(n, ctx, &o); err != nil {
			return nil, errors.Join(fmt.Errorf("start node: %s: %w", s.name, err), n.Close())
		}
	}
	return n, nil
}

func (n *Node) openDatapath(_ context.Context, o *NodeOptions) error {
	dp, err := datapath.Open(o.Datapath)
	if err != nil {
		return err
	}
	n.Datapath = dp
	n.Enforcer = New(o.Name, dp, o.Policy)
	return nil
}

func (n *Node) readFlows(context.Context, *NodeOptions) error {
	fr, err := n.Datapath.Flows()
	if err != nil {
		return err
	}
	n.Flows = newFlowHub(fr)
	return nil
}

// observeFlows keeps the node's flows, as Hubble reports them, in a bounded ring that `netpact
// observe` reads.
func (n *Node) observeFlows(_ context.Context, o *NodeOptions) error {
	n.Ring, n.name = o.Ring, o.Name
	if n.Ring == nil {
		n.Ring = observe.NewRing(o.FlowRing)
	}
	n.Flows.Subscribe(func(f datapath.Flow) {
		for _, fl := range n.Enforcer.HubbleFlows(f, n.name) {
			n.Ring.Add(&observe.GetFlowsResponse{Flow: fl, NodeName: n.name, Time: fl.Time})
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.countLost(ctx, time.Second)
	}()
	n.stopLost = func() { cancel(); <-done }
	return nil
}

// OnLost adds a hook told of the flow events lost, by source, as the ring is (every second).
func (n *Node) OnLost(fn func(observe.LostEventSource, uint64)) {
	n.lostMu.Lock()
	n.lostHooks = append(n.lostHooks, fn)
	n.lostMu.Unlock()
}

func (n *Node) addLost(src observe.LostEventSource, cpu *int32, c uint64) {
	n.Ring.AddLost(src, cpu, c)
	n.lostMu.Lock()
	hooks := n.lostHooks
	n.lostMu.Unlock()
	for _, h := range hooks {
		h(src, c)
	}
}

// countLost enters in the ring, every interval, the flow events lost since the last time, as
// Hubble reports lost events: those the datapath had no room for in its ring buffer (per CPU),
// those the reader lost, and those the per-pod rate limit held back.
func (n *Node) countLost(ctx context.Context, interval time.Duration) {
	// The counters are pinned and outlive an enforcer: what they held when this one started
	// was lost before it, not since.
	lastCPU := map[int]uint64{}
	if lost, err := n.Datapath.EventsLost(); err == nil {
		lastCPU = lost
	}
	var lastReader, lastLimited uint64
	if limited, err := n.Datapath.EventsLimited(); err == nil {
		for _, v := range limited {
			lastLimited += v
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		if lost, err := n.Datapath.EventsLost(); err == nil {
			for cpu, c := range lost {
				if c > lastCPU[cpu] {
					n.addLost(observe.PerfEventRingBuffer, observe.Int32(int32(cpu)), c-lastCPU[cpu])
				}
				lastCPU[cpu] = c
			}
		}
		if c := n.Flows.lost(); c > lastReader {
			n.addLost(observe.ObserverEventsQueue, nil, c-lastReader)
			lastReader = c
		}
		if limited, err := n.Datapath.EventsLimited(); err == nil {
			var c uint64
			for _, v := range limited {
				c += v
			}
			// The buckets are an LRU map: an evicted pod's count leaves the sum.
			if c > lastLimited {
				n.addLost(observe.RateLimited, nil, c-lastLimited)
			}
			lastLimited = c
		}
	}
}

func (n *Node) routeToProxy(_ context.Context, o *NodeOptions) error {
	r := o.Routes
	if err := r.Ensure(); err != nil {
		return err
	}
	n.routes = &r
	return nil
}

// startHTTPProxy starts the proxy's listener (waiting for the previous enforcer's to go during a
// restart) and gives the datapath its sockets and port.
func (n *Node) startHTTPProxy(ctx context.Context, o *NodeOptions) error {
	opts := o.HTTP
	if opts.Decide == nil {
		opts.Decide = n.Enforcer.DecideTCP
	}
	if opts.Mark == 0 {
		opts.Mark = n.Datapath.ProxyMark()
	}
	if opts.KeepSource == nil {
		opts.KeepSource = n.Enforcer.IsPod
	}
	if opts.OnRequest == nil {
		opts.OnRequest = func(r proxy.Request) { n.Datapath.PublishL7(L7Flow(r, n.Enforcer.State())) }
	}
	var px *proxy.Proxy
	if err := n.listenWaiting(ctx, "L7 proxy", o.HTTPPort, o.PortWait, func() (err error) {
		px, err = proxy.Listen(o.HTTPPort, opts)
		return err
	}); err != nil {
		return err
	}
	n.Proxy = px
	if err := n.Datapath.SetProxyListeners(datapath.ParserHTTP, px.Listeners()); err != nil {
		return err
	}
	if err := n.Datapath.SetProxyPort(datapath.ParserHTTP, px.Port()); err != nil {
		return err
	}
	n.log.Info("L7 proxy listening", "port", px.Port())
	return nil
}

// listenWaiting runs listen until it succeeds, for at most wait while another process (the
// enforcer this one replaces) still holds the port.
func (n *Node) listenWaiting(ctx context.Context, what string, port uint16, wait time.Duration, listen func() error) error {
	for deadline := time.Now().Add(wait); ; {
		err := listen()
		if err == nil || !time.Now().Before(deadline) {
			return err
		}
		n.log.Info(what+" port busy, waiting for it", "port", port, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// restoreLearned configures what the node learns from DNS answers and reads back what an
// earlier enforcer learned, before the first sync programs it, then expires and saves it every
// LearnedGC.
func (n *Node) restoreLearned(_ context.Context, o *NodeOptions) error {
	n.Enforcer.SetFQDNOptions(o.FQDN)
	count, err := n.Enforcer.RestoreLearned()
	if err != nil {
		// The addresses an earlier enforcer learned are then learned again from new answers;
		// until then toFQDNs rules do not select them (fail closed), and the log says so.
		n.log.Error("learned DNS names not restored", "err", err)
	} else if count > 0 {
		n.log.Info("learned DNS names restored", "addresses", count)
	}
	gc := o.LearnedGC
	if gc <= 0 {
		gc = time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Enforcer.RunLearnedGC(ctx, gc, func(err error) { n.log.Error("learned DNS names", "err", err) })
	}()
	n.stopGC = func() { cancel(); <-done }
	return nil
}

// startDNSProxy starts the DNS proxy (waiting for the previous enforcer's to go during a restart)
// and gives the datapath its port and TCP listeners.
func (n *Node) startDNSProxy(ctx context.Context, o *NodeOptions) error {
	opts := o.DNS
	if opts.Decide == nil {
		opts.Decide = n.Enforcer.Decide
	}
	if opts.Learn == nil {
		opts.Learn = func(_ netip.AddrPort, qname string, addrs []netip.Addr, ttl time.Duration) error {
			return n.Enforcer.Learn(qname, addrs, ttl)
		}
	}
	if opts.Mark == 0 {
		opts.Mark = n.Datapath.ProxyMark()
	}
	if opts.KeepSource == nil {
		opts.KeepSource = n.Enforcer.IsPod
	}
	if opts.OnQuery == nil {
		opts.OnQuery = func(q dnsproxy.Query) { n.Datapath.PublishL7(DNSFlow(q, n.Enforcer.State())) }
	}
	var px *dnsproxy.Proxy
	if err := n.listenWaiting(ctx, "DNS proxy", o.DNSPort, o.PortWait, func() (err error) {
		px, err = dnsproxy.Listen(o.DNSPort, opts)
		return err
	}); err != nil {
		return err
	}
	n.DNSProxy = px
	if err := n.Datapath.SetProxyListeners(datapath.ParserDNS, px.Listeners()); err != nil {
		return err
	}
	if err := n.Datapath.SetProxyPort(datapath.ParserDNS, px.Port()); err != nil {
		return err
	}
	n.log.Info("DNS proxy listening", "port", px.Port())
	return nil
}

// startKafkaProxy starts the Kafka proxy (waiting for the previous enforcer's to go during a
// restart) and gives the datapath its port and listeners.
func (n *Node) startKafkaProxy(ctx context.Context, o *NodeOptions) error {
	opts := o.Kafka
	if opts.Decide == nil {
		opts.Decide = n.Enforcer.DecideTCP
	}
	if opts.Mark == 0 {
		opts.Mark = n.Datapath.ProxyMark()
	}
	if opts.KeepSource == nil {
		opts.KeepSource = n.Enforcer.IsPod
	}
	if opts.OnRequest == nil {
		opts.OnRequest = func(r kafkaproxy.Request) { n.Datapath.PublishL7(KafkaFlow(r, n.Enforcer.State())) }
	}
	var px *kafkaproxy.Proxy
	if err := n.listenWaiting(ctx, "Kafka proxy", o.KafkaPort, o.PortWait, func() (err error) {
		px, err = kafkaproxy.Listen(o.KafkaPort, opts)
		return err
	}); err != nil {
		return err
	}
	n.KafkaProxy = px
	if err := n.Datapath.SetProxyListeners(datapath.ParserKafka, px.Listeners()); err != nil {
		return err
	}
	if err := n.Datapath.SetProxyPort(datapath.ParserKafka, px.Port()); err != nil {
		return err
	}
	n.log.Info("Kafka proxy listening", "port", px.Port())
	return nil
}

func (n *Node) attachUplink(_ context.Context, o *NodeOptions) error {
	uplink := o.Uplink
	if uplink == "auto" {
		var err error
		if uplink, err = defaultRouteLink(); err != nil {
			return fmt.Errorf("uplink auto: %w", err)
		}
	}
	if uplink == "" {
		return nil
	}
	if err := n.Datapath.AttachUplink(uplink); err != nil {
		return err
	}
	n.uplink = uplink
	n.log.Info("uplink attached", "interface", uplink)
	return nil
}

// defaultRouteLink is the interface of the IPv4 default route.
func defaultRouteLink() (string, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.LinkIndex > 0 {
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("default route's link: %w", err)
			}
			return l.Attrs().Name, nil
		}
	}
	return "", errors.New("no IPv4 default route")
}

// StopProxy stops the L7 proxies, HTTP, DNS and Kafka (tests of failing closed): flows an L7 rule
// governs are dropped from then on.
func (n *Node) StopProxy() error {
	var errs []error
	if n.Proxy != nil {
		errs = append(errs, n.Proxy.Close())
		n.Proxy = nil
	}
	if n.DNSProxy != nil {
		errs = append(errs, n.DNSProxy.Close())
		n.DNSProxy = nil
	}
	if n.KafkaProxy != nil {
		errs = append(errs, n.KafkaProxy.Close())
		n.KafkaProxy = nil
	}
	return errors.Join(errs...)
}

// Close stops the node's runtime and leaves what enforces: pins (the datapath's programs keep
// enforcing while the next process starts) and the proxy's routes.
func (n *Node) Close() error {
	errs := n.stop()
	if n.Datapath != nil {
		errs = append(errs, n.Datapath.Close())
		n.Datapath = nil
	}
	return errors.Join(errs...)
}

// Teardown stops the node's runtime and removes all of it: the proxy's routes, and the datapath's
// programs, links and pins (a node that goes away for good, such as a local node).
func (n *Node) Teardown() error {
	errs := n.stop()
	if n.routes != nil {
		errs = append(errs, n.routes.Remove())
		n.routes = nil
	}
	if n.Datapath != nil {
		errs = append(errs, n.Datapath.Teardown())
		n.Datapath = nil
	}
	return errors.Join(errs...)
}

// stop stops reading flow events, the proxies and the learned names' loop (saving them).
func (n *Node) stop() []error {
	var errs []error
	if n.stopLost != nil {
		n.stopLost()
		n.stopLost = nil
	}
	if n.stopGC != nil {
		n.stopGC()
		n.stopGC = nil
		errs = append(errs, n.Enforcer.SaveLearned())
	}
	if n.Flows != nil {
		errs = append(errs, n.Flows.close())
		n.Flows = nil
	}
	return append(errs, n.StopProxy())
}

// L7Flow is a request the proxy judged as an L7 event of the flow stream: the deciding side and
// rule, and the identities the state gives the addresses.
func L7Flow(r proxy.Request, st *policy.State) datapath.Flow {
	f := datapath.Flow{Direction: r.Verdict.Direction, Reason: datapath.ReasonForwardProxy, Proto: policy.ProtoTCP,
		Src: r.Src.Addr(), Dst: r.Dst.Addr(), SrcPort: r.Src.Port(), DstPort: r.Dst.Port(),
		L7: &datapath.L7Flow{Protocol: r.Protocol, Method: r.Method, Path: redactQuery(r.Path), Host: r.Host, Status: r.Status,
			Denied: !r.Verdict.Allowed || r.Refused != "", HTTPRule: r.Verdict.Index, Why: r.Verdict.Reason, Latency: r.Latency}}
	if r.Refused != "" {
		f.L7.Why = r.Refused
	}
	for _, a := range r.Verdict.Actions {
		f.L7.HeaderActions = append(f.L7.HeaderActions, a.Action+" "+a.Name)
	}
	if r.Verdict.Rule != nil {
		f.Rule = r.Verdict.Rule.ID
	}
	if st != nil {
		f.SrcIdentity, f.DstIdentity = st.Resolve("", f.Src), st.Resolve("", f.Dst)
	}
	return f
}

// DNSFlow is a query the DNS proxy judged as an L7 event of the flow stream.
func DNSFlow(q dnsproxy.Query, st *policy.State) datapath.Flow {
	f := datapath.Flow{Direction: policy.Egress, Reason: datapath.ReasonForwardProxy, Proto: q.Proto,
		Src: q.Src.Addr(), Dst: q.Dst.Addr(), SrcPort: q.Src.Port(), DstPort: q.Dst.Port(),
		L7: &datapath.L7Flow{Protocol: "DNS", Denied: !q.Verdict.Allowed || q.Refused != "", HTTPRule: q.Verdict.Index,
			Why: q.Verdict.Reason, Latency: q.Latency,
			DNS: &datapath.DNSFlow{Query: q.Name, Type: dns.TypeToString[q.Type], IPs: q.Answers, TTL: q.TTL}}}
	if q.Rcode != dnsproxy.NoAnswer {
		f.L7.DNS.RCode = dns.RcodeToString[q.Rcode]
	}
	if q.Refused != "" {
		f.L7.Why = q.Refused
	}
	if q.Verdict.Rule != nil {
		f.Rule = q.Verdict.Rule.ID
	}
	if st != nil {
		f.SrcIdentity, f.DstIdentity = st.Resolve("", f.Src), st.Resolve("", f.Dst)
	}
	return f
}

// maxFlowTopics is the most topics a Kafka request's flow event names.
const maxFlowTopics = 16

// KafkaFlow is a request the Kafka proxy judged as an L7 event of the flow stream.
func KafkaFlow(r kafkaproxy.Request, st *policy.State) datapath.Flow {
	f := datapath.Flow{Direction: r.Verdict.Direction, Reason: datapath.ReasonForwardProxy, Proto: policy.ProtoTCP,
		Src: r.Src.Addr(), Dst: r.Dst.Addr(), SrcPort: r.Src.Port(), DstPort: r.Dst.Port(),
		L7: &datapath.L7Flow{Protocol: "Kafka", Denied: !r.Verdict.Allowed || r.Refused != "", HTTPRule: r.Verdict.Index,
			Why: r.Verdict.Reason, Kafka: &datapath.KafkaFlow{APIVersion: r.APIVersion,
				CorrelationID: r.CorrelationID, Topics: r.Topics, ErrorCode: r.ErrorCode}}}
	if n := len(r.Topics); n > maxFlowTopics {
		// A flow event stays small, however many topics a request names (up to 10,000).
		f.L7.Kafka.Topics = append(slices.Clone(r.Topics[:maxFlowTopics]), fmt.Sprintf("(%d more)", n-maxFlowTopics))
	}
	if r.APIKey >= 0 {
		f.L7.Kafka.APIKey = policy.KafkaKeyName(r.APIKey)
	}
	if r.Refused != "" {
		f.L7.Why = r.Refused
	}
	if r.Verdict.Rule != nil {
		f.Rule = r.Verdict.Rule.ID
	}
	if st != nil {
		f.SrcIdentity, f.DstIdentity = st.Resolve("", f.Src), st.Resolve("", f.Dst)
	}
	return f
}

// redactQuery leaves a request target's query out of its flow event, as Hubble's
// --hubble-redact-http-urlquery does: queries carry tokens and personal data, and the node's flow
// log is read by others than the pod's owner. Rules still judge the whole target.
func redactQuery(target string) string {
	path, _, _ := strings.Cut(target, "?")
	return path
}
