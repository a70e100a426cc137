//go:build linux

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/cobra"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/dnsproxy"
	"github.com/netpact/netpact/enforcer/kubenode"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/policy"
)

func newEnforcerCommand() *cobra.Command {
	var (
		c               kubenode.RunConfig
		kube            *clusterFlags
		mode, denied403 string
		limits          proxy.Limits
		rejectCode      string
		minTTL          int
	)
	cmd := &cobra.Command{
		Use:   "enforcer",
		Short: "Run the node agent of a Kubernetes node (the netpact DaemonSet)",
		Long: `enforcer runs on every node of a cluster whose CNI is netpact. It installs its own binary
as the CNI plugin "netpact" with a configuration over the node's IPv4 and IPv6 pod CIDRs, turns
on forwarding, and routes every other node's pod CIDRs to that node's InternalIP, following the
Node objects.

It enforces the cluster's NetworkPolicy, CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
objects on the node's pods through the eBPF datapath (pins under --pin-path, on the node's
bpffs so that they outlive this process), watching Pods, Namespaces, Nodes and the policies.
The plugin's ADD waits on --cni-socket until the new pod's endpoint is programmed. What the node
enforces is written to the NodePolicyStatus object named after the node.

/readyz answers 200 once the node is wired and the first sync is done; /status is the node's
status as JSON; /flows the node's last 20,000 flows as Hubble's GetFlowsResponse stream
(NDJSON), filtered as hubble observe filters (?verdict=&from-ip=&port=&since=&follow=1 ...;
sync=1 first waits until every event the datapath wrote before the request was read);
/metrics the node's metrics (docs/metrics.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.NodeName == "" {
				return errors.New("--node-name (or NODE_NAME) is required")
			}
			var err error
			if c.Mode, err = policy.ParseMode(mode); err != nil {
				return fmt.Errorf("--policy-enforcement-mode: %w", err)
			}
			if limits.MaxConnsPerSource < 1 {
				return fmt.Errorf("--http-max-conns-per-pod %d: must be at least 1", limits.MaxConnsPerSource)
			}
			if limits.MaxHeaderBytes < 16<<10 {
				// Pipelined requests already buffered (16 KiB) count against the next one's header.
				return fmt.Errorf("--http-max-header-bytes %d: must be at least 16384", limits.MaxHeaderBytes)
			}
			if c.Kube, err = kube.restConfig(); err != nil {
				return err
			}
			c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			if limit, ok := softMemoryLimit("/sys/fs/cgroup/memory.max"); ok {
				c.Log.Info("Go soft memory limit: 90% of the container's", "bytes", limit)
			}
			c.HTTP = proxy.Options{DeniedBody: denied403, Limits: limits}
			switch rejectCode {
			case "refused":
				c.DNS.Reject = dns.RcodeRefused
			case "nameError":
				c.DNS.Reject = dns.RcodeNameError
			default:
				return fmt.Errorf("--tofqdns-dns-reject-response-code %q: want refused or nameError", rejectCode)
			}
			if minTTL < 0 {
				return fmt.Errorf("--tofqdns-min-ttl %d: must not be negative", minTTL)
			}
			c.FQDN.MinTTL = time.Duration(minTTL) * time.Second
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return kubenode.Run(ctx, c)
		},
	}
	f := cmd.Flags()
	kube = addDaemonClusterFlags(f)
	f.StringVar(&c.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name")
	f.StringVar(&c.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	f.StringVar(&c.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	f.StringVar(&c.Listen, "listen", ":9879", "address of /readyz, /status, /routes, /flows and /metrics (empty: none); the DaemonSet gives the node's IP, not every interface")
	f.StringVar(&c.FlowsListen, "flows-listen", "", "address of /flows when not on --listen")
	f.StringVar(&c.MetricsListen, "metrics-listen", "", "address of /metrics when not on --listen")
	f.BoolVar(&c.Masquerade, "masquerade", true, "masquerade pods' packets to hosts outside the cluster (pod CIDRs and node addresses excepted) behind the node's address, with nftables (table inet netpact)")
	f.IntVar(&c.MTU, "mtu", 0, "MTU of pod interfaces (the default route's when 0)")
	f.StringVar(&c.PinPath, "pin-path", datapath.DefaultPinPath, "bpffs directory of the datapath's pins (on the node's bpffs)")
	f.StringVar(&c.AgentSocket, "cni-socket", cniplugin.DefaultAgentSocket, "unix socket the CNI plugin's ADD waits on")
	f.DurationVar(&c.CNIWait, "cni-wait", 15*time.Second, "how long an ADD waits for the pod's endpoint before it fails (kubelet retries)")
	f.StringVar(&c.CgroupBase, "cgroup-root", "/host/sys/fs/cgroup", "the node's /sys/fs/cgroup (its cgroup v2 mount, or unified/ below it): ClusterIP Services are translated at the socket for every process under it, before egress policy; empty: not translated")
	f.Uint16Var(&c.HTTPPort, "http-proxy-port", 14001, "port of the L7 HTTP proxy on the node's 127.0.0.1 and ::1 (the datapath hands it the flows HTTP rules govern)")
	f.StringVar(&denied403, "http-403-msg", proxy.DefaultDeniedBody, "body of the 403 a request HTTP rules deny gets (CRLF appended), as Cilium's http-403-msg")
	f.IntVar(&limits.MaxConnsPerSource, "http-max-conns-per-pod", proxy.DefaultMaxConnsPerSource, "connections one source address (a pod) may have open through the L7 HTTP proxy at once, which the node's pods share; one more is reset")
	f.DurationVar(&limits.HeaderTimeout, "http-header-timeout", proxy.DefaultHeaderTimeout, "time a request's line and headers may take from their first byte (then 408)")
	f.DurationVar(&limits.ResponseHeaderTimeout, "http-response-header-timeout", proxy.DefaultResponseHeaderTimeout, "time the destination may take to send its response header after the request (then Envoy's 504 upstream request timeout)")
	f.IntVar(&limits.MaxHeaderBytes, "http-max-header-bytes", proxy.DefaultMaxHeaderBytes, "largest request line and headers, and response headers, the proxy reads (a request over it gets 431)")
	f.Int64Var(&limits.BufferedPerSource, "http-buffered-per-pod", proxy.DefaultBufferedPerSource, "bytes the proxy may hold for one source (unfinished request headers, HTTP/2 receive windows); more is refused with 503 or a reset")
	f.Int64Var(&limits.BufferedTotal, "http-buffered-total", proxy.DefaultBufferedTotal, "bytes the proxy may hold for all sources together")
	f.StringVar(&c.Uplink, "uplink", "auto", "interface traffic from other nodes arrives on, where ingress L7 rules redirect it (auto: the default route's; empty: none, and such flows from other nodes are dropped)")
	f.Uint16Var(&c.DNSPort, "tofqdns-proxy-port", 14053, "port of the DNS proxy on the node's 127.0.0.1 and ::1, UDP and TCP (the datapath hands it the queries dns rules govern; fixed, so that a restarted enforcer takes over the port the pinned datapath names)")
	f.StringVar(&rejectCode, "tofqdns-dns-reject-response-code", "refused", "rcode of a DNS query no dns rule allows: refused or nameError (NXDOMAIN), as Cilium's flag")
	f.IntVar(&minTTL, "tofqdns-min-ttl", 0, "least time in seconds an address learned from a DNS answer stays allowed for toFQDNs (0: the answer's TTL, Cilium's default since 1.13)")
	f.IntVar(&c.FQDN.MaxAddrsPerName, "tofqdns-endpoint-max-ip-per-hostname", enforcer.DefaultMaxAddrsPerName, "addresses kept per DNS name (node-wide); over it those expiring first go, but none an open connection uses")
	f.IntVar(&c.FQDN.MaxNamesPerAddr, "tofqdns-max-names-per-ip", enforcer.DefaultMaxNamesPerAddr, "DNS names kept per learned address; over it the name expiring first is forgotten for that address")
	f.IntVar(&c.FQDN.MaxAddrs, "tofqdns-max-addrs", enforcer.DefaultMaxAddrs, "addresses learned from DNS answers the node keeps in all (ipcache entries); an answer over it gets SERVFAIL")
	f.StringVar(&c.FQDN.StatePath, "tofqdns-state-file", "/var/run/netpact/fqdn-cache.json", "where learned DNS names are kept across enforcer restarts")
	f.IntVar(&c.DNS.PerSource, "dnsproxy-concurrency-per-pod", dnsproxy.DefaultPerSource, "DNS queries one pod may have in flight in the DNS proxy; more get SERVFAIL")
	f.IntVar(&c.DNS.Total, "dnsproxy-concurrency-limit", dnsproxy.DefaultTotal, "DNS queries all pods may have in flight in the DNS proxy; more get SERVFAIL")
	f.StringVar(&mode, "policy-enforcement-mode", "default", "default, always or never (as Cilium's policy-enforcement-mode)")
	return cmd
}
