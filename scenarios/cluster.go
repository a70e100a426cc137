package scenarios

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"

	"github.com/netpact/netpact/deploy"
	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// ErrNotEnforced is what a backend answers to policies it cannot enforce yet; the runner reports
// such a step as pending, with the reason.
var ErrNotEnforced = errors.New("this backend does not enforce policies yet")

// ClusterOptions configure a Kubernetes cluster backend.
type ClusterOptions struct {
	Config *rest.Config
	Client kubernetes.Interface
	// ProbeTimeout bounds each probe's connection attempt; 3 s when zero.
	ProbeTimeout time.Duration
	// ProbeImage is the netpact image: the pods a scenario lists that no manifest made are
	// created from it (serving their ports), and pods without probe tools get it as an
	// ephemeral container to probe from. Without it such pods are an error.
	ProbeImage string
	// EnforceTimeout bounds the wait for every node to enforce a step's policies; 60 s when zero.
	EnforceTimeout time.Duration
	// Kind is the kind cluster's name: a scenario's external hosts run as containers on its
	// Docker network (kind.StartExternal). Without it, scenarios with externals are refused.
	Kind string
	// Retain keeps what the run made and applied (namespaces, pods, Services, policies, external
	// hosts, CoreDNS changes) when it stops, for debugging (Made lists it). A later run's Start
	// removes the policies and undoes the cluster changes; the namespaces are the user's to delete.
	Retain bool
}

// Cluster is a Backend on a running Kubernetes cluster (kind): the scenario's pods are pods of the
// cluster (by name, or by their labels, every replica), and probes run curl, nc and psql inside
// the source pod through the API server's exec (client-go remotecommand), as kubectl exec does.
// Its workloads come from manifests applied beforehand; a step's policies are applied through the
// API server and enforced by the netpact enforcers before its probes run.
type Cluster struct {
	opts  ClusterOptions
	sc    *Scenario
	pods  map[string][]corev1.Pod
	nodes []corev1.Node

	mu   sync.Mutex
	last map[string]string // cell -> what the last probe printed, for failing cells

	applier *kubeapply.Applier
	dyn     dynamic.Interface
	applied map[policy.Key]appliedPolicy

	createdNS, createdPods, createdSvcs []string
	nsLabels, podLabels                 map[string]map[string]string
	stepStart                           time.Time
	// minVersion is the resourceVersion of the last label change: every node must have seen it.
	minVersion int64
	// minServicesVersion is the newest resourceVersion of the scenario's Services' EndpointSlices:
	// every node must translate them before a probe.
	minServicesVersion int64
	// caPEM is the CA the external hosts' certificates are from.
	caPEM string
	// dnsChanged says the run changed CoreDNS's Corefile.
	dnsChanged bool
	// enforcerNS is the enforcer DaemonSet's namespace, found once per run (enforcers).
	enforcerNS string
}

// NewCluster returns a cluster backend.
func NewCluster(opts ClusterOptions) *Cluster {
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = 3 * time.Second
	}
	if opts.EnforceTimeout == 0 {
		opts.EnforceTimeout = 60 * time.Second
	}
	return &Cluster{opts: opts, last: map[string]string{}, applied: map[policy.Key]appliedPolicy{}}
}

