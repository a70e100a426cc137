package kubenode

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/policy"
)

// Resources of the policy kinds and of the node status, for the dynamic client.
var (
	CNPResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CCNPResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
	NPSResource  = schema.GroupVersionResource{Group: "netpact.io", Version: "v1alpha1", Resource: "nodepolicystatuses"}
)

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
	begun            uint64 // syncs begun: one more than seq while a sync runs
	done             *sync.Cond
	// phase is what the sync loop is doing, and since when: a pod that waits too long says.
	phase atomic.Pointer[loopPhase]
	// statusDue wakes the status writer: status holds what it writes.
	statusDue   chan struct{}
	status      v1alpha1.NodePolicyStatusStatus
	lastWritten string
	lastWrite   time.Time
	lastErr     error
	observed    int64
	took        time.Duration
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
	e := &Enforcement{cfg: cfg, trigger: make(chan struct{}, 1), statusDue: make(chan struct{}, 1), objs: map[policy.Key]*policyObject{},
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
	// The status object is written apart from the syncs: a slow API server must not hold back
	// the next sync, which a new pod's ADD waits for.
	drift.Go(func() { e.runStatusWriter(ctx) })
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
		e.syncOnce()
		e.enter("waiting for a change")
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
			e.enter("coalescing changes")
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
func (e *Enforcement) syncOnce() {
	e.mu.Lock()
	e.begun++
	e.mu.Unlock()
	start := time.Now()
	err := e.sync()
	took := time.Since(start)
	e.enter("reporting the sync")
	e.mu.Lock()
	e.took = took
	e.lastErr = err
	e.seq++
	e.done.Broadcast()
	e.statusLocked(err, start, took)
	e.mu.Unlock()
	if err != nil {
		e.cfg.Log.Error("sync", "err", err)
	}
	select {
	case e.statusDue <- struct{}{}:
	default:
	}
}

// loopPhase is a step of the sync loop and when it began.
type loopPhase struct {
	what  string
	since time.Time
}

// enter records the step the sync loop is at.
func (e *Enforcement) enter(what string) {
	e.phase.Store(&loopPhase{what: what, since: time.Now()})
}

// phaseNow says what the sync loop is doing and for how long.
func (e *Enforcement) phaseNow() string {
	p := e.phase.Load()
	if p == nil {
		return "not started"
	}
	return fmt.Sprintf("%s for %s", p.what, time.Since(p.since).Round(time.Millisecond))
}

// sync is one pass: the cluster, the policies' changes, the local pods, the datapath.
func (e *Enforcement) sync() error {
	// Services first and apart from policy: a policy error must not stop translation.
	e.enter("translating Services")
	serr := e.syncServices()
	e.enter("reading the cluster")
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
	e.enter("programming the datapath")
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
// (or failed it closed, which is as safe), or ctx ends. It is what the CNI ADD waits for; when it
// gives up, the error says how far the syncs got and what the sync loop is doing.
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
	// A sync already running may have read the directory before the record: the one to wait
	// for is the next to begin.
	target := e.begun + 1
	from := e.seq
	e.mu.Unlock()
	e.Poke()
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		if ctx.Err() != nil {
			return fmt.Errorf("pod %s not programmed yet: %d syncs completed since it asked, %d needed; the sync loop is %s: %w",
				k, e.seq-from, target-from, e.phaseNow(), ctx.Err())
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
