package kubenode

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/policy"
)

// Resources of the policy kinds and of the node status, for the dynamic client.
var (
	CNPResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CCNPResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
	NPSResource  = schema.GroupVersionResource{Group: "netpact.io", Version: "v1alpha1", Resource: "nodepolicystatuses"}
)

// FieldManager is the server-side apply field manager of the enforcer's status writes.
const FieldManager = "netpact-enforcer"

// EnforceConfig configures policy enforcement on a Kubernetes node.
type EnforceConfig struct {
	NodeName string
	Client   kubernetes.Interface
	Dynamic  dynamic.Interface
	Enforcer *enforcer.Enforcer
	Mode     policy.EnforcementMode
	// EndpointDir is where the CNI plugin records the node's pods.
	EndpointDir string
	// Resync lists everything again this often even without events; 30 s when zero.
	Resync time.Duration
	// Coalesce waits this long after an event for more before syncing; 20 ms when zero.
	Coalesce time.Duration
	// Heartbeat rewrites the status object this often when nothing changed; 60 s when zero.
	Heartbeat time.Duration
	// DriftInterval is how often the datapath maps are compared with what the enforcer wrote
	// and repaired (enforcer.RunDriftRepair); 10 s when zero, never when negative.
	DriftInterval time.Duration
	Log           *slog.Logger
}

// Enforcement keeps a node's datapath in line with the cluster's pods and policies, watched
// through shared informers, and reports what it enforces in the node's NodePolicyStatus.
type Enforcement struct {
	cfg     EnforceConfig
	factory informers.SharedInformerFactory
	dynf    dynamicinformer.DynamicSharedInformerFactory
	pods    cache.SharedIndexInformer
	nss     cache.SharedIndexInformer
	nodes   cache.SharedIndexInformer
	knps    cache.SharedIndexInformer
	cnps    cache.SharedIndexInformer
	ccnps   cache.SharedIndexInformer
	svcs    cache.SharedIndexInformer
	slices  cache.SharedIndexInformer
	trigger chan struct{}

	mu sync.Mutex
	// objs are the policy objects as last seen, by key; good the last version that loaded.
	objs map[policy.Key]*policyObject
	// enforced are the policies handed to the engine, by key.
	enforced    map[policy.Key]*policy.Policy
	clusterSum  [32]byte
	servicesSum [32]byte
	// servicesObserved is the newest Service or EndpointSlice resourceVersion translated.
	servicesObserved int64
	started          bool
	extraPods        map[policy.EndpointKey]*corev1.Pod
	seq              uint64 // syncs completed
	done             *sync.Cond
	status           v1alpha1.NodePolicyStatusStatus
	lastWritten      string
	lastWrite        time.Time
	lastErr          error
	observed         int64
	took             time.Duration
}

// policyObject is one policy object of the API server and what the loader made of it.
type policyObject struct {
	uid        string
	generation int64
	revision   string
	version    string // resourceVersion, to skip unchanged objects cheaply
	err        error
	// good is the newest version that loaded, with its generation and revision.
	good           *policy.Policy
	goodGeneration int64
	goodRevision   string
}

// NewEnforcement returns the enforcement loop; Run starts it.
func NewEnforcement(cfg EnforceConfig) *Enforcement {
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = 20 * time.Millisecond
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 60 * time.Second
	}
	if cfg.DriftInterval == 0 {
		cfg.DriftInterval = 10 * time.Second
	}
	if cfg.EndpointDir == "" {
		cfg.EndpointDir = cniplugin.DefaultEndpointDir
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Mode == "" {
		cfg.Mode = policy.ModeDefault
	}
	e := &Enforcement{cfg: cfg, trigger: make(chan struct{}, 1), objs: map[policy.Key]*policyObject{},
		enforced: map[policy.Key]*policy.Policy{}, extraPods: map[policy.EndpointKey]*corev1.Pod{}}
	e.done = sync.NewCond(&e.mu)
	e.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithTransform(trim))
	e.dynf = dynamicinformer.NewDynamicSharedInformerFactory(cfg.Dynamic, cfg.Resync)
	e.pods = e.factory.Core().V1().Pods().Informer()
	e.nss = e.factory.Core().V1().Namespaces().Informer()
	e.nodes = e.factory.Core().V1().Nodes().Informer()
	e.knps = e.factory.Networking().V1().NetworkPolicies().Informer()
	e.cnps = e.dynf.ForResource(CNPResource).Informer()
	e.ccnps = e.dynf.ForResource(CCNPResource).Informer()
	e.svcs = e.factory.Core().V1().Services().Informer()
	e.slices = e.factory.Discovery().V1().EndpointSlices().Informer()
	for _, inf := range []cache.SharedIndexInformer{e.cnps, e.ccnps} {
		_ = inf.SetTransform(trim)
	}
	return e
}

