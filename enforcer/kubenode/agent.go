// Package kubenode is the enforcer's life on a Kubernetes node (the netpact DaemonSet): it installs
// netpact as the node's CNI plugin with a configuration over the node's pod CIDRs, turns on
// forwarding, and routes every other node's pod CIDRs to that node, from Node objects.
//
// The pods the plugin wires are recorded as cniplugin endpoints; LocalPods turns them into the
// enforcer's LocalPod, which is where the eBPF datapath attaches to their veths (Enforcer.Sync).
package kubenode

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
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/knftables"

	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/fileutil"
)

// Config is where the agent puts things on the node.
type Config struct {
	NodeName string
	Client   kubernetes.Interface
	// Binary is the netpact binary installed as the CNI plugin (this process's own when empty).
	Binary string
	// CNIBinDir and CNIConfDir are the node's CNI directories as this process sees them.
	CNIBinDir, CNIConfDir string
	// EndpointDir is where the plugin records pods (cniplugin.DefaultEndpointDir when empty).
	EndpointDir string
	// AgentSocket is the enforcer's socket the plugin's ADD waits on (none when empty).
	AgentSocket string
	// MTU of pod interfaces; the plugin picks the default route's when zero.
	MTU int
	// Resync repairs routes this often even without Node events; 30 s when zero.
	Resync time.Duration
	// Masquerade makes the node masquerade its pods' packets to hosts outside the cluster
	// (nftables table inet netpact; needs the nft command).
	Masquerade bool
	Log        *slog.Logger
}

// ConfFile is the CNI configuration the agent writes; its name sorts first so the runtime uses it.
const ConfFile = "05-netpact.conflist"

// Agent runs on one node.
type Agent struct {
	cfg Config

	mu      sync.Mutex
	ready   bool
	lastErr error
	routes  []Route
	nft     knftables.Interface
}

// New returns an agent; Run starts it.
func New(cfg Config) *Agent {
	if cfg.EndpointDir == "" {
		cfg.EndpointDir = cniplugin.DefaultEndpointDir
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Agent{cfg: cfg}
}

// Run installs the plugin, then keeps the configuration and routes in line with the Node objects
// until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.installBinary(); err != nil {
		return err
	}
	if err := EnableForwarding(); err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(a.cfg.Client, a.cfg.Resync)
	nodes := factory.Core().V1().Nodes()
	trigger := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, DeleteFunc: poke, UpdateFunc: func(_, n any) { poke(n) },
	}); err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced) {
		return fmt.Errorf("node informer: %w", ctx.Err())
	}
	tick := time.NewTicker(a.cfg.Resync)
	defer tick.Stop()
	for {
		list, err := nodes.Lister().List(labels.Everything())
		if err == nil {
			err = a.Sync(list)
		}
		a.mu.Lock()
		a.lastErr = err
		a.mu.Unlock()
		if err != nil {
			a.cfg.Log.Error("sync", "err", err)
		}
		select {
		case <-ctx.Done():
			factory.Shutdown()
			return nil
		case <-trigger:
		case <-tick.C:
		}
	}
}

// Sync writes this node's CNI configuration and routes the other nodes' pod CIDRs.
func (a *Agent) Sync(nodes []*corev1.Node) error {
	var self *corev1.Node
	for _, n := range nodes {
		if n.Name == a.cfg.NodeName {
			self = n
		}
	}
	if self == nil {
		return fmt.Errorf("node %q not found", a.cfg.NodeName)
	}
	cidrs := podCIDRs(self)
	if len(cidrs) == 0 {
		return fmt.Errorf("node %s has no pod CIDR yet (kube-controller-manager --allocate-node-cidrs)", self.Name)
	}
	changed, err := writeConf(a.cfg.CNIConfDir, a.Conf(cidrs))
	if err != nil {
		return err
	}
	if changed {
		a.cfg.Log.Info("CNI configuration written", "podCIDRs", cidrs)
	}
	want := DesiredRoutes(a.cfg.NodeName, nodes)
	if err := ReplaceRoutes(want); err != nil {
		return err
	}
	if a.cfg.Masquerade {
		if err := a.syncMasquerade(cidrs, nodes); err != nil {
			return err
		}
	}
	a.mu.Lock()
	a.ready, a.routes = true, want
	a.mu.Unlock()
	return nil
}

