package scenarios

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"

	"github.com/netpact/netpact/deploy"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/policy"
)

// enforcerPort is the port of an enforcer's /flows and /metrics, which the API server's pod
// proxy reaches.
const enforcerPort = "9879"

// flowsTimeout bounds one request for an enforcer's flows: the node's own wait for its reader
// (sync=1) is 5 s.
const flowsTimeout = 10 * time.Second

// enforcers are the netpact enforcer pods by node, in the enforcer DaemonSet's namespace (found
// on the first call: the pods change within a run, where netpact is installed does not).
func (c *Cluster) enforcers(ctx context.Context) (map[string]ktypes.NamespacedName, error) {
	c.mu.Lock()
	ns := c.enforcerNS
	c.mu.Unlock()
	if ns == "" {
		ds, err := deploy.Enforcer(ctx, c.opts.Client)
		if err != nil {
			return nil, fmt.Errorf("list the enforcers: %w", err)
		}
		ns = ds.Namespace
		c.mu.Lock()
		c.enforcerNS = ns
		c.mu.Unlock()
	}
	list, err := c.opts.Client.CoreV1().Pods(ns).List(ctx,
		metav1.ListOptions{LabelSelector: deploy.Selector(deploy.EnforcerName)})
	if err != nil {
		return nil, fmt.Errorf("list the enforcers: %w", err)
	}
	out := map[string]ktypes.NamespacedName{}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out[p.Spec.NodeName] = ktypes.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		}
	}
	if len(list.Items) == 0 {
		// None there: netpact may have been installed elsewhere since; look again next time.
		c.mu.Lock()
		c.enforcerNS = ""
		c.mu.Unlock()
	}
	return out, nil
}

// enforcerFlows streams one enforcer's /flows (Hubble's GetFlowsResponse lines, as
// observe.Handler writes them) for a filter through the API server's pod proxy, calling fn with
// each record. The filter must not follow: the answer has to end. With sync, the enforcer first
// waits until its flow reader has handed on every event its datapath wrote before the request
// (kubenode's sync=1), so the answer has every flow of the traffic that happened before it.
func (c *Cluster) enforcerFlows(ctx context.Context, enforcer ktypes.NamespacedName, f observe.Filter, sync bool,
	fn func(*observe.GetFlowsResponse) error) error {
	if f.Follow {
		return errors.New("enforcer flows: a followed stream never ends")
	}
	req := c.opts.Client.CoreV1().RESTClient().Get().Namespace(enforcer.Namespace).Resource("pods").
		Name(enforcer.Name + ":" + enforcerPort).SubResource("proxy").Suffix("flows")
	for k, vs := range f.Query() {
		for _, v := range vs {
			req = req.Param(k, v)
		}
	}
	if sync {
		req = req.Param("sync", "1")
	}
	body, err := req.Stream(ctx)
	if err != nil {
		return fmt.Errorf("flows of %s: %w", enforcer, err)
	}
	defer body.Close()
	if err := observe.Stream(ctx, body, fn); err != nil {
		return fmt.Errorf("flows of %s: %w", enforcer, err)
	}
	return nil
}