// trim keeps what the enforcer reads of an object, so that thousands of pods fit in little memory.
func trim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		out := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: o.Namespace, UID: o.UID,
			Labels: o.Labels, ResourceVersion: o.ResourceVersion, CreationTimestamp: o.CreationTimestamp,
			DeletionTimestamp: o.DeletionTimestamp}}
		out.Spec.NodeName, out.Spec.HostNetwork, out.Spec.ServiceAccountName = o.Spec.NodeName, o.Spec.HostNetwork, o.Spec.ServiceAccountName
		for _, c := range o.Spec.Containers {
			if len(c.Ports) > 0 {
				out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
			}
		}
		out.Status.Phase, out.Status.PodIPs = o.Status.Phase, o.Status.PodIPs
		return out, nil
	case *corev1.Node:
		out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, Labels: o.Labels,
			ResourceVersion: o.ResourceVersion}}
		out.Spec.PodCIDR, out.Spec.PodCIDRs = o.Spec.PodCIDR, o.Spec.PodCIDRs
		out.Status.Addresses = o.Status.Addresses
		return out, nil
	case *corev1.Namespace:
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, Labels: o.Labels,
			ResourceVersion: o.ResourceVersion}}, nil
	case metav1.Object:
		o.SetManagedFields(nil)
		return obj, nil
	}
	return obj, nil
}

// Poke asks for a sync soon; bursts of pokes make one sync.
func (e *Enforcement) Poke() {
	select {
	case e.trigger <- struct{}{}:
	default:
	}
}

// Run starts the informers and syncs on every change until ctx ends; the datapath's drift is
// repaired meanwhile.
func (e *Enforcement) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var drift sync.WaitGroup
	defer drift.Wait()
	defer cancel()
	drift.Go(func() { e.runDriftRepair(ctx) })
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { e.Poke() }, DeleteFunc: func(any) { e.Poke() },
		UpdateFunc: func(_, _ any) { e.Poke() },
	}
	for _, inf := range []cache.SharedIndexInformer{e.pods, e.nss, e.nodes, e.knps, e.cnps, e.ccnps, e.svcs, e.slices} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("informer handler: %w", err)
		}
	}
	e.factory.Start(ctx.Done())
	e.dynf.Start(ctx.Done())
	defer e.factory.Shutdown()
	defer e.dynf.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), e.pods.HasSynced, e.nss.HasSynced, e.nodes.HasSynced, e.knps.HasSynced,
		e.cnps.HasSynced, e.ccnps.HasSynced, e.svcs.HasSynced, e.slices.HasSynced) {
		return fmt.Errorf("wait for informers (are the cilium.io CRDs installed?): %w", ctx.Err())
	}
	e.mu.Lock()
	e.started = true
	e.mu.Unlock()
	e.cfg.Log.Info("informers synced", "pods", len(e.pods.GetStore().ListKeys()),
		"policies", len(e.knps.GetStore().ListKeys())+len(e.cnps.GetStore().ListKeys())+len(e.ccnps.GetStore().ListKeys()))
	tick := time.NewTicker(e.cfg.Resync)
	defer tick.Stop()
	for {
		e.syncOnce(ctx)
		select {
		case <-ctx.Done():
			e.mu.Lock()
			e.done.Broadcast()
			e.mu.Unlock()
			return nil
		case <-e.trigger:
			// Coalesce a burst (a rollout, a bundle of policies) into one sync: wait the
			// coalescing time, and at least as long as the last sync took, so that a stream of
			// events takes at most about half a CPU however long a sync is.
			wait := max(e.cfg.Coalesce, e.lastTook())
			time.Sleep(min(wait, 2*time.Second))
			select {
			case <-e.trigger:
			default:
			}
		case <-tick.C:
		}
	}
}

