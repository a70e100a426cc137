// Package enforcer is netpact's node agent: it keeps the policy engine's view of the cluster and
// the policies, and programs the node's datapath with the state of the pods on that node.
package enforcer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/policy"
)

// LocalPod ties a pod of the cluster to its veth on this node.
type LocalPod struct {
	Key        policy.EndpointKey
	Ifindex    int
	HostIfname string
	// NetnsCookie is the pod's network namespace cookie (0: unknown), for flow events that name
	// the Service a connection was translated from.
	NetnsCookie uint64
}

// Enforcer programs one node.
type Enforcer struct {
	mu      sync.Mutex
	node    string
	engine  *policy.Engine
	dp      *datapath.Datapath
	local   map[policy.EndpointKey]LocalPod
	ids     map[policy.EndpointKey]uint32
	nextID  uint32
	state   *policy.State
	applied map[policy.EndpointKey]datapath.Endpoint
	// known are the endpoints given to the datapath, programmed or failed: removed when gone.
	known map[policy.EndpointKey]datapath.Endpoint
	// failed are the local pods whose policy could not be programmed: failed closed.
	failed map[policy.EndpointKey]error
	// pinned are the endpoints the datapath held when this enforcer started, by ifindex.
	pinned map[int]datapath.PinnedEndpoint
	// services are the Service frontends the node translates.
	services []Service
	// driftRepairs counts the datapath entries RepairDrift wrote back or deleted.
	driftRepairs atomic.Uint64
	// fqdn is what DNS answers taught the node; lastLocal the local pods of the last program, and
	// synced whether there was one (learning before it only tells the engine).
	fqdn      *fqdnCache
	lastLocal []LocalPod
	synced    bool
	// hubble is what HubbleFlows derived from the current state (hubble.go).
	hubble atomic.Pointer[hubbleCache]
	// view is the state and endpoint ids as last published, which the flow path reads without
	// taking mu: a sync holds mu for its whole compile and programming, and the node's one flow
	// reader must not wait for it (the ring buffer would fill).
	view atomic.Pointer[enforcerView]
}

// enforcerView is what the flow path reads of the enforcer: the compiled state and the local
// pods' endpoint ids.
type enforcerView struct {
	state *policy.State
	ids   map[policy.EndpointKey]uint32
}

// publishLocked makes the state and endpoint ids the flow path reads the current ones.
func (e *Enforcer) publishLocked() {
	e.view.Store(&enforcerView{state: e.state, ids: maps.Clone(e.ids)})
}

// snapshot is the last published view (empty before the first sync).
func (e *Enforcer) snapshot() *enforcerView {
	if v := e.view.Load(); v != nil {
		return v
	}
	return &enforcerView{}
}

// New returns an enforcer for node that programs dp. What dp's pinned maps already hold (an
// earlier enforcer's work) is taken over: the same identity numbers and, for a pod on the same
// interface with the same addresses, the same endpoint id.
func New(node string, dp *datapath.Datapath, opts policy.Options) *Enforcer {
	e := &Enforcer{node: node, engine: policy.NewEngine(opts), dp: dp, local: map[policy.EndpointKey]LocalPod{},
		ids: map[policy.EndpointKey]uint32{}, nextID: 1, applied: map[policy.EndpointKey]datapath.Endpoint{},
		known:  map[policy.EndpointKey]datapath.Endpoint{},
		failed: map[policy.EndpointKey]error{}, fqdn: newFQDNCache(FQDNOptions{})}
	pinned, ipcache := dp.Pinned()
	e.engine.PreferIdentities(ipcache)
	e.pinned = pinned
	for _, pe := range pinned {
		e.nextID = max(e.nextID, pe.ID+1)
	}
	return e
}

// State is the last compiled state.
func (e *Enforcer) State() *policy.State {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.state
}

// DecideTCP is the last compiled state's decision for a TCP flow (false before the first
// compile): what the L7 HTTP proxy judges each request on.
func (e *Enforcer) DecideTCP(src, dst netip.AddrPort) (policy.Decision, bool) {
	return e.Decide(src, dst, policy.ProtoTCP)
}

// Decide is the last compiled state's decision for a flow of a protocol (false before the first
// compile): what the DNS proxy judges each query on.
func (e *Enforcer) Decide(src, dst netip.AddrPort, proto policy.Proto) (policy.Decision, bool) {
	st := e.State()
	if st == nil {
		return policy.Decision{}, false
	}
	return st.Decide(src.Addr(), dst.Addr(), proto, dst.Port()), true
}

