package kubenode

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/dnsproxy"
	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/policy"
)

// RunConfig configure the node agent of a Kubernetes node (`netpact enforcer`).
type RunConfig struct {
	NodeName string
	Kube     *rest.Config
	Mode     policy.EnforcementMode
	// PinPath is where the datapath pins, on the node's bpffs; CgroupBase the node's
	// /sys/fs/cgroup ("": Services are left to kube-proxy).
	PinPath, CgroupBase string
	// CNIBinDir, CNIConfDir and MTU are the CNI plugin's install; AgentSocket is where its ADD
	// waits, at most CNIWait.
	CNIBinDir, CNIConfDir, AgentSocket string
	MTU                                int
	CNIWait                            time.Duration
	// Listen serves /readyz, /status, /routes, and /flows and /metrics unless FlowsListen or
	// MetricsListen serve them apart; "" serves nothing.
	Listen, FlowsListen, MetricsListen string
	// HTTP, HTTPPort and Uplink are the L7 proxy's (enforcer.NodeOptions).
	HTTP     proxy.Options
	HTTPPort uint16
	Uplink   string
	// DNS, DNSPort and FQDN are the DNS proxy's and what the node learns for toFQDNs.
	DNS     dnsproxy.Options
	DNSPort uint16
	FQDN    enforcer.FQDNOptions
	// Masquerade: pods' packets to hosts outside the cluster leave from the node's address.
	Masquerade bool
	Log        *slog.Logger
}

// Run runs the node agent until ctx ends or a part of it fails: the node's runtime
// (enforcer.StartNode), the enforcement of the cluster's policies on the node's pods, the CNI
// plugin's socket, the node's wiring (routes, CNI install), and its endpoints.
func Run(ctx context.Context, cfg RunConfig) error {
	client, err := kubernetes.NewForConfig(cfg.Kube)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg.Kube)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if err := requireBPFFS(filepath.Dir(cfg.PinPath)); err != nil {
		return err
	}
	cgroup := ""
	if cfg.CgroupBase != "" {
		if cgroup, err = datapath.CgroupRoot(cfg.CgroupBase); err != nil {
			return fmt.Errorf("cgroup root: %w (mount the node's /sys/fs/cgroup there, or pass --cgroup-root= to leave Services to kube-proxy)", err)
		}
	}
	// The proxy starts before the enforcement exists (which needs the node's enforcer), and may
	// judge a request meanwhile: a node address is refused once the enforcement knows them.
	var enfp atomic.Pointer[Enforcement]
	endpointPorts := listenPorts(cfg.Listen, cfg.FlowsListen, cfg.MetricsListen)
	httpOpts := cfg.HTTP
	// A pod's L7 rule towards a node cannot make the proxy fetch the node agent's endpoints for
	// it (the proxy connects to a host from the node's address).
	httpOpts.Refuse = func(dst netip.AddrPort) string {
		if e := enfp.Load(); endpointPorts[dst.Port()] && (e == nil || e.IsNodeAddr(dst.Addr())) {
			return "the node agent's endpoints are not reached through the L7 proxy"
		}
		return ""
	}
	// Only this node's pods are compiled: the others need identities and addresses, not state.
	node, err := enforcer.StartNode(ctx, enforcer.NodeOptions{Name: cfg.NodeName,
		Datapath: datapath.Options{PinPath: cfg.PinPath, Cgroup: cgroup},
		Policy:   policy.Options{Mode: cfg.Mode, Node: cfg.NodeName},
		HTTP:     httpOpts, HTTPPort: cfg.HTTPPort, PortWait: 30 * time.Second,
		DNS: cfg.DNS, DNSPort: cfg.DNSPort, FQDN: cfg.FQDN,
		Routes: proxy.Routes{Table: 2004, Priority: 9}, Uplink: cfg.Uplink, Log: cfg.Log})
	if err != nil {
		return err
	}
	// Close leaves the pins: the node keeps enforcing while the next enforcer starts.
	defer node.Close()
	enf := NewEnforcement(EnforceConfig{NodeName: cfg.NodeName, Client: client, Dynamic: dyn,
		Enforcer: node.Enforcer, Mode: cfg.Mode, Log: cfg.Log})
	enfp.Store(enf)
	obs, err := NewObserver(node, enf, cfg.NodeName)
	if err != nil {
		return err
	}
	agent := New(Config{NodeName: cfg.NodeName, Client: client, CNIBinDir: cfg.CNIBinDir,
		CNIConfDir: cfg.CNIConfDir, MTU: cfg.MTU, AgentSocket: cfg.AgentSocket, Masquerade: cfg.Masquerade, Log: cfg.Log})
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	errs := make(chan error, 3)
	go func() { errs <- enf.ServeCNI(ctx, cfg.AgentSocket, cfg.CNIWait) }()
	go func() { errs <- enf.Run(ctx) }()
	closeServers, err := serveEndpoints(cfg, client, agent, enf, obs)
	if err != nil {
		return err
	}
	defer closeServers()
	cfg.Log.Info("enforcer starting", "node", cfg.NodeName, "mode", cfg.Mode, "pinPath", cfg.PinPath, "cniSocket", cfg.AgentSocket)
	go func() { errs <- agent.Run(ctx) }()
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
		return nil
	}
}

// listenPorts are the ports of the node agent's listen addresses.
func listenPorts(addrs ...string) map[uint16]bool {
	ports := map[uint16]bool{}
	for _, l := range addrs {
		if _, port, err := net.SplitHostPort(l); err == nil {
			if n, err := strconv.ParseUint(port, 10, 16); err == nil {
				ports[uint16(n)] = true
			}
		}
	}
	return ports
}

// serveEndpoints serves the node agent's endpoints. Every pod can reach the node's address: the
// endpoints answer the node itself, the API server (pods/proxy), and bearer tokens allowed to get
// the path; /readyz is open. Flows and metrics are on ports of their own when asked.
func serveEndpoints(cfg RunConfig, client kubernetes.Interface, agent *Agent, enf *Enforcement, obs *Observer) (func(), error) {
	auth := &EndpointAuth{Client: client, Trusted: enf.IsTrustedSource, Open: []string{"/readyz"}}
	var servers []*http.Server
	closeAll := func() {
		// A follower of /flows streams until its client goes: shutdown waits a moment for the
		// requests in flight, then closes what is left, so the node's own Close still runs.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, s := range servers {
			if err := s.Shutdown(ctx); err != nil {
				s.Close()
			}
		}
	}
	serve := func(addr, what string, h http.Handler) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", what, err)
		}
		srv := &http.Server{Handler: auth.Wrap(h), ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, srv)
		go func() { _ = srv.Serve(ln) }()
		return nil
	}
	if cfg.Listen != "" {
		if err := serve(cfg.Listen, "endpoints", endpointsHandler(agent, enf, obs, cfg.FlowsListen == "", cfg.MetricsListen == "")); err != nil {
			return nil, err
		}
	}
	for _, l := range []struct{ addr, path string }{{cfg.FlowsListen, "/flows"}, {cfg.MetricsListen, "/metrics"}} {
		if l.addr == "" {
			continue
		}
		mux := http.NewServeMux()
		mux.Handle(l.path, obs.Handler())
		if err := serve(l.addr, l.path, mux); err != nil {
			closeAll()
			return nil, err
		}
	}
	return closeAll, nil
}

// endpointsHandler serves /readyz (wired and synced), /status, the agent's /routes, and the
// observer's /flows and /metrics.
func endpointsHandler(agent *Agent, enf *Enforcement, obs *Observer, flows, metrics bool) http.Handler {
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