// syncOnce compiles what the informers hold and programs the node; errors go to the status.
func (e *Enforcement) syncOnce(ctx context.Context) {
	start := time.Now()
	err := e.sync()
	took := time.Since(start)
	e.mu.Lock()
	e.took = took
	e.lastErr = err
	e.seq++
	e.done.Broadcast()
	st := e.statusLocked(err, start, took)
	e.mu.Unlock()
	if err != nil {
		e.cfg.Log.Error("sync", "err", err)
	}
	e.writeStatus(ctx, st)
}

// sync is one pass: the cluster, the policies' changes, the local pods, the datapath.
func (e *Enforcement) sync() error {
	// Services first and apart from policy: a policy error must not stop translation.
	serr := e.syncServices()
	local, cluster, err := e.cluster()
	if err != nil {
		return err
	}
	ch := enforcer.Change{}
	sum := clusterSum(cluster)
	e.mu.Lock()
	if sum != e.clusterSum {
		ch.Cluster = cluster
	}
	ch.Upsert, ch.Delete = e.policyChangesLocked()
	e.mu.Unlock()
	uerr := e.cfg.Enforcer.Update(ch, local)
	e.mu.Lock()
	defer e.mu.Unlock()
	if errors.Is(uerr, enforcer.ErrInvalidCluster) {
		return uerr // nothing applied: the same change comes again next sync
	}
	if ch.Cluster != nil {
		e.clusterSum = sum
	}
	for _, p := range ch.Upsert {
		e.enforced[p.Key] = p
	}
	for _, k := range ch.Delete {
		delete(e.enforced, k)
	}
	return errors.Join(uerr, serr)
}

// syncServices hands the Services and EndpointSlices to the datapath when they changed.
func (e *Enforcement) syncServices() error {
	var svcs []*corev1.Service
	for _, o := range e.svcs.GetStore().List() {
		if s, ok := o.(*corev1.Service); ok {
			svcs = append(svcs, s)
		}
	}
	var eps []*discoveryv1.EndpointSlice
	for _, o := range e.slices.GetStore().List() {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			eps = append(eps, s)
		}
	}
	var newest int64
	for _, rv := range func() []string {
		var out []string
		for _, s := range svcs {
			out = append(out, s.ResourceVersion)
		}
		for _, s := range eps {
			out = append(out, s.ResourceVersion)
		}
		return out
	}() {
		if v, err := strconv.ParseInt(rv, 10, 64); err == nil && v > newest {
			newest = v
		}
	}
	fes := serviceFrontends(e.cfg.NodeName, svcs, eps)
	slices.SortFunc(fes, func(a, b datapath.Service) int { return strings.Compare(serviceKey(a), serviceKey(b)) })
	b, _ := json.Marshal(fes)
	sum := sha256.Sum256(b)
	e.mu.Lock()
	same := sum == e.servicesSum
	if same {
		e.servicesObserved = newest
	}
	e.mu.Unlock()
	if same {
		return nil
	}
	if err := e.cfg.Enforcer.SetServices(fes); err != nil {
		return fmt.Errorf("services: %w", err)
	}
	e.mu.Lock()
	e.servicesSum, e.servicesObserved = sum, newest
	e.mu.Unlock()
	return nil
}

func clusterSum(c *policy.Cluster) [32]byte {
	b, _ := json.Marshal(c)
	return sha256.Sum256(b)
}