// Start finds the scenario's pods in the cluster and returns the cluster as the engine sees it.
func (c *Cluster) Start(sc *Scenario) (*policy.Cluster, error) {
	ctx := context.Background()
	c.sc = sc
	c.pods = map[string][]corev1.Pod{}
	if err := c.supports(ctx, sc); err != nil {
		return nil, err
	}
	nodes, err := c.opts.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	c.nodes = nodes.Items
	// What a killed run left enforced, or changed.
	if err := c.cleanPolicies(); err != nil {
		return nil, fmt.Errorf("remove earlier scenario policies: %w", err)
	}
	if err := c.undoCluster(); err != nil {
		return nil, fmt.Errorf("undo an earlier scenario's changes: %w", err)
	}
	pc := &policy.Cluster{}
	for _, n := range c.nodes {
		pn := policy.Node{Name: n.Name, Labels: n.Labels}
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == corev1.NodeInternalIP {
				pn.IPs = append(pn.IPs, ip)
			}
		}
		pc.Nodes = append(pc.Nodes, pn)
	}
	if err := c.ensureNamespaces(ctx, sc); err != nil {
		return nil, err
	}
	if err := c.ensureServices(ctx, sc); err != nil {
		return nil, err
	}
	c.nsLabels, c.podLabels = map[string]map[string]string{}, map[string]map[string]string{}
	pc.Namespaces = sc.namespaces()
	for _, ns := range sc.Namespaces {
		c.nsLabels[ns.Name] = maps.Clone(ns.Labels)
	}
	// The pods no manifest made: created from the probe image, then waited for.
	var created []string
	for _, p := range sc.Pods {
		if c.exists(ctx, p) {
			continue
		}
		if err := c.createPodRetrying(ctx, p); err != nil {
			return nil, err
		}
		created = append(created, p.Key())
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := c.waitReady(wctx, created); err != nil {
		return nil, err
	}
	// Before the pods are found: restarting CoreDNS gives its pods new addresses.
	if err := c.prepareCluster(sc, created); err != nil {
		return nil, err
	}
	for _, p := range sc.Pods {
		found, err := c.findPods(ctx, p)
		if err != nil {
			return nil, err
		}
		c.pods[p.Key()] = found
		c.podLabels[p.Key()] = maps.Clone(p.Labels)
		// Every node must have seen these pods, addresses included, before a probe.
		for _, f := range found {
			if v, err := strconv.ParseInt(f.ResourceVersion, 10, 64); err == nil {
				c.minVersion = max(c.minVersion, v)
			}
		}
		first := found[0]
		var ips []netip.Addr
		for _, ip := range first.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				ips = append(ips, a)
			}
		}
		pc.Endpoints = append(pc.Endpoints, p.endpoint(first.Spec.NodeName, ips))
	}
	if err := c.waitServiceEndpoints(wctx, sc); err != nil {
		return nil, err
	}
	return pc, nil
}

// supports fails for what a scenario asks that this backend cannot give, rather than run the
// scenario without it and pass.
func (c *Cluster) supports(_ context.Context, sc *Scenario) error {
	var problems []string
	if len(sc.Externals) > 0 && c.opts.Kind == "" {
		problems = append(problems, "externals need a kind cluster: their hosts run as containers on its Docker "+
			"network (the cluster backend was given no kind cluster name)")
	}
	if len(sc.Externals) > 0 && c.opts.ProbeImage == "" {
		problems = append(problems, "externals need the netpact image (ProbeImage): their hosts run netpact external-server")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// prepareCluster gives the cluster what the scenario asks beyond pods and policies, in this
// order: external hosts, their names in CoreDNS (checked from a pod the run made, while no
// policy is enforced), the enforcers' mode.
func (c *Cluster) prepareCluster(sc *Scenario, created []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if len(sc.Externals) > 0 {
		if err := c.startExternals(sc); err != nil {
			return err
		}
	}
	if len(sc.names()) > 0 && (len(sc.Externals) > 0 || sc.DNSTTL != nil) {
		block := hostsBlock(sc)
		if err := c.setCorefile(ctx, func(s string) (string, error) { return withHosts(s, block) }); err != nil {
			return err
		}
		if len(created) > 0 {
			ns, name, _ := strings.Cut(created[0], "/")
			pod, err := c.opts.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("pod %s: %w", created[0], err)
			}
			if err := c.checkNames(sc, *pod); err != nil {
				return err
			}
		}
	}
	if sc.EnforcementMode != "" {
		if err := c.setEnforcerMode(ctx, sc.EnforcementMode, true); err != nil {
			return fmt.Errorf("enforcement mode %s: %w", sc.EnforcementMode, err)
		}
	}
	return nil
}

// enforcerMode is the --policy-enforcement-mode of the netpact DaemonSet's enforcer container.
func (c *Cluster) enforcerMode(ctx context.Context) (EnforcementMode, error) {
	ds, err := deploy.Enforcer(ctx, c.opts.Client)
	if err != nil {
		return "", fmt.Errorf("read the enforcers' mode: %w", err)
	}
	for _, ctr := range ds.Spec.Template.Spec.Containers {
		if ctr.Name != deploy.EnforcerContainer {
			continue
		}
		for _, arg := range ctr.Args {
			if v, ok := strings.CutPrefix(arg, "--policy-enforcement-mode="); ok {
				mode, err := policy.ParseMode(v)
				return EnforcementMode(mode), err
			}
		}
		return EnforcementMode(policy.ModeDefault), nil
	}
	return "", errors.New("DaemonSet kube-system/netpact has no enforcer container")
}

// waitServiceEndpoints waits until each scenario Service with pods behind it has ready endpoints
// in its EndpointSlices, and makes their newest version the one every node must translate.
func (c *Cluster) waitServiceEndpoints(ctx context.Context, sc *Scenario) error {
	for _, svc := range sc.Services {
		if len(svc.Ports) == 0 {
			continue
		}
		if pods, _ := sc.backends(&svc, svc.Ports[0], nil); len(pods) == 0 {
			continue
		}
		for {
			list, err := c.opts.Client.DiscoveryV1().EndpointSlices(svc.Namespace).List(ctx,
				metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc.Name})
			ready := 0
			if err == nil {
				for _, s := range list.Items {
					for _, ep := range s.Endpoints {
						if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
							ready++
						}
					}
					if v, err := strconv.ParseInt(s.ResourceVersion, 10, 64); err == nil {
						c.minServicesVersion = max(c.minServicesVersion, v)
					}
				}
			}
			if ready > 0 {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("service %s has no ready endpoint: %w", svc.Key(), ctx.Err())
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return nil
}

// exists says whether a pod of that name, or one with the scenario pod's labels, is there.
func (c *Cluster) exists(ctx context.Context, p Pod) bool {
	api := c.opts.Client.CoreV1().Pods(p.Namespace)
	if _, err := api.Get(ctx, p.Name, metav1.GetOptions{}); err == nil {
		return true
	}
	if len(p.Labels) == 0 {
		return false
	}
	list, err := api.List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(p.Labels).String()})
	return err == nil && len(list.Items) > 0
}