// Conf is the CNI configuration list for the node's pod CIDRs.
func (a *Agent) Conf(cidrs []netip.Prefix) []byte {
	var ranges [][]map[string]string
	for _, c := range cidrs {
		ranges = append(ranges, []map[string]string{{"subnet": c.String()}})
	}
	plugin := map[string]any{
		"type":        "netpact",
		"endpointDir": a.cfg.EndpointDir,
		"ipam":        map[string]any{"type": "host-local", "ranges": ranges, "dataDir": "/var/lib/cni/networks"},
	}
	if a.cfg.MTU != 0 {
		plugin["mtu"] = a.cfg.MTU
	}
	if a.cfg.AgentSocket != "" {
		plugin["agentSocket"] = a.cfg.AgentSocket
	}
	conf := map[string]any{"cniVersion": "1.0.0", "name": "netpact", "plugins": []any{plugin}}
	b, _ := json.MarshalIndent(conf, "", "  ")
	return append(b, '\n')
}

func podCIDRs(n *corev1.Node) []netip.Prefix {
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range raw {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// Route sends a pod CIDR to the node that owns it.
type Route struct {
	Node string
	Dst  netip.Prefix
	Via  netip.Addr
}

// DesiredRoutes routes each other node's pod CIDRs through its InternalIP of the same family.
func DesiredRoutes(self string, nodes []*corev1.Node) []Route {
	var out []Route
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		for _, c := range podCIDRs(n) {
			for _, addr := range n.Status.Addresses {
				if addr.Type != corev1.NodeInternalIP {
					continue
				}
				ip, err := netip.ParseAddr(addr.Address)
				if err == nil && ip.Is4() == c.Addr().Is4() {
					out = append(out, Route{Node: n.Name, Dst: c, Via: ip})
					break
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out
}

// ReplaceRoutes makes the node's netpact-owned gateway routes exactly want. A route that cannot
// be installed does not hold back the other nodes' routes or the deletion of stale ones: every
// step is tried and the failures are returned together.
func ReplaceRoutes(want []Route) error {
	var errs []error
	keep := map[string]bool{}
	for _, r := range want {
		// Kept even when it fails: a route there already, to a node still there, is not stale.
		keep[r.Dst.String()] = true
		nr := &netlink.Route{Dst: prefixNet(r.Dst), Gw: net.IP(r.Via.AsSlice()), Protocol: podnet.RouteProtocol}
		if err := netlink.RouteReplace(nr); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s (node %s): %w", r.Dst, r.Via, r.Node, err))
		}
	}
	have, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: podnet.RouteProtocol},
		netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		errs = append(errs, fmt.Errorf("list routes: %w", err))
	}
	for _, r := range have {
		if r.Gw == nil || r.Dst == nil {
			continue // pod routes of the CNI plugin
		}
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if !ok || keep[netip.PrefixFrom(p.Unmap(), ones).String()] {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete stale route %s: %w", r.Dst, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("replace routes: %w", err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// writeConf writes the configuration atomically when it differs from what is there.
func writeConf(dir string, conf []byte) (bool, error) {
	path := filepath.Join(dir, ConfFile)
	if old, err := os.ReadFile(path); err == nil && string(old) == string(conf) {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("cni conf dir: %w", err)
	}
	if err := fileutil.WriteAtomic(path, conf, 0o644); err != nil {
		return false, fmt.Errorf("write cni conf: %w", err)
	}
	return true, nil
}

// installBinary copies the netpact binary to the CNI bin dir as "netpact", atomically.
func (a *Agent) installBinary() error {
	src := a.cfg.Binary
	if src == "" {
		var err error
		if src, err = os.Executable(); err != nil {
			return fmt.Errorf("own binary: %w", err)
		}
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install cni plugin: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(a.cfg.CNIBinDir, 0o755); err != nil {
		return fmt.Errorf("install cni plugin: %w", err)
	}
	if err := fileutil.WriteAtomicFrom(filepath.Join(a.cfg.CNIBinDir, "netpact"), in, 0o755); err != nil {
		return fmt.Errorf("install cni plugin: %w", err)
	}
	return nil
}

// EnableForwarding turns on IPv4 and IPv6 forwarding; it writes only what is off, so that an
// enforcer whose /proc/sys is read-only (not privileged) starts when node-setup did it.
func EnableForwarding() error {
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == "1" {
			continue
		}
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding (%s): %w", f, err)
		}
	}
	return nil
}

// Handler serves /readyz (200 once the configuration and routes are in place and the last sync
// succeeded) and /routes (the routes the agent keeps, as JSON).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		ready, err := a.ready, a.lastErr
		a.mu.Unlock()
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		case !ready:
			http.Error(w, "not synced yet", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("/routes", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		routes := slices.Clone(a.routes)
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(routes)
	})
	return mux
}
