package enforcer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/enforcer/datapath"
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
	// Uplink is the interface traffic from other nodes arrives on, where ingress L7 rules hand it
	// to the proxy: "auto" is the IPv4 default route's, "" none.
	Uplink string
	// Log gets a line per step; discarded when nil.
	Log *slog.Logger
}

// Node is a node's runtime, as StartNode brought it up.
type Node struct {
	Datapath *datapath.Datapath
	Enforcer *Enforcer
	// Flows reads the datapath's flow events; its reader is the caller's (an observer, a log).
	Flows *datapath.FlowReader
	// Proxy is the L7 HTTP proxy; nil once StopProxy stopped it.
	Proxy  *proxy.Proxy
	routes *proxy.Routes
	uplink string
	log    *slog.Logger
}

// startStep is one named step of a node's start. A step that fails leaves the node to Close.
type startStep struct {
	name string
	run  func(n *Node, ctx context.Context, o *NodeOptions) error
}

// startSteps are the node's start, in order. The DNS and Kafka proxies come as one step each.
var startSteps = []startStep{
	{"open datapath", (*Node).openDatapath},
	{"read flow events", (*Node).readFlows},
	{"route redirected flows to the proxy", (*Node).routeToProxy},
	{"start the HTTP proxy", (*Node).startHTTPProxy},
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
	n.Flows = fr
	return nil
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
	var err error
	for deadline := time.Now().Add(o.PortWait); ; {
		if px, err = proxy.Listen(o.HTTPPort, opts); err == nil || !time.Now().Before(deadline) {
			break
		}
		n.log.Info("L7 proxy port busy, waiting for it", "port", o.HTTPPort, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if err != nil {
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

// StopProxy stops the L7 HTTP proxy (tests of failing closed): flows an L7 rule governs are
// dropped from then on.
func (n *Node) StopProxy() error {
	if n.Proxy == nil {
		return nil
	}
	err := n.Proxy.Close()
	n.Proxy = nil
	return err
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

// stop stops reading flow events and the proxy.
func (n *Node) stop() []error {
	var errs []error
	if n.Flows != nil {
		errs = append(errs, n.Flows.Close())
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

// redactQuery leaves a request target's query out of its flow event, as Hubble's
// --hubble-redact-http-urlquery does: queries carry tokens and personal data, and the node's flow
// log is read by others than the pod's owner. Rules still judge the whole target.
func redactQuery(target string) string {
	path, _, _ := strings.Cut(target, "?")
	return path
}
