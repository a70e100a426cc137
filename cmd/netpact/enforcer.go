package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/kubenode"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/policy"
)

func newEnforcerCommand() *cobra.Command {
	var (
		kubeconfig, nodeName, cniBin, cniConf, listen, pinPath, socket, mode, cgroupBase string
		denied403, uplink                                                                string
		proxyPort                                                                        uint16
		flowsListen, metricsListen                                                       string
		mtu                                                                              int
		limits                                                                           proxy.Limits
		cniWait                                                                          time.Duration
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
status as JSON; /flows the last 20,000 flow events (pods by name, the deciding rule and its
source), filtered with ?src=&dst=&since=&limit=; /metrics the datapath's counters by reason,
flow events by direction, map fill, sync duration, policies and endpoints.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodeName == "" {
				return errors.New("--node-name (or NODE_NAME) is required")
			}
			pm, err := policy.ParseMode(mode)
			if err != nil {
				return fmt.Errorf("--policy-enforcement-mode: %w", err)
			}
			cfg, err := restConfig(kubeconfig)
			if err != nil {
				return err
			}
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			dyn, err := dynamic.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("kubernetes client: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			if limit, ok := softMemoryLimit("/sys/fs/cgroup/memory.max"); ok {
				log.Info("Go soft memory limit: 90% of the container's", "bytes", limit)
			}
			if err := requireBPFFS(filepath.Dir(pinPath)); err != nil {
				return err
			}
			cgroup := ""
			if cgroupBase != "" {
				if cgroup, err = datapath.CgroupRoot(cgroupBase); err != nil {
					return fmt.Errorf("--cgroup-root: %w (mount the node's /sys/fs/cgroup there, or pass --cgroup-root= to leave Services to kube-proxy)", err)
				}
			}
			dp, err := datapath.Open(datapath.Options{PinPath: pinPath, Cgroup: cgroup})
			if err != nil {
				return fmt.Errorf("open datapath: %w", err)
			}
			// Close leaves the pins: the node keeps enforcing while the next enforcer starts.
			defer dp.Close()
			// Only this node's pods are compiled: the others need identities and addresses, not state.
			node := enforcer.New(nodeName, dp, policy.Options{Mode: pm, Node: nodeName})
			enf := kubenode.NewEnforcement(kubenode.EnforceConfig{NodeName: nodeName, Client: client, Dynamic: dyn,
				Enforcer: node, Mode: pm, Log: log})
			fr, err := dp.Flows()
			if err != nil {
				return err
			}
			defer fr.Close()
			// A pod's L7 rule towards a node cannot make the proxy fetch the node agent's
			// endpoints for it (the proxy connects to a host from the node's address).
			endpointPorts := map[uint16]bool{}
			for _, l := range []string{listen, flowsListen, metricsListen} {
				if _, port, err := net.SplitHostPort(l); err == nil {
					if n, err := strconv.ParseUint(port, 10, 16); err == nil {
						endpointPorts[uint16(n)] = true
					}
				}
			}
			refuse := func(dst netip.AddrPort) string {
				if endpointPorts[dst.Port()] && enf.IsNodeAddr(dst.Addr()) {
					return "the node agent's endpoints are not reached through the L7 proxy"
				}
				return ""
			}
			px, err := startNodeProxy(cmd.Context(), dp, node, log, proxyPort, limits, refuse, denied403, uplink)
			if err != nil {
				return err
			}
			defer px.Close()
			obs := kubenode.NewObserver(dp, node, enf)
			go obs.Run(fr)
			agent := kubenode.New(kubenode.Config{NodeName: nodeName, Client: client, CNIBinDir: cniBin,
				CNIConfDir: cniConf, MTU: mtu, AgentSocket: socket, Log: log})
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			errs := make(chan error, 3)
			go func() { errs <- enf.ServeCNI(ctx, socket, cniWait) }()
			go func() { errs <- enf.Run(ctx) }()
			// Every pod can reach the node's address: the endpoints answer the node itself, the
			// API server (pods/proxy), and bearer tokens allowed to get the path; /readyz is open.
			auth := &kubenode.EndpointAuth{Client: client, Trusted: enf.IsTrustedSource, Open: []string{"/readyz"}}
			if listen != "" {
				ln, err := net.Listen("tcp", listen)
				if err != nil {
					return fmt.Errorf("listen: %w", err)
				}
				srv := &http.Server{Handler: auth.Wrap(enforcerHandler(agent, enf, obs, flowsListen == "", metricsListen == "")),
					ReadHeaderTimeout: 5 * time.Second}
				go func() { _ = srv.Serve(ln) }()
				defer srv.Shutdown(context.Background())
			}
			// Flows and metrics on ports of their own, when asked.
			for _, l := range []struct{ addr, path string }{{flowsListen, "/flows"}, {metricsListen, "/metrics"}} {
				if l.addr == "" {
					continue
				}
				ln, err := net.Listen("tcp", l.addr)
				if err != nil {
					return fmt.Errorf("listen %s: %w", l.path, err)
				}
				mux := http.NewServeMux()
				mux.Handle(l.path, obs.Handler())
				srv := &http.Server{Handler: auth.Wrap(mux), ReadHeaderTimeout: 5 * time.Second}
				go func() { _ = srv.Serve(ln) }()
				defer srv.Shutdown(context.Background())
			}
			log.Info("enforcer starting", "node", nodeName, "mode", pm, "pinPath", pinPath, "cniSocket", socket)
			go func() { errs <- agent.Run(ctx) }()
			select {
			case err := <-errs:
				stop()
				return err
			case <-ctx.Done():
				return nil
			}
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (in-cluster configuration when empty)")
	cmd.Flags().StringVar(&nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name")
	cmd.Flags().StringVar(&cniBin, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	cmd.Flags().StringVar(&cniConf, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	cmd.Flags().StringVar(&listen, "listen", ":9879", "address of /readyz, /status, /routes, /flows and /metrics (empty: none); the DaemonSet gives the node's IP, not every interface")
	cmd.Flags().StringVar(&flowsListen, "flows-listen", "", "address of /flows when not on --listen")
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", "", "address of /metrics when not on --listen")
	cmd.Flags().IntVar(&mtu, "mtu", 0, "MTU of pod interfaces (the default route's when 0)")
	cmd.Flags().StringVar(&pinPath, "pin-path", datapath.DefaultPinPath, "bpffs directory of the datapath's pins (on the node's bpffs)")
	cmd.Flags().StringVar(&socket, "cni-socket", cniplugin.DefaultAgentSocket, "unix socket the CNI plugin's ADD waits on")
	cmd.Flags().DurationVar(&cniWait, "cni-wait", 15*time.Second, "how long an ADD waits for the pod's endpoint before it fails (kubelet retries)")
	cmd.Flags().StringVar(&cgroupBase, "cgroup-root", "/host/sys/fs/cgroup", "the node's /sys/fs/cgroup (its cgroup v2 mount, or unified/ below it): ClusterIP Services are translated at the socket for every process under it, before egress policy; empty: not translated")
	cmd.Flags().Uint16Var(&proxyPort, "http-proxy-port", 14001, "port of the L7 HTTP proxy on the node's 127.0.0.1 and ::1 (the datapath hands it the flows HTTP rules govern)")
	cmd.Flags().StringVar(&denied403, "http-403-msg", proxy.DefaultDeniedBody, "body of the 403 a request HTTP rules deny gets (CRLF appended), as Cilium's http-403-msg")
	cmd.Flags().IntVar(&limits.MaxConnsPerSource, "http-max-conns-per-pod", proxy.DefaultMaxConnsPerSource, "connections one source address (a pod) may have open through the L7 HTTP proxy at once, which the node's pods share; one more is reset")
	cmd.Flags().DurationVar(&limits.HeaderTimeout, "http-header-timeout", proxy.DefaultHeaderTimeout, "time a request's line and headers may take from their first byte (then 408)")
	cmd.Flags().DurationVar(&limits.ResponseHeaderTimeout, "http-response-header-timeout", proxy.DefaultResponseHeaderTimeout, "time the destination may take to send its response header after the request (then Envoy's 504 upstream request timeout)")
	cmd.Flags().IntVar(&limits.MaxHeaderBytes, "http-max-header-bytes", proxy.DefaultMaxHeaderBytes, "largest request line and headers, and response headers, the proxy reads (a request over it gets 431)")
	cmd.Flags().Int64Var(&limits.BufferedPerSource, "http-buffered-per-pod", proxy.DefaultBufferedPerSource, "bytes the proxy may hold for one source (unfinished request headers, HTTP/2 receive windows); more is refused with 503 or a reset")
	cmd.Flags().Int64Var(&limits.BufferedTotal, "http-buffered-total", proxy.DefaultBufferedTotal, "bytes the proxy may hold for all sources together")
	cmd.Flags().StringVar(&uplink, "uplink", "auto", "interface traffic from other nodes arrives on, where ingress L7 rules redirect it (auto: the default route's; empty: none, and such flows from other nodes are dropped)")
	cmd.Flags().StringVar(&mode, "policy-enforcement-mode", "default", "default, always or never (as Cilium's policy-enforcement-mode)")
	return cmd
}

// softMemoryLimit sets Go's soft memory limit to 90% of the container's (cgroup v2 memory.max),
// unless GOMEMLIMIT says otherwise: the collector works harder before the kernel kills the node's
// enforcer.
func softMemoryLimit(memoryMax string) (int64, bool) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	raw, err := os.ReadFile(memoryMax)
	if err != nil {
		return 0, false
	}
	max, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || max <= 0 { // "max": no limit
		return 0, false
	}
	limit := max / 10 * 9
	debug.SetMemoryLimit(limit)
	return limit, true
}

// requireBPFFS refuses to start without the node's bpffs: pins in a bpffs of the pod's own would
// die with the pod, and the node would stop enforcing on every restart.
func requireBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bpffs at %s: %w (mount the node's /sys/fs/bpf into the pod)", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not a bpffs: mount the node's /sys/fs/bpf into the pod", dir)
	}
	return nil
}

// enforcerHandler serves /readyz (wired and synced), /status, the agent's /routes, and the
// observer's /flows and /metrics.
func enforcerHandler(agent *kubenode.Agent, enf *kubenode.Enforcement, obs *kubenode.Observer, flows, metrics bool) http.Handler {
	mux := http.NewServeMux()
	if flows {
		mux.Handle("/flows", obs.Handler())
	}
	if metrics {
		mux.Handle("/metrics", obs.Handler())
	}
	agentMux := agent.Handler()
	mux.Handle("/routes", agentMux)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := enf.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		agentMux.ServeHTTP(w, r)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(enf.Status())
	})
	return mux
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (or pass --kubeconfig): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// startNodeProxy runs the node's L7 HTTP proxy: the routing that delivers what the datapath hands
// it, its listener (waiting for the previous enforcer's to go during a restart), the port and
// mark the datapath needs, and the uplink program for flows from other nodes.
func startNodeProxy(ctx context.Context, dp *datapath.Datapath, node *enforcer.Enforcer, log *slog.Logger, port uint16, limits proxy.Limits,
	refuse func(netip.AddrPort) string, body, uplink string) (*proxy.Proxy, error) {
	if limits.MaxConnsPerSource < 1 {
		return nil, fmt.Errorf("--http-max-conns-per-pod %d: must be at least 1", limits.MaxConnsPerSource)
	}
	if limits.MaxHeaderBytes < 16<<10 {
		// Pipelined requests already buffered (16 KiB) count against the next one's header.
		return nil, fmt.Errorf("--http-max-header-bytes %d: must be at least 16384", limits.MaxHeaderBytes)
	}
	if err := (proxy.Routes{Table: 2004, Priority: 9}).Ensure(); err != nil {
		return nil, err
	}
	opts := proxy.Options{Decide: node.DecideTCP, Mark: dp.ProxyMark(), DeniedBody: body, KeepSource: node.IsPod, Limits: limits, Refuse: refuse,
		OnRequest: func(r proxy.Request) { dp.PublishL7(r.Flow(node.State())) }}
	var px *proxy.Proxy
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		if px, err = proxy.Listen(port, opts); err == nil || time.Now().After(deadline) {
			break
		}
		log.Info("L7 proxy port busy, waiting for it", "port", port, "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return nil, err
	}
	if err := dp.SetProxyListeners(datapath.ParserHTTP, px.Listeners()); err != nil {
		px.Close()
		return nil, err
	}
	if err := dp.SetProxyPort(datapath.ParserHTTP, px.Port()); err != nil {
		px.Close()
		return nil, err
	}
	if uplink == "auto" {
		if uplink, err = defaultRouteLink(); err != nil {
			px.Close()
			return nil, fmt.Errorf("--uplink auto: %w", err)
		}
	}
	if uplink != "" {
		if err := dp.AttachUplink(uplink); err != nil {
			px.Close()
			return nil, err
		}
	}
	log.Info("L7 proxy listening", "port", px.Port(), "uplink", uplink)
	return px, nil
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
	return "", fmt.Errorf("no IPv4 default route")
}