// createPodRetrying creates a pod, waiting for a new namespace's default service account.
func (c *Cluster) createPodRetrying(ctx context.Context, p Pod) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.createPod(ctx, p)
		if err == nil || !strings.Contains(err.Error(), "serviceaccount") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// findPods is the pod of that name, or else every ready pod carrying the scenario pod's labels.
// The pods must carry those labels: the prediction is made from them.
func (c *Cluster) findPods(ctx context.Context, p Pod) ([]corev1.Pod, error) {
	api := c.opts.Client.CoreV1().Pods(p.Namespace)
	var found []corev1.Pod
	if pod, err := api.Get(ctx, p.Name, metav1.GetOptions{}); err == nil {
		found = []corev1.Pod{*pod}
	} else if len(p.Labels) > 0 {
		list, err := api.List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(p.Labels).String()})
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", p.Key(), err)
		}
		found = list.Items
	}
	var ready []corev1.Pod
	for _, pod := range found {
		if pod.DeletionTimestamp == nil && pod.Status.Phase == corev1.PodRunning && podIsReady(&pod) {
			ready = append(ready, pod)
		}
	}
	if len(ready) == 0 {
		return nil, fmt.Errorf("scenario pod %s: no ready pod named %s or labeled %s in namespace %s", p.Key(), p.Name,
			labels.SelectorFromSet(p.Labels), p.Namespace)
	}
	for _, pod := range ready {
		for k, v := range p.Labels {
			if pod.Labels[k] != v {
				return nil, fmt.Errorf("scenario pod %s: cluster pod %s lacks label %s=%s", p.Key(), pod.Name, k, v)
			}
		}
	}
	sort.Slice(ready, func(i, j int) bool { return ready[i].Name < ready[j].Name })
	return ready, nil
}

func podIsReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Pods are the cluster pods a scenario pod stands for.
func (c *Cluster) Pods(key string) []corev1.Pod { return c.pods[key] }

// BeginStep forgets the previous step's probe output.
func (c *Cluster) BeginStep() {
	c.mu.Lock()
	c.last = map[string]string{}
	c.stepStart = time.Now().Add(-time.Second)
	c.mu.Unlock()
}

