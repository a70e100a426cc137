package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/deploy"
	"github.com/netpact/netpact/enforcer/observe"
)

// DefaultObserveSocket is where a local node (netpact test, netpact reconciler local) serves its
// flows to `netpact observe`: a unix socket only root can open, as Cilium's hubble.sock.
const DefaultObserveSocket = "/run/netpact/observe.sock"

// enforcerFlowsPort is the port of the enforcers' endpoints (deploy/: --listen=$(HOST_IP):9879).
const enforcerFlowsPort = "9879"

type observeOptions struct {
	socket, enforcerNS, output, since, until     string
	kube                                         *clusterFlags
	verdicts, pods, namespaces, fromPods, toPods []string
	ips, fromIPs, toIPs, protocols, types, nodes []string
	ports                                        []uint
	last                                         int
	follow, nodeName, numeric, policyNames       bool
}

func newObserveCommand() *cobra.Command {
	o := &observeOptions{}
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show the flows the enforcers decided, as hubble observe does, with the policy, rule and Git line of each verdict",
		Long: `observe prints the flows the datapath reported: each policy verdict (ALLOWED, DENIED,
AUDITED), drop and L7 request, naming the policy, its rule, the file and line it came from and,
for a policy the reconciler applied, its Git revision. A default-deny drop names the policies
that select the pod (they made it default deny).

Without --kubeconfig or --context it reads a local node: a running "netpact test" (with --retain
it keeps serving after its report) or "netpact reconciler local", on the unix socket --socket.
With --kubeconfig FILE or --context NAME (a context of KUBECONFIG or ~/.kube/config) it reads
every enforcer of that cluster through the API server (pods/proxy, as kubectl port-forward does:
nothing more to deploy, and the right needed is "get pods/proxy" in the enforcers' namespace),
merging their flows in time order.

Each node keeps its last 16383 flows (a ring; older ones are overwritten). Events lost before a
reader saw them are printed as Hubble prints them: "EVENTS LOST: <source> CPU(n) <count>"
(PERF_EVENT_RING_BUFFER: the datapath's ring buffer was full; OBSERVER_EVENTS_QUEUE: the node's
reader; HUBBLE_RING_BUFFER: this reader fell behind the ring; RATE_LIMITED: the per-pod rate
limit held them back).

Output: -o compact (Hubble's line, the default; the deciding policies are appended after BY,
--print-policy-names=false gives Hubble's line exactly), -o json (one GetFlowsResponse per line
with Hubble's field names, so jq recipes for hubble observe -o json work), -o table, -o dict.
See docs/observe.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runObserve(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", DefaultObserveSocket, "the local node's socket (without --kubeconfig or --context)")
	o.kube = addClusterFlags(f)
	o.kube.setKubeconfigUsage("read the enforcers of the cluster this kubeconfig (or --context, in KUBECONFIG or ~/.kube/config) reaches instead of a local node")
	f.StringVar(&o.enforcerNS, "enforcer-namespace", "", "the namespace of the enforcer DaemonSet's pods (label app.kubernetes.io/name=netpact); empty: wherever the netpact DaemonSet is")
	f.StringVarP(&o.output, "output", "o", "compact", "compact, json, table or dict")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{observe.OutputCompact, observe.OutputJSON,
		observe.OutputTable, observe.OutputDict}, cobra.ShellCompDirectiveNoFileComp))
	f.BoolVarP(&o.follow, "follow", "f", false, "keep printing new flows")
	f.IntVar(&o.last, "last", 0, "the last N flows of each node (all it keeps when 0 and not following; none before new ones when following)")
	f.StringVar(&o.since, "since", "", "flows since a time: RFC 3339, or a duration ago (5m)")
	f.StringVar(&o.until, "until", "", "flows until a time: RFC 3339, or a duration ago")
	f.StringSliceVar(&o.verdicts, "verdict", nil, "FORWARDED, DROPPED, AUDIT, REDIRECTED, ... (repeat: any of them)")
	f.StringSliceVar(&o.pods, "pod", nil, "[namespace/]pod-name-prefix at either end")
	f.StringSliceVar(&o.namespaces, "namespace", nil, "namespace of either end")
	f.StringSliceVar(&o.fromPods, "from-pod", nil, "[namespace/]pod-name-prefix of the source")
	f.StringSliceVar(&o.toPods, "to-pod", nil, "[namespace/]pod-name-prefix of the destination")
	f.StringSliceVar(&o.ips, "ip", nil, "address of either end")
	f.StringSliceVar(&o.fromIPs, "from-ip", nil, "address of the source")
	f.StringSliceVar(&o.toIPs, "to-ip", nil, "address of the destination")
	f.UintSliceVar(&o.ports, "port", nil, "L4 port of either end")
	f.StringSliceVar(&o.protocols, "protocol", nil, "tcp, udp, sctp, icmp, icmpv4, icmpv6, http, dns, kafka")
	f.StringSliceVar(&o.types, "type", nil, "event type: policy-verdict, drop, trace, l7, dns, http, kafka")
	f.StringSliceVar(&o.nodes, "node", nil, "node name (shell pattern: kind-worker*)")
	f.BoolVar(&o.nodeName, "print-node-name", false, "print each flow's node")
	f.BoolVar(&o.numeric, "numeric", false, "addresses, not pod names")
	f.BoolVar(&o.policyNames, "print-policy-names", true, "append the deciding policies, rules and Git lines to compact lines")
	return cmd
}

// filter builds the flow filter of the flags; errors name the flag.
func (o *observeOptions) filter(now time.Time) (observe.Filter, error) {
	f := observe.Filter{Verdicts: o.verdicts, Pods: o.pods, Namespaces: o.namespaces, FromPods: o.fromPods, ToPods: o.toPods,
		IPs: o.ips, FromIPs: o.fromIPs, ToIPs: o.toIPs, Protocols: o.protocols, Types: o.types, Nodes: o.nodes,
		Last: o.last, Follow: o.follow}
	for i, v := range f.Verdicts {
		f.Verdicts[i] = strings.ToUpper(v)
	}
	for _, p := range o.ports {
		if p == 0 || p > 65535 {
			return f, fmt.Errorf("--port %d: want 1-65535", p)
		}
		f.Ports = append(f.Ports, uint16(p))
	}
	var err error
	if o.since != "" {
		if f.Since, err = observe.ParseTime(o.since, now); err != nil {
			return f, fmt.Errorf("--since: %w", err)
		}
	}
	if o.until != "" {
		if f.Until, err = observe.ParseTime(o.until, now); err != nil {
			return f, fmt.Errorf("--until: %w", err)
		}
	}
	if err := f.Validate(); err != nil {
		return f, err
	}
	return f, nil
}

func runObserve(cmd *cobra.Command, o *observeOptions) error {
	f, err := o.filter(time.Now())
	if err != nil {
		return err
	}
	live, err := o.kube.named("observe reads the local node's --socket")
	if err != nil {
		return err
	}
	pr, err := observe.NewPrinter(cmd.OutOrStdout(), observe.PrinterOptions{Output: o.output, NodeName: o.nodeName,
		Numeric: o.numeric, PolicyNames: o.policyNames})
	if err != nil {
		return err
	}
	defer pr.Close()
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var sources []flowSource
	if live {
		if sources, err = enforcerSources(ctx, o.kube, o.enforcerNS, o.nodes); err != nil {
			return err
		}
	} else {
		sources = []flowSource{localSource(o.socket)}
	}
	return printFlows(ctx, pr, sources, f)
}

// flowSource is one node's /flows: it streams the node's GetFlowsResponse lines for a filter.
type flowSource struct {
	name string
	open func(ctx context.Context, q url.Values) (io.ReadCloser, error)
}

// localSource reads a local node's socket.
func localSource(socket string) flowSource {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	return flowSource{name: socket, open: func(ctx context.Context, q url.Values) (io.ReadCloser, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://local/flows?"+q.Encode(), nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
				return nil, fmt.Errorf("no local node serves %s: start one (netpact test --retain FILE, or netpact reconciler local), or pass --kubeconfig or --context", socket)
			}
			return nil, fmt.Errorf("read %s: %w", socket, err)
		}
		return checkFlowsResponse(resp)
	}}
}

// enforcerSources are the enforcers of the cluster, through the API server's pods/proxy; nodes
// narrows them down to the nodes of --node before any request.
func enforcerSources(ctx context.Context, kube *clusterFlags, ns string, nodes []string) ([]flowSource, error) {
	cfg, err := kube.restConfig()
	if err != nil {
		return nil, err
	}
	// A stream lasts as long as --follow does: no client timeout, unless --request-timeout sets one.
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if ns == "" {
		ds, err := deploy.Enforcer(ctx, client)
		if err != nil {
			return nil, err
		}
		ns = ds.Namespace
	}
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: deploy.Selector(deploy.EnforcerName)})
	if err != nil {
		return nil, fmt.Errorf("list the enforcers in %s: %w", ns, err)
	}
	var out []flowSource
	for _, p := range pods.Items {
		if p.Status.Phase != "Running" || !matchesNode(nodes, p.Spec.NodeName) {
			continue
		}
		name := p.Name
		out = append(out, flowSource{name: p.Spec.NodeName, open: func(ctx context.Context, q url.Values) (io.ReadCloser, error) {
			req := client.CoreV1().RESTClient().Get().Namespace(ns).Resource("pods").Name(name + ":" + enforcerFlowsPort).
				SubResource("proxy").Suffix("flows")
			for k, vs := range q {
				for _, v := range vs {
					req = req.Param(k, v)
				}
			}
			rc, err := req.Stream(ctx)
			if err != nil {
				return nil, fmt.Errorf("enforcer %s: %w", name, err)
			}
			return rc, nil
		}})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no running enforcer in %s (label app.kubernetes.io/name=netpact)%s", ns, nodesText(nodes))
	}
	return out, nil
}

func nodesText(nodes []string) string {
	if len(nodes) == 0 {
		return ""
	}
	return " on nodes " + strings.Join(nodes, ", ")
}

func matchesNode(patterns []string, node string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, node); ok {
			return true
		}
	}
	return false
}

func checkFlowsResponse(resp *http.Response) (io.ReadCloser, error) {
	if resp.StatusCode == http.StatusOK {
		return resp.Body, nil
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 4096)).ReadString('\n')
	return nil, fmt.Errorf("flows: %s: %s", resp.Status, strings.TrimSpace(line))
}

// printFlows prints the sources' flows: when following, as they come, from every source at
// once; otherwise every source's, merged in time order (the last N overall for --last).
func printFlows(ctx context.Context, pr *observe.Printer, sources []flowSource, f observe.Filter) error {
	q := f.Query()
	if f.Follow {
		var mu sync.Mutex
		errs := make(chan error, len(sources))
		for _, s := range sources {
			go func() {
				errs <- readSource(ctx, s, q, func(r *observe.GetFlowsResponse) error {
					mu.Lock()
					defer mu.Unlock()
					if err := pr.WriteResponse(r); err != nil {
						return err
					}
					return pr.Flush()
				})
			}()
		}
		var all []error
		for range sources {
			if err := <-errs; err != nil && !errors.Is(err, context.Canceled) {
				all = append(all, err)
			}
		}
		return errors.Join(all...)
	}
	var recs []*observe.GetFlowsResponse
	var errs []error
	for _, s := range sources {
		if err := readSource(ctx, s, q, func(r *observe.GetFlowsResponse) error {
			recs = append(recs, r)
			return nil
		}); err != nil {
			errs = append(errs, err)
		}
	}
	sort.SliceStable(recs, func(i, j int) bool { return timeOf(recs[i]).Before(timeOf(recs[j])) })
	if f.Last > 0 && len(sources) > 1 {
		// Each node gave its last N: the last N overall are the newest of those.
		var flows int
		for i := len(recs) - 1; i >= 0; i-- {
			if recs[i].Flow != nil {
				flows++
			}
			if flows > f.Last {
				recs = recs[i+1:]
				break
			}
		}
	}
	for _, r := range recs {
		if err := pr.WriteResponse(r); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}

func readSource(ctx context.Context, s flowSource, q url.Values, fn func(*observe.GetFlowsResponse) error) error {
	rc, err := s.open(ctx, q)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := observe.Stream(ctx, rc, fn); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	return nil
}

func timeOf(r *observe.GetFlowsResponse) time.Time {
	switch {
	case r.Time != nil:
		return r.Time.Time
	case r.Flow != nil && r.Flow.Time != nil:
		return r.Flow.Time.Time
	}
	return time.Time{}
}

// serveObserve serves a ring of flows on a unix socket for `netpact observe` until the returned
// func stops it. A socket file left by a process that is gone is replaced; one a live process
// serves is left alone (the error says so).
func serveObserve(socket string, ring *observe.Ring, node string) (func(), error) {
	if err := os.MkdirAll(path.Dir(socket), 0o755); err != nil {
		return nil, fmt.Errorf("observe socket: %w", err)
	}
	if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("observe socket %s: another process serves it", socket)
	}
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("observe socket: %w", err)
	}
	// Root's alone, before anything is served on it (a process-wide umask would race with the
	// process's other goroutines creating files).
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("observe socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/flows", observe.Handler(ring, node))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		srv.Close()
		os.Remove(socket)
	}, nil
}