// cluster builds the engine's view from the informers, and the node's pods from the CNI records.
func (e *Enforcement) cluster() ([]enforcer.LocalPod, *policy.Cluster, error) {
	c := &policy.Cluster{}
	var newest int64
	seen := func(rv string) {
		if v, err := strconv.ParseInt(rv, 10, 64); err == nil && v > newest {
			newest = v
		}
	}
	for _, o := range e.nss.GetStore().List() {
		ns := o.(*corev1.Namespace)
		seen(ns.ResourceVersion)
		c.Namespaces = append(c.Namespaces, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	haveNS := map[string]bool{}
	for _, ns := range c.Namespaces {
		haveNS[ns.Name] = true
	}
	nodeIPs := map[netip.Addr]bool{}
	for _, o := range e.nodes.GetStore().List() {
		n := o.(*corev1.Node)
		pn := policy.Node{Name: n.Name, Labels: n.Labels}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil && !nodeIPs[ip.Unmap()] {
				nodeIPs[ip.Unmap()] = true
				pn.IPs = append(pn.IPs, ip.Unmap())
			}
		}
		c.Nodes = append(c.Nodes, pn)
	}
	haveNode := map[string]bool{}
	for _, n := range c.Nodes {
		haveNode[n.Name] = true
	}
	// The node's own pods: their addresses from the CNI records (the API server learns them
	// only after the ADD that waits for this sync), labels from the Pod objects.
	records, err := cniplugin.Endpoints(e.cfg.EndpointDir)
	if err != nil {
		return nil, nil, fmt.Errorf("read cni endpoints: %w", err)
	}
	localRec := map[policy.EndpointKey]cniplugin.Endpoint{}
	for _, r := range records {
		k := policy.EndpointKey{Namespace: r.Namespace, Name: r.Pod}
		if prev, dup := localRec[k]; dup && linkExists(prev.HostVeth) && !linkExists(r.HostVeth) {
			continue // a sandbox replaced; its DEL has not come yet
		}
		localRec[k] = r
	}
	pods := map[policy.EndpointKey]*corev1.Pod{}
	for _, o := range e.pods.GetStore().List() {
		p := o.(*corev1.Pod)
		seen(p.ResourceVersion)
		pods[policy.EndpointKey{Namespace: p.Namespace, Name: p.Name}] = p
	}
	e.mu.Lock()
	for k, p := range e.extraPods {
		if have, ok := pods[k]; ok && have.UID == p.UID {
			delete(e.extraPods, k)
			continue
		}
		if _, ok := localRec[k]; !ok {
			delete(e.extraPods, k)
			continue
		}
		pods[k] = p
	}
	e.mu.Unlock()

	type claim struct {
		key     policy.EndpointKey
		created time.Time
		local   bool
	}
	owner := map[netip.Addr]claim{}
	eps := map[policy.EndpointKey]*policy.Endpoint{}
	keys := make([]policy.EndpointKey, 0, len(pods))
	for k := range pods {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	var local []enforcer.LocalPod
	for _, k := range keys {
		p := pods[k]
		if p.Spec.HostNetwork || !haveNS[p.Namespace] {
			continue
		}
		rec, isLocal := localRec[k]
		isLocal = isLocal && p.Spec.NodeName == e.cfg.NodeName && (rec.PodUID == "" || rec.PodUID == string(p.UID))
		if !isLocal && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed) {
			continue
		}
		ep := &policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels,
			ServiceAccount: p.Spec.ServiceAccountName}
		if haveNode[p.Spec.NodeName] {
			ep.Node = p.Spec.NodeName
		}
		for _, ct := range p.Spec.Containers {
			for _, port := range ct.Ports {
				proto, err := policy.ParseProto(string(port.Protocol))
				if err != nil {
					continue // SCTP and the like: no rule of ours names them
				}
				ep.Ports = append(ep.Ports, policy.NamedPort{Name: port.Name, Port: uint16(port.ContainerPort), Protocol: proto})
			}
		}
		var ips []string
		if isLocal {
			ips = rec.IPs
			local = append(local, enforcer.LocalPod{Key: k, Ifindex: rec.HostIfIndex, HostIfname: rec.HostVeth, NetnsCookie: rec.NetnsCookie})
		} else {
			for _, ip := range p.Status.PodIPs {
				ips = append(ips, ip.IP)
			}
		}
		for _, s := range ips {
			ip, err := netip.ParseAddr(s)
			if err != nil || nodeIPs[ip.Unmap()] {
				continue
			}
			ip = ip.Unmap()
			// An address two pods claim (a pod gone and its address reused) belongs to this
			// node's own pod, else to the newer pod.
			cl := claim{key: k, created: p.CreationTimestamp.Time, local: isLocal}
			if prev, taken := owner[ip]; taken {
				if prev.local || (!cl.local && !cl.created.After(prev.created)) {
					continue
				}
				pe := eps[prev.key]
				pe.IPs = removeAddr(pe.IPs, ip)
			}
			owner[ip] = cl
			ep.IPs = append(ep.IPs, ip)
		}
		eps[k] = ep
	}
	for _, k := range keys {
		if ep, ok := eps[k]; ok {
			c.Endpoints = append(c.Endpoints, *ep)
		}
	}
	e.mu.Lock()
	e.observed = newest
	e.mu.Unlock()
	sort.Slice(c.Namespaces, func(i, j int) bool { return c.Namespaces[i].Name < c.Namespaces[j].Name })
	sort.Slice(c.Nodes, func(i, j int) bool { return c.Nodes[i].Name < c.Nodes[j].Name })
	// A pod the plugin wired whose object is not known yet stays out of the engine: the
	// enforcer fails it closed ("not in the cluster") until its labels are known.
	for k, r := range localRec {
		if _, ok := eps[k]; !ok {
			local = append(local, enforcer.LocalPod{Key: k, Ifindex: r.HostIfIndex, HostIfname: r.HostVeth, NetnsCookie: r.NetnsCookie})
		}
	}
	return local, c, nil
}