// Audited reports whether the enforcers reported the cell's connection as AUDIT (a policy in
// audit mode would have dropped it) since the step began: from the first pod of the source (the
// one Probe probes from) to every pod of the destination (each was probed), or to any backend of
// a service (translation picks one), or to the external host; on the cell's protocol and port
// (a service cell's Port is already its backends' target port). It asks the enforcer of the
// source's node (egress policy) and of each destination's node (ingress policy) for the flows
// with verdict AUDIT between those addresses; known is false when one of them cannot be asked,
// or reports lost events since the step began and no AUDIT.
//
// The race with the enforcer's reader, and why there is no sleep or retry: the datapath writes
// the AUDIT event to its ring buffer before it lets the packet that made the event go on (at the
// source's veth on egress, the destination's on ingress). The runner only asks about a
// connection that got through: its first packet passed both verdict points, so both events were
// written before the destination answered, before the probe saw the answer, before its exec
// ended, before this request. What is not ordered is the enforcer's reader, which hands events
// on to the ring /flows serves within milliseconds but asynchronously; so the request carries
// sync=1, and the enforcer answers only once its reader has handed on everything its datapath
// wrote before the request (enforcer.FlowHub.Sync, the wait the local node's SawAudit makes).
// An enforcer without sync answers 400 to it: unknown, never a silent "not audited". What sync
// does not order is the lost-event accounting, which the node enters every second: an event the
// per-pod rate limit held back in the last second shows no loss yet, and the cell reads as allow
// rather than audit, a failing cell, never a false audit.
func (c *Cluster) Audited(cell Cell) (audited, known bool) {
	from := c.pods[cell.From]
	if len(from) == 0 || len(podIPs(from[0])) == 0 {
		return false, false
	}
	src := from[0]
	// The destinations: each a set of addresses (a pod's IPv4 and IPv6) and its node ("" for
	// an external host, whose only enforcer is the source's).
	type dest struct {
		ips  []string
		node string
	}
	var dests []dest
	anyDest := false
	switch {
	case cell.External != "":
		_, i, ok := c.sc.external(cell.External)
		if !ok {
			return false, false
		}
		v4, v6 := ExternalAddrs(i)
		dests = append(dests, dest{ips: []string{v4.String(), v6.String()}})
	case cell.Service != "":
		anyDest = true
		for _, key := range cell.Backends {
			for _, p := range c.pods[key] {
				dests = append(dests, dest{ips: podIPs(p), node: p.Spec.NodeName})
			}
		}
	default:
		for _, p := range c.pods[cell.To] {
			dests = append(dests, dest{ips: podIPs(p), node: p.Spec.NodeName})
		}
	}
	if len(dests) == 0 {
		return false, false
	}
	c.mu.Lock()
	since := c.stepStart
	c.mu.Unlock()
	f := observe.Filter{Verdicts: []string{string(observe.Audit)}, FromIPs: podIPs(src), Since: since}
	nodes := []string{src.Spec.NodeName}
	for _, d := range dests {
		if len(d.ips) == 0 {
			return false, false
		}
		f.ToIPs = append(f.ToIPs, d.ips...)
		if d.node != "" && !slices.Contains(nodes, d.node) {
			nodes = append(nodes, d.node)
		}
	}
	if cell.Port.Port != 0 {
		f.Ports = []uint16{cell.Port.Port}
	}
	if p := flowProtocol(cell.Port.Protocol); p != "" {
		f.Protocols = []string{p}
	}

	ctx, cancel := context.WithTimeout(context.Background(), flowsTimeout)
	defer cancel()
	enforcers, err := c.enforcers(ctx)
	if err != nil {
		return false, false
	}
	reported := map[string]bool{} // destination address -> an AUDIT flow to it
	lost := false
	for _, n := range nodes {
		enf := enforcers[n]
		if enf.Name == "" {
			return false, false
		}
		err := c.enforcerFlows(ctx, enf, f, true, func(r *observe.GetFlowsResponse) error {
			switch {
			case r.LostEvents != nil:
				lost = true
			case r.Flow != nil && r.Flow.IP != nil && matchesPort(r.Flow, cell.Port.Port):
				reported[r.Flow.IP.Destination] = true
			}
			return nil
		})
		if err != nil {
			return false, false
		}
	}
	hit := func(d dest) bool {
		for _, ip := range d.ips {
			if reported[ip] {
				return true
			}
		}
		return false
	}
	all := true
	for _, d := range dests {
		if hit(d) {
			if anyDest {
				return true, true
			}
		} else {
			all = false
		}
	}
	if all && !anyDest {
		return true, true
	}
	return false, !lost
}

// matchesPort: the flow's destination port is port (the filter's port matches either end).
func matchesPort(fl *observe.Flow, port uint16) bool {
	if port == 0 || fl.L4 == nil {
		return true
	}
	var dst uint32
	switch l4 := fl.L4; {
	case l4.TCP != nil:
		dst = l4.TCP.DestinationPort
	case l4.UDP != nil:
		dst = l4.UDP.DestinationPort
	case l4.SCTP != nil:
		dst = l4.SCTP.DestinationPort
	default:
		return true
	}
	return dst == uint32(port)
}

// flowProtocol is a cell protocol as a flow filter names it; "" for any.
func flowProtocol(p policy.Proto) string {
	switch p {
	case policy.ProtoTCP:
		return "tcp"
	case policy.ProtoUDP:
		return "udp"
	case policy.ProtoSCTP:
		return "sctp"
	case policy.ProtoICMP:
		return "icmpv4"
	case policy.ProtoICMPv6:
		return "icmpv6"
	}
	return ""
}

// podIPs are a pod's addresses, IPv4 and IPv6.
func podIPs(p corev1.Pod) []string {
	var out []string
	for _, ip := range p.Status.PodIPs {
		out = append(out, ip.IP)
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		out = append(out, p.Status.PodIP)
	}
	return out
}

// nodeFlows asks one enforcer (through the API server's pod proxy) for the flow events from src
// to dst since a time, and renders the last 4 as `netpact observe -o compact` does (Hubble's
// compact line with the deciding policy, its rule and where it was written); one line saying why
// when the enforcer cannot be asked.
func (c *Cluster) nodeFlows(enforcer ktypes.NamespacedName, src, dst string, since time.Time) []string {
	if enforcer.Name == "" || src == "" || dst == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), flowsTimeout)
	defer cancel()
	var b strings.Builder
	pr, err := observe.NewPrinter(&b, observe.PrinterOptions{Output: observe.OutputCompact, PolicyNames: true})
	if err != nil {
		return []string{"flows unprintable: " + err.Error()}
	}
	f := observe.Filter{FromIPs: []string{src}, ToIPs: []string{dst}, Since: since, Last: 4}
	// Synced: the flows of the probes that just ran are all there.
	if err := c.enforcerFlows(ctx, enforcer, f, true, pr.WriteResponse); err != nil {
		return []string{"flows unavailable: " + err.Error()}
	}
	if err := pr.Flush(); err != nil {
		return []string{"flows unprintable: " + err.Error()}
	}
	if b.Len() == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
}