// IsPod reports whether an address is a pod's in the last compiled state.
func (e *Enforcer) IsPod(a netip.Addr) bool {
	st := e.State()
	return st != nil && st.IsPod(a)
}

// EndpointID is the datapath id of a local pod (0 when unknown).
func (e *Enforcer) EndpointID(k policy.EndpointKey) uint32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ids[k]
}

// EndpointOf is the local pod whose datapath endpoint id is id.
func (e *Enforcer) EndpointOf(id uint32) (policy.EndpointKey, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, v := range e.ids {
		if v == id {
			return k, true
		}
	}
	return policy.EndpointKey{}, false
}

// Sync makes the datapath enforce the policies over the cluster for the given local pods: the
// engine recompiles, the ipcache and every local pod's entries are written as diffs, and pods no
// longer present are removed. A pod whose policy cannot be programmed is failed closed (all its
// traffic dropped) and named in the returned error; the other pods are programmed all the same.
func (e *Enforcer) Sync(c *policy.Cluster, policies []*policy.Policy, local []LocalPod) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.engine.SetCluster(c); err != nil {
		return fmt.Errorf("compile cluster: %w", err)
	}
	e.engine.SetPolicies(policies)
	return e.programLocked(local)
}

// Change is an incremental update: a new cluster (nil when unchanged), the policies added or
// changed, and the keys of those removed.
type Change struct {
	Cluster *policy.Cluster
	Upsert  []*policy.Policy
	Delete  []policy.Key
}

// Update applies a change through the engine's incremental path (a new cluster recompiles
// everything; a policy change recompiles only the endpoints it selects), then programs the local
// pods as Sync does. The datapath writes are diffs either way.
func (e *Enforcer) Update(ch Change, local []LocalPod) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ch.Cluster != nil {
		if err := e.engine.SetCluster(ch.Cluster); err != nil {
			return fmt.Errorf("compile cluster: %w: %w", ErrInvalidCluster, err)
		}
	}
	for _, k := range ch.Delete {
		e.engine.Delete(k)
	}
	for _, p := range ch.Upsert {
		e.engine.Upsert(p)
	}
	return e.programLocked(local)
}

// Failed are the local pods failed closed by the last Sync or Update, with why.
func (e *Enforcer) Failed() map[policy.EndpointKey]error {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[policy.EndpointKey]error, len(e.failed))
	for k, err := range e.failed {
		out[k] = err
	}
	return out
}

// IsProgrammed says whether a local pod's policy is in the datapath (false for a pod failed
// closed or not synced yet).
func (e *Enforcer) IsProgrammed(k policy.EndpointKey) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.applied[k]
	return ok
}

// ProgrammedCount is the number of local pods whose policy is in the datapath.
func (e *Enforcer) ProgrammedCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.applied)
}

// ErrInvalidCluster is what Sync and Update wrap when the cluster cannot be compiled: nothing of
// the change was applied.
var ErrInvalidCluster = errors.New("invalid cluster")