func removeAddr(ips []netip.Addr, a netip.Addr) []netip.Addr {
	out := ips[:0]
	for _, ip := range ips {
		if ip != a {
			out = append(out, ip)
		}
	}
	return out
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// policyChangesLocked loads the policy objects that changed since the last sync and returns
// what the engine must upsert and delete. An object the loader refuses keeps its last good
// version enforced, and is reported.
func (e *Enforcement) policyChangesLocked() ([]*policy.Policy, []policy.Key) {
	seen := map[policy.Key]bool{}
	visit := func(kind policy.Kind, uid, ns, name, rv, revision string, gen int64, raw func() ([]byte, error)) {
		k := policy.Key{Kind: kind, Namespace: ns, Name: name}
		seen[k] = true
		po := e.objs[k]
		if po != nil && po.uid == uid && po.version == rv {
			return
		}
		if po == nil || po.uid != uid {
			po = &policyObject{uid: uid}
			e.objs[k] = po
		}
		po.version, po.generation, po.revision = rv, gen, revision
		data, err := raw()
		if err == nil {
			var b *policy.Bundle
			b, err = policy.LoadBytes(k.String(), data, policy.LoadOptions{})
			if err == nil && len(b.Policies) != 1 {
				err = fmt.Errorf("the object holds %d policies, not one", len(b.Policies))
			}
			if err == nil {
				po.good, po.goodGeneration, po.goodRevision = b.Policies[0], gen, revision
			}
		}
		if err != nil && po.err == nil || err != nil && err.Error() != po.err.Error() {
			e.cfg.Log.Error("policy refused; its last good version stays enforced", "policy", k.String(),
				"generation", gen, "err", err)
		}
		po.err = err
	}
	for _, o := range e.knps.GetStore().List() {
		np := o.(*networkingv1.NetworkPolicy)
		visit(policy.KindKNP, string(np.UID), np.Namespace, np.Name, np.ResourceVersion, np.Annotations[v1alpha1.RevisionAnnotation],
			np.Generation, func() ([]byte, error) { return knpYAML(np) })
	}
	for kind, inf := range map[policy.Kind]cache.SharedIndexInformer{policy.KindCNP: e.cnps, policy.KindCCNP: e.ccnps} {
		for _, o := range inf.GetStore().List() {
			u := o.(*unstructured.Unstructured)
			visit(kind, string(u.GetUID()), u.GetNamespace(), u.GetName(), u.GetResourceVersion(),
				u.GetAnnotations()[v1alpha1.RevisionAnnotation], u.GetGeneration(),
				func() ([]byte, error) { return ciliumYAML(u) })
		}
	}
	var upsert []*policy.Policy
	var del []policy.Key
	for k, po := range e.objs {
		if !seen[k] {
			delete(e.objs, k)
			if _, ok := e.enforced[k]; ok {
				del = append(del, k)
			}
			continue
		}
		if po.good == nil {
			if _, ok := e.enforced[k]; ok {
				// A new object (new uid) under the name of one enforced, refused: nothing of
				// the old object stays.
				del = append(del, k)
			}
			continue
		}
		if e.enforced[k] != po.good {
			upsert = append(upsert, po.good)
		}
	}
	sort.Slice(upsert, func(i, j int) bool { return upsert[i].Key.String() < upsert[j].Key.String() })
	sort.Slice(del, func(i, j int) bool { return del[i].String() < del[j].String() })
	return upsert, del
}

// knpYAML is a NetworkPolicy of the informer as the loader reads it.
func knpYAML(np *networkingv1.NetworkPolicy) ([]byte, error) {
	obj := map[string]any{
		"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": map[string]any{"name": np.Name, "namespace": np.Namespace},
		"spec":     np.Spec,
	}
	return yaml.Marshal(obj)
}

// ciliumYAML is a CNP or CCNP of the informer as the loader reads it: spec and specs, not the
// status Cilium's agents may have written.
func ciliumYAML(u *unstructured.Unstructured) ([]byte, error) {
	md := map[string]any{"name": u.GetName()}
	if u.GetNamespace() != "" {
		md["namespace"] = u.GetNamespace()
	}
	obj := map[string]any{"apiVersion": ciliumv2.GroupVersion, "kind": u.GetKind(), "metadata": md}
	for _, f := range []string{"spec", "specs"} {
		if v, ok := u.Object[f]; ok {
			obj[f] = v
		}
	}
	return yaml.Marshal(obj)
}

// statusLocked is the NodePolicyStatus of the sync just done.
func (e *Enforcement) statusLocked(err error, start time.Time, took time.Duration) v1alpha1.NodePolicyStatusStatus {
	st := v1alpha1.NodePolicyStatusStatus{Mode: string(e.cfg.Mode)}
	st.Policies, st.Revisions, st.ErrorCount = e.policiesStatusLocked()
	st.PolicyCount = len(st.Policies)
	failed := e.cfg.Enforcer.Failed()
	for k, ferr := range failed {
		st.EndpointErrors = append(st.EndpointErrors, v1alpha1.EndpointError{Pod: k.String(), Error: ferr.Error()})
	}
	sort.Slice(st.EndpointErrors, func(i, j int) bool { return st.EndpointErrors[i].Pod < st.EndpointErrors[j].Pod })
	st.FailedEndpoints = len(failed)
	st.Endpoints = e.cfg.Enforcer.ProgrammedCount()
	st.ErrorCount += len(failed)
	if err != nil && len(failed) == 0 {
		st.Error = err.Error()
		st.ErrorCount++
	}
	st.ObservedVersion, st.ServicesObservedVersion = e.observed, e.servicesObserved
	t := metav1.NewTime(start.Truncate(time.Second))
	st.LastSync = &t
	st.SyncDuration = took.Round(time.Millisecond).String()
	e.status = st
	return st
}

// policiesStatusLocked is each policy object as enforced: generation, revision, error; the
// distinct revisions; the number refused.
func (e *Enforcement) policiesStatusLocked() ([]v1alpha1.EnforcedPolicy, []string, int) {
	var out []v1alpha1.EnforcedPolicy
	refused := 0
	revs := map[string]bool{}
	for k, po := range e.objs {
		ep := v1alpha1.EnforcedPolicy{Kind: string(k.Kind), Namespace: k.Namespace, Name: k.Name, UID: po.uid}
		if po.good != nil && e.enforced[k] == po.good {
			ep.Generation, ep.Revision = po.goodGeneration, po.goodRevision
			if ep.Revision != "" {
				revs[ep.Revision] = true
			}
		}
		if po.generation != ep.Generation {
			ep.ObservedGeneration = po.generation
		}
		if po.err != nil {
			ep.Error = po.err.Error()
			refused++
		}
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		return a.Kind+"/"+a.Namespace+"/"+a.Name < b.Kind+"/"+b.Namespace+"/"+b.Name
	})
	var revisions []string
	for r := range revs {
		revisions = append(revisions, r)
	}
	sort.Strings(revisions)
	return out, revisions, refused
}