// Flows are, for a cluster, what the probe commands of the given cells printed, and the flow
// events the enforcers of the source's and the destination's nodes report between the two pods
// since the step began (with the rule that decided).
func (c *Cluster) Flows(cells []Cell) []string {
	c.mu.Lock()
	last := maps.Clone(c.last)
	since := c.stepStart
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), flowsTimeout)
	enforcers, _ := c.enforcers(ctx) // none: the probes' output alone
	cancel()
	var out []string
	for _, cell := range cells {
		if s, ok := last[cell.String()]; ok {
			out = append(out, cell.String()+": "+s)
		}
		from, to := c.pods[cell.From], c.pods[cell.To]
		if len(from) == 0 {
			continue
		}
		for _, dst := range to {
			nodes := []string{from[0].Spec.NodeName}
			if dst.Spec.NodeName != nodes[0] {
				nodes = append(nodes, dst.Spec.NodeName)
			}
			for _, n := range nodes {
				for _, line := range c.nodeFlows(enforcers[n], from[0].Status.PodIP, dst.Status.PodIP, since) {
					out = append(out, fmt.Sprintf("%s: node %s: %s", cell, n, line))
				}
			}
		}
	}
	return out
}

// Made is what the run created: namespaces, and pods and Services as namespace/name.
func (c *Cluster) Made() (namespaces, pods, services []string) {
	return c.createdNS, c.createdPods, c.createdSvcs
}

// Stop deletes the policies the scenario applied and waits until the nodes dropped them, and
// undoes the run's external hosts, CoreDNS names and enforcement mode; the workloads stay: they
// belong to whoever applied them.
func (c *Cluster) Stop() error {
	if c.opts.Retain {
		return nil
	}
	err := c.cleanPolicies()
	err = errors.Join(err, c.undoCluster())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return errors.Join(err, c.removeCreated(ctx))
}

// cleanPolicies removes every policy a scenario run applied and waits until no node enforces it.
func (c *Cluster) cleanPolicies() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.EnforceTimeout)
	defer cancel()
	gone, err := c.removePolicies(ctx)
	if err != nil {
		return err
	}
	return c.waitEnforced(ctx, gone)
}

// target is where a probe connects and what it calls the destination.
type target struct {
	host string
	port uint16
}

// Probe runs the cell's probe from the first pod of the source to every pod of the destination
// (or once through the service); replicas that disagree make a "mixed" outcome.
func (c *Cluster) Probe(cell Cell) Outcome {
	from := c.pods[cell.From]
	if len(from) == 0 {
		return "error"
	}
	src := from[0]
	targets, err := c.targets(cell, src)
	if err != nil {
		c.record(cell, err.Error())
		return "error"
	}
	var outcomes []Outcome
	var notes []string
	for _, t := range targets {
		o, note := c.probeOne(src, cell, t)
		outcomes = append(outcomes, o)
		notes = append(notes, fmt.Sprintf("%s from %s (%s) to %s: %s", o, src.Name, src.Spec.NodeName,
			t, note))
	}
	c.record(cell, strings.Join(notes, "; "))
	if cell.Service != "" {
		return combineSet(outcomes)
	}
	return combine(outcomes)
}

func (t target) String() string {
	if strings.Contains(t.host, ":") {
		return "[" + t.host + "]:" + strconv.Itoa(int(t.port))
	}
	return t.host + ":" + strconv.Itoa(int(t.port))
}

func (c *Cluster) record(cell Cell, s string) {
	c.mu.Lock()
	c.last[cell.String()] = s
	c.mu.Unlock()
}