// programLocked writes the engine's state for the local pods.
func (e *Enforcer) programLocked(local []LocalPod) error {
	st := e.engine.State()
	want := map[policy.EndpointKey]LocalPod{}
	for _, lp := range local {
		want[lp.Key] = lp
	}
	keys := make([]policy.EndpointKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	e.state = st
	e.publishLocked()
	e.lastLocal, e.synced = local, true
	e.failed = map[policy.EndpointKey]error{}
	var errs []error
	// A policy whose CIDRs the node's ipcache cannot hold is refused here, and only the pods it
	// selects close: never every pod of the node for one tenant's list.
	ipc, refused := st.IPCacheWithin(e.node, e.dp.IPCacheCapacity())
	if err := e.dp.SetIPCache(ipc); err != nil {
		// Without a whole ipcache peers may be judged by the wrong identity: every pod closes.
		for _, k := range keys {
			e.closeLocked(k, want[k], fmt.Errorf("write ipcache: %w", err))
		}
		return fmt.Errorf("write ipcache (every local pod failed closed): %w", err)
	}
	for _, k := range keys {
		lp := want[k]
		es, ok := st.Endpoint(k)
		if !ok {
			errs = append(errs, e.closeLocked(k, lp, errors.New("the pod is not in the cluster")))
			continue
		}
		if err := refusedFor(st, k, refused, e.dp.IPCacheCapacity()); err != nil {
			errs = append(errs, e.closeLocked(k, lp, err))
			continue
		}
		ep := e.endpointLocked(k, lp, st)
		e.known[k] = ep
		if err := e.dp.UpsertEndpoint(ep, es); err != nil {
			err = fmt.Errorf("program %s: %w%s", k, err, blame(err, st))
			e.failed[k] = err
			delete(e.applied, k)
			errs = append(errs, err)
			continue
		}
		e.applied[k] = ep
	}
	for k, ep := range e.known {
		if _, ok := want[k]; ok {
			continue
		}
		if err := e.dp.RemoveEndpoint(ep); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", k, err))
			continue
		}
		delete(e.known, k)
		delete(e.applied, k)
		delete(e.ids, k)
		e.publishLocked()
	}
	// What an earlier enforcer left for pods that are gone.
	keep := map[uint32]bool{}
	for _, id := range e.ids {
		keep[id] = true
	}
	if err := e.dp.Prune(keep); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// endpointLocked is the datapath endpoint of a local pod, with its id (assigned on first use).
func (e *Enforcer) endpointLocked(k policy.EndpointKey, lp LocalPod, st *policy.State) datapath.Endpoint {
	ep := datapath.Endpoint{Ifindex: lp.Ifindex, Ifname: lp.HostIfname, NetnsCookie: lp.NetnsCookie}
	if ident, _ := st.Identity(k); ident != nil {
		ep.Identity = ident.ID
	}
	if a, ok := st.Addr(k, false); ok {
		ep.IPv4 = a
	}
	if a, ok := st.Addr(k, true); ok {
		ep.IPv6 = a
	}
	id, ok := e.ids[k]
	if !ok {
		// The id the pinned maps hold for this pod's interface and addresses, if no other pod
		// has it: its entries are already this pod's.
		if pe, found := e.pinned[lp.Ifindex]; found && pe.ID != 0 && pe.IPv4 == ep.IPv4 && pe.IPv6 == ep.IPv6 && !e.idTaken(pe.ID) {
			id = pe.ID
		} else {
			// nextID starts above every pinned id: a fresh id is never one whose entries belong
			// to the pod on another interface.
			for e.idTaken(e.nextID) {
				e.nextID++
			}
			id = e.nextID
			e.nextID++
		}
		e.ids[k] = id
		e.publishLocked()
	}
	ep.ID = id
	return ep
}

func (e *Enforcer) idTaken(id uint32) bool {
	for _, v := range e.ids {
		if v == id {
			return true
		}
	}
	return false
}

// blame names the rules a capacity error's entries come from, most entries first.
func blame(err error, st *policy.State) string {
	var ce *datapath.CapacityError
	if !errors.As(err, &ce) {
		return ""
	}
	ids := make([]policy.RuleID, 0, len(ce.EntriesByRule))
	for id := range ce.EntriesByRule {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ce.EntriesByRule[ids[i]] > ce.EntriesByRule[ids[j]] })
	var parts []string
	for i, id := range ids {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("and %d more rules", len(ids)-3))
			break
		}
		name := fmt.Sprintf("rule %d", id)
		if ri := st.Rule(id); ri != nil {
			name = ri.String()
		}
		parts = append(parts, fmt.Sprintf("%s: %d entries", name, ce.EntriesByRule[id]))
	}
	return " (" + strings.Join(parts, "; ") + ")"
}

// refusedFor is why a pod cannot be programmed when a policy selecting it was refused for the
// ipcache (policy.State.IPCacheWithin); nil when none was.
func refusedFor(st *policy.State, k policy.EndpointKey, refused map[policy.Key]int, capacity int) error {
	if len(refused) == 0 {
		return nil
	}
	for _, pk := range st.PoliciesOf(k) {
		if n, ok := refused[pk]; ok {
			return fmt.Errorf("%s names %d CIDRs and the node's ipcache (%d entries) cannot hold them with the other policies' here: the policy is not enforced on this node", pk, n, capacity)
		}
	}
	return nil
}

// closeLocked fails a local pod closed for reason and returns the error that reports it.
func (e *Enforcer) closeLocked(k policy.EndpointKey, lp LocalPod, reason error) error {
	err := fmt.Errorf("program %s (failed closed, dropping all its traffic): %w", k, reason)
	if cerr := e.dp.CloseEndpoint(datapath.Endpoint{Ifindex: lp.Ifindex, Ifname: lp.HostIfname, ID: e.ids[k]}); cerr != nil {
		err = fmt.Errorf("program %s: %w; and failing it closed failed too: %w", k, reason, cerr)
	}
	e.failed[k] = err
	delete(e.applied, k)
	return err
}