// writeStatus server-side-applies the node's status object when it changed (or for the heartbeat).
func (e *Enforcement) writeStatus(ctx context.Context, st v1alpha1.NodePolicyStatusStatus) {
	cmp := st
	cmp.LastSync, cmp.SyncDuration = nil, ""
	key, _ := json.Marshal(cmp)
	e.mu.Lock()
	same := string(key) == e.lastWritten && time.Since(e.lastWrite) < e.cfg.Heartbeat
	e.mu.Unlock()
	if same {
		return
	}
	obj := &unstructured.Unstructured{}
	obj.SetAPIVersion(v1alpha1.GroupVersion.String())
	obj.SetKind("NodePolicyStatus")
	obj.SetName(e.cfg.NodeName)
	raw, _ := json.Marshal(st)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	obj.Object["status"] = m
	data, _ := json.Marshal(obj.Object)
	force := true
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := e.cfg.Dynamic.Resource(NPSResource).Patch(wctx, e.cfg.NodeName, ktypes.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: FieldManager, Force: &force})
	if err != nil {
		e.cfg.Log.Error("write node policy status", "err", err)
		return
	}
	e.mu.Lock()
	e.lastWritten, e.lastWrite = string(key), time.Now()
	e.mu.Unlock()
}

func (e *Enforcement) lastTook() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.took
}