// targets lists the addresses a cell's probe connects to: each destination pod's IPv4 address,
// or the service's ClusterIP, another node's address with the NodePort, or the service's DNS name.
func (c *Cluster) targets(cell Cell, src corev1.Pod) ([]target, error) {
	if cell.External != "" {
		_, i, ok := c.sc.external(cell.External)
		if !ok {
			return nil, fmt.Errorf("no external host %s", cell.External)
		}
		v4, _ := ExternalAddrs(i)
		return []target{{host: v4.String(), port: cell.Port.Port}}, nil
	}
	if cell.Service == "" {
		var out []target
		for _, p := range c.pods[cell.To] {
			out = append(out, target{host: p.Status.PodIP, port: cell.Port.Port})
		}
		return out, nil
	}
	ns, name, _ := strings.Cut(cell.Service, "/")
	svc, err := c.opts.Client.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", cell.Service, err)
	}
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if uint16(svc.Spec.Ports[i].Port) == cell.ServicePort.Port {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		return nil, fmt.Errorf("service %s has no port %d", cell.Service, cell.ServicePort.Port)
	}
	switch cell.Via {
	case "nodePort":
		if sp.NodePort == 0 {
			return nil, fmt.Errorf("service %s port %d has no nodePort", cell.Service, sp.Port)
		}
		// Another node than the source's, so the NodePort is reached across nodes.
		for _, n := range c.nodes {
			if n.Name == src.Spec.NodeName {
				continue
			}
			for _, a := range n.Status.Addresses {
				if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == corev1.NodeInternalIP && ip.Is4() {
					return []target{{host: ip.String(), port: uint16(sp.NodePort)}}, nil
				}
			}
		}
		return nil, errors.New("no other node with an IPv4 InternalIP")
	case "dns":
		port := uint16(sp.Port)
		if svc.Spec.ClusterIP == corev1.ClusterIPNone {
			port = uint16(sp.TargetPort.IntValue())
			if port == 0 {
				port = uint16(sp.Port)
			}
		}
		return []target{{host: name + "." + ns + ".svc.cluster.local", port: port}}, nil
	default:
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			return nil, fmt.Errorf("service %s has no cluster IP", cell.Service)
		}
		return []target{{host: svc.Spec.ClusterIP, port: uint16(sp.Port)}}, nil
	}
}

// externalRequest makes a probe request an HTTPS GET / to the cell's external host, trusting the
// run's CA: to its address for the external's first name (or the address itself), or, for a
// lookup-then-connect cell, to what the name resolves to in the pod.
func (c *Cluster) externalRequest(r *probeagent.Request, cell Cell) {
	e, _, _ := c.sc.external(cell.External)
	r.TLS, r.CA, r.Want, r.ServerName = true, c.caPEM, probeagent.ExternalBody(cell.External), r.Host
	if e != nil && len(e.Names) > 0 {
		r.ServerName = e.Names[0]
	}
	if cell.Resolve != nil {
		r.Lookup, r.Name, r.ServerName = true, cell.Resolve.Lookup, strings.TrimSuffix(cell.Resolve.Lookup, ".")
	}
}

// probeOne runs one command in the source pod: curl for HTTP, psql towards PostgreSQL, nc for
// other TCP. It returns the outcome and a short note of what the command printed.
func (c *Cluster) probeOne(src corev1.Pod, cell Cell, t target) (Outcome, string) {
	secs := strconv.Itoa(max(1, int(c.opts.ProbeTimeout.Round(time.Second).Seconds())))
	to, _ := c.sc.pod(cell.To)
	var cmd []string
	var kind string
	switch {
	case cell.External != "":
		return "error", "a probe to an external host needs the netpact probe container (ProbeImage)"
	case cell.Kafka != "":
		return "error", "a Kafka probe needs the netpact probe container (ProbeImage)"
	case cell.Lookup != "":
		// The pod's resolver (resolv.conf) asked once: dig exits 0 when a server answered, and
		// prints the answer's rcode (status: NOERROR, NXDOMAIN, REFUSED...).
		kind = "dig"
		cmd = []string{"dig", "+time=" + secs, "+tries=1", "+search", cell.Lookup}
	case cell.Port.Protocol != policy.ProtoTCP:
		return "unsupported", "probes with the pod's own tools (curl, nc, psql) are TCP only: UDP and SCTP need " +
			"the netpact probe container (ProbeImage)"
	case cell.HTTP:
		kind = "curl"
		host := t.host
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		cmd = []string{"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--connect-timeout", secs,
			"-m", strconv.Itoa(2 * (int(c.opts.ProbeTimeout.Seconds()) + 1)), "-X", cell.method(),
			fmt.Sprintf("http://%s:%d%s", host, t.port, cell.path())}
	case to != nil && to.Workload == "postgres":
		kind = "psql"
		cmd = []string{"psql", fmt.Sprintf("host=%s port=%d connect_timeout=%s", t.host, t.port, secs),
			"-tAc", "select 1"}
	default:
		kind = "nc"
		cmd = []string{"nc", "-z", "-v", "-w", secs, t.host, strconv.Itoa(int(t.port))}
	}
	stdout, stderr, code, err := c.execIn(src, "", nil, cmd)
	out := strings.TrimSpace(stdout + " " + stderr)
	note := fmt.Sprintf("%s exit %d %q", strings.Join(cmd, " "), code, out)
	if err != nil {
		return "error", note + ": " + err.Error()
	}
	lower := strings.ToLower(out)
	switch kind {
	case "curl":
		switch code {
		case 0:
			return Outcome("http-" + strings.TrimSpace(stdout)), note
		case 28:
			return Timeout, note
		case 7:
			if strings.Contains(lower, "refused") {
				return Refused, note
			}
			return Timeout, note
		}
	case "psql":
		switch {
		case code == 0 && strings.TrimSpace(stdout) == "1":
			return Allow, note
		case strings.Contains(lower, "timeout expired"):
			return Timeout, note
		case strings.Contains(lower, "refused"):
			return Refused, note
		}
	case "dig":
		switch {
		case code == 0:
			return digOutcome(stdout, cell.ExactRCode), note
		case strings.Contains(lower, "refused"):
			return Refused, note
		case code == 9 || strings.Contains(lower, "timed out"):
			return Timeout, note
		}
	case "nc":
		switch {
		case code == 0:
			return Allow, note
		case strings.Contains(lower, "refused"):
			return Refused, note
		case strings.Contains(lower, "timed out"):
			return Timeout, note
		}
	}
	return "error", note
}