// Resolve maps an address to the pod that owns it, for flow output.
func (e *Enforcer) Resolve(a netip.Addr) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state == nil {
		return a.String()
	}
	for _, k := range e.state.Endpoints() {
		for _, v6 := range []bool{false, true} {
			if ip, ok := e.state.Addr(k, v6); ok && ip == a {
				return k.String()
			}
		}
	}
	return a.String()
}

// Verify reads every local pod's entries back from the datapath maps and checks that they are
// exactly the compiled state: this is what "enforced" means.
func (e *Enforcer) Verify() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state == nil {
		return fmt.Errorf("verify: nothing applied yet")
	}
	var failed []error
	for _, err := range e.failed {
		failed = append(failed, err)
	}
	if len(failed) > 0 {
		return fmt.Errorf("verify: %d local pod(s) failed closed: %w", len(failed), errors.Join(failed...))
	}
	for k, ep := range e.applied {
		es, ok := e.state.Endpoint(k)
		if !ok {
			return fmt.Errorf("verify %s: not in the compiled state", k)
		}
		want, err := datapath.ToBPF(ep.ID, es)
		if err != nil {
			return fmt.Errorf("verify %s: %w", k, err)
		}
		got, err := e.dp.Dump(ep.ID)
		if err != nil {
			return fmt.Errorf("verify %s: %w", k, err)
		}
		if a, b := fmt.Sprint(datapath.FromBPF(want)), fmt.Sprint(got); a != b {
			return fmt.Errorf("verify %s: the datapath maps differ from the compiled state", k)
		}
	}
	return nil
}

// DriftRepair is a datapath entry that was changed behind the enforcer's back and repaired.
type DriftRepair struct {
	datapath.DriftEntry
	// Pod is the local pod the entry's endpoint is; zero when the endpoint id is no pod's.
	Pod policy.EndpointKey
}

func (r DriftRepair) String() string {
	if r.Pod == (policy.EndpointKey{}) {
		return r.DriftEntry.String()
	}
	return fmt.Sprintf("pod %s, %s", r.Pod, r.DriftEntry)
}

// RepairDrift makes the datapath maps hold again what the enforcer wrote where something else
// changed them (datapath.Resync), and returns each entry it repaired.
func (e *Enforcer) RepairDrift() ([]DriftRepair, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	fixed, err := e.dp.Resync()
	if len(fixed) == 0 {
		return nil, err
	}
	e.driftRepairs.Add(uint64(len(fixed)))
	pods := make(map[uint32]policy.EndpointKey, len(e.ids))
	for k, id := range e.ids {
		pods[id] = k
	}
	out := make([]DriftRepair, len(fixed))
	for i, f := range fixed {
		out[i] = DriftRepair{DriftEntry: f, Pod: pods[f.Endpoint]}
	}
	return out, err
}

// DriftRepairs is how many datapath entries RepairDrift has repaired.
func (e *Enforcer) DriftRepairs() uint64 { return e.driftRepairs.Load() }

// RunDriftRepair runs RepairDrift every interval until ctx ends (not at all when interval is
// not positive): report gets each entry repaired, fail each error (either may be nil).
func (e *Enforcer) RunDriftRepair(ctx context.Context, interval time.Duration, report func(DriftRepair), fail func(error)) {
	if interval <= 0 {
		return
	}
	if report == nil {
		report = func(DriftRepair) {}
	}
	if fail == nil {
		fail = func(error) {}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fixed, err := e.RepairDrift()
		for _, r := range fixed {
			report(r)
		}
		if err != nil {
			fail(err)
		}
	}
}

// Service is a ClusterIP frontend and its ready backends, as the socket programs translate it.
type Service = datapath.Service

// SetServices makes the node translate exactly these Service frontends at the socket, so that a
// pod's connection to a ClusterIP is checked against the backend pod it goes to. An invalid
// frontend refuses the whole set, and the last one keeps translating.
func (e *Enforcer) SetServices(svcs []Service) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.dp.SetServices(svcs); err != nil {
		return err
	}
	e.services = append([]Service(nil), svcs...)
	return nil
}

// Services are the frontends last set.
func (e *Enforcer) Services() []Service {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Service(nil), e.services...)
}