// Syncs is how many syncs ran.
func (e *Enforcement) Syncs() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.seq
}

// Status is the last sync's status.
func (e *Enforcement) Status() v1alpha1.NodePolicyStatusStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}

// Ready says whether the informers synced and the last sync succeeded.
func (e *Enforcement) Ready() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case !e.started:
		return errors.New("informers not synced yet")
	case e.seq == 0:
		return errors.New("not synced yet")
	}
	return nil
}

// WaitProgrammed blocks until a sync that began after the call has programmed the pod's endpoint
// (or failed it closed, which is as safe), or ctx ends. It is what the CNI ADD waits for.
func (e *Enforcement) WaitProgrammed(ctx context.Context, namespace, name, uid string) error {
	k := policy.EndpointKey{Namespace: namespace, Name: name}
	// The pod's labels: from the informer, or straight from the API server for a pod it has not
	// delivered yet.
	if _, exists, _ := e.pods.GetStore().GetByKey(namespace + "/" + name); !exists {
		p, err := e.cfg.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("pod %s: not found", k)
		case err != nil:
			return fmt.Errorf("get pod %s: %w", k, err)
		}
		tp, _ := trim(p)
		e.mu.Lock()
		e.extraPods[k] = tp.(*corev1.Pod)
		e.mu.Unlock()
	}
	stop := context.AfterFunc(ctx, func() {
		e.mu.Lock()
		e.done.Broadcast()
		e.mu.Unlock()
	})
	defer stop()
	e.mu.Lock()
	// A sync already running may have read the directory before the record: wait for two.
	target := e.seq + 2
	e.mu.Unlock()
	e.Poke()
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("pod %s not programmed yet: %w", k, ctx.Err())
		}
		if e.seq >= target {
			if e.cfg.Enforcer.IsProgrammed(k) {
				return nil
			}
			if ferr, failed := e.cfg.Enforcer.Failed()[k]; failed {
				e.cfg.Log.Warn("pod failed closed", "pod", k.String(), "err", ferr)
				return nil
			}
			if e.seq >= target+3 {
				return fmt.Errorf("pod %s: the enforcer did not program it", k)
			}
			go e.Poke()
		}
		e.done.Wait()
	}
}

// Pods lists the informer's pods (a test hook for the trimmed store).
func (e *Enforcement) Pods() []*corev1.Pod {
	var out []*corev1.Pod
	for _, o := range e.pods.GetStore().List() {
		out = append(out, o.(*corev1.Pod))
	}
	return out
}