// digStatus finds the rcode in dig's answer header (";; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 1").
var digStatus = regexp.MustCompile(`status: ([A-Z]+)`)

// digOutcome is a lookup's outcome from what dig printed when a server answered: allow for
// NOERROR, and NXDOMAIN unless exact (dns-nxdomain then), dns-refused and the like for others.
func digOutcome(out string, exact bool) Outcome {
	m := digStatus.FindStringSubmatch(out)
	if m == nil {
		return Allow
	}
	switch m[1] {
	case "NOERROR":
		return Allow
	case "NXDOMAIN":
		if !exact {
			return Allow
		}
	}
	return Outcome("dns-" + strings.ToLower(m[1]))
}

// Exec runs a command in the pod's first container and returns its output and exit code.
func (c *Cluster) Exec(pod corev1.Pod, cmd ...string) (stdout, stderr string, code int, err error) {
	return c.execIn(pod, "", nil, cmd)
}

// ExecStdin runs a command in the pod's first container with stdin.
func (c *Cluster) ExecStdin(pod corev1.Pod, stdin io.Reader, cmd ...string) (stdout, stderr string, code int, err error) {
	return c.execIn(pod, "", stdin, cmd)
}

// execIn runs a command in a container of the pod (the first when empty), with stdin when not
// nil, and returns its output and exit code.
func (c *Cluster) execIn(pod corev1.Pod, container string, stdin io.Reader, cmd []string) (string, string, int, error) {
	if container == "" {
		container = pod.Spec.Containers[0].Name
	}
	req := c.opts.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: container, Command: cmd, Stdin: stdin != nil, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec)
	// WebSockets first, SPDY when the API server cannot upgrade to them, as kubectl does: over
	// SPDY alone, about 1 in 100 short commands with stdin came back with exit 0 and no output
	// under load on kind (probe-sctp-arrived, which always prints).
	spdy, err := remotecommand.NewSPDYExecutor(c.opts.Config, "POST", req.URL())
	if err != nil {
		return "", "", -1, err
	}
	ws, err := remotecommand.NewWebSocketExecutor(c.opts.Config, "GET", req.URL().String())
	if err != nil {
		return "", "", -1, err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", "", -1, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*c.opts.ProbeTimeout+10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
	var exitErr utilexec.CodeExitError
	if errors.As(err, &exitErr) {
		return stdout.String(), stderr.String(), exitErr.Code, nil
	}
	if err != nil {
		return stdout.String(), stderr.String(), -1, err
	}
	return stdout.String(), stderr.String(), 0, nil
}
