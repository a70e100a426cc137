package kubenode

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/metrics"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/policy"
)

// Observer serves the node's flows (/flows: Hubble's GetFlowsResponse stream, filtered as
// `hubble observe` filters, which `netpact observe` reads through the API server) and its
// metrics (/metrics, docs/metrics.md).
type Observer struct {
	dp      *datapath.Datapath
	enf     *enforcer.Enforcer
	e       *Enforcement
	metrics *metrics.Metrics
	flows   http.Handler
	// sync waits until the node's flow hub handed on every event the datapath wrote before the
	// call (enforcer.FlowHub.Sync); nil when the observer has no hub (tests).
	sync func(timeout time.Duration) bool

	// ruleState caches the deciding policy of each rule of the state it was built from, so that
	// counting a flow does not format the policy's name again (only the hub's goroutine uses it).
	ruleState    *policy.State
	rulePolicies map[policy.RuleID][]string
}

// NewObserver returns the node's observer; it counts every flow event the node's hub hands on.
func NewObserver(node *enforcer.Node, e *Enforcement, name string) (*Observer, error) {
	o, err := newObserver(node.Datapath, node.Enforcer, node.Ring, e, name)
	if err != nil {
		return nil, err
	}
	o.sync = node.Flows.Sync
	node.Flows.Subscribe(o.observe)
	node.OnLost(func(src observe.LostEventSource, n uint64) { o.metrics.ObserveLost(string(src), n) })
	return o, nil
}

func newObserver(dp *datapath.Datapath, enf *enforcer.Enforcer, ring *observe.Ring, e *Enforcement, name string) (*Observer, error) {
	o := &Observer{dp: dp, enf: enf, e: e, flows: observe.Handler(ring, name)}
	m, err := metrics.New(metricsSource{o}, metrics.Options{Log: e.cfg.Log})
	if err != nil {
		return nil, fmt.Errorf("node metrics: %w", err)
	}
	o.metrics = m
	return o, nil
}

// Handler serves /flows and /metrics.
func (o *Observer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/flows", o.syncing(o.flows))
	mux.Handle("/metrics", o.metrics.Handler())
	return mux
}

// syncParam is the node's own /flows parameter (not a filter, so observe.Handler never sees
// it): sync=1 answers only once the node's flow reader has handed on every event the datapath
// wrote before the request, so that the answer has every flow of the traffic that happened
// before it. The datapath writes a flow's event to its ring buffer before the packet goes on,
// but the reader hands it to the ring /flows serves a little later, not synchronously: a client
// that saw a connection complete (the scenario harness checking that a probe was reported as
// AUDIT) asks with sync=1 instead of sleeping or polling.
const syncParam = "sync"

// syncTimeout bounds the wait of a sync=1 request: a reader that far behind answers 503.
const syncTimeout = 5 * time.Second

// syncing serves sync=1 (syncParam) in front of the generic flows handler.
func (o *Observer) syncing(flows http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		if !q.Has(syncParam) {
			flows.ServeHTTP(w, req)
			return
		}
		var want bool
		switch v := q[syncParam]; {
		case len(v) != 1:
			http.Error(w, fmt.Sprintf("parameter %q: give it once", syncParam), http.StatusBadRequest)
			return
		case v[0] == "" || v[0] == "1" || strings.EqualFold(v[0], "true"):
			want = true
		case v[0] == "0" || strings.EqualFold(v[0], "false"):
		default:
			http.Error(w, fmt.Sprintf("parameter %q: bad value %q: want 1 or 0", syncParam, v[0]), http.StatusBadRequest)
			return
		}
		if want {
			if o.sync == nil {
				http.Error(w, "this node's flows cannot be synced", http.StatusServiceUnavailable)
				return
			}
			if !o.sync(syncTimeout) {
				http.Error(w, fmt.Sprintf("the node's flow reader did not catch up within %s", syncTimeout),
					http.StatusServiceUnavailable)
				return
			}
		}
		q.Del(syncParam)
		r := req.Clone(req.Context())
		r.URL.RawQuery = q.Encode()
		flows.ServeHTTP(w, r)
	})
}

// observe counts a flow event in the node's metrics.
func (o *Observer) observe(f datapath.Flow) {
	s := metrics.SampleOf(f)
	switch {
	case s.PolicyVerdict && f.Rule != policy.RuleNone:
		s.Policies, s.SourceRepo = o.policiesOf(f.Rule)
	case f.Reason == datapath.ReasonDropDefaultDeny || f.Reason == datapath.ReasonAuditDefaultDeny:
		// A default deny is the doing of the policies that select the pod in that direction:
		// counted against each, so that an audit window is sized per policy.
		if st := o.enf.State(); st != nil {
			for _, ri := range st.EnforcedBy(f.Src, f.Dst, f.Direction) {
				s.Policies = append(s.Policies, ri.Policy.String())
				if ri.Git != nil {
					s.SourceRepo = ri.Git.Repository
				}
			}
		}
	}
	o.metrics.ObserveFlow(s)
	if f.L7 != nil {
		proxy, verdict := "http", "forwarded"
		switch {
		case f.L7.DNS != nil:
			proxy = "dns"
		case f.L7.Kafka != nil:
			proxy = "kafka"
		}
		if f.L7.Denied {
			verdict = "denied"
		}
		o.metrics.ObserveProxyRequest(proxy, verdict)
	}
}

// policiesOf is the deciding policy of a rule, as netpact_policy_verdicts_total names it, and
// the repository it came from, cached per compiled state.
func (o *Observer) policiesOf(id policy.RuleID) ([]string, string) {
	st := o.enf.State()
	if st == nil {
		return nil, ""
	}
	if st != o.ruleState {
		o.ruleState, o.rulePolicies = st, map[policy.RuleID][]string{}
	}
	if p, ok := o.rulePolicies[id]; ok {
		return p[:len(p)-1], p[len(p)-1]
	}
	var p []string
	repo := ""
	if ri := st.Rule(id); ri != nil && ri.Policy.Name != "" {
		p = []string{ri.Policy.String()}
		if ri.Git != nil {
			repo = ri.Git.Repository
		}
	}
	o.rulePolicies[id] = append(p, repo)
	return p, repo
}

// metricsSource is what the node's metrics read at scrape time.
type metricsSource struct{ o *Observer }

func (s metricsSource) Counters() (map[datapath.Reason]datapath.Counter, error) {
	return s.o.dp.Counters()
}

func (s metricsSource) EventsLimited() (map[string]uint64, error) {
	limited, err := s.o.dp.EventsLimited()
	if err != nil {
		return nil, err
	}
	byPod := map[string]uint64{}
	for id, n := range limited {
		name := "(none)" // packets of no endpoint, or of a pod gone since
		if k, ok := s.o.enf.EndpointOf(id); ok && id != 0 {
			name = k.String()
		}
		byPod[name] += n
	}
	return byPod, nil
}

func (s metricsSource) EventsLost() (map[int]uint64, error) { return s.o.dp.EventsLost() }

func (s metricsSource) Fill() (map[string]datapath.MapFill, error) { return s.o.dp.Fill() }

func (s metricsSource) DriftRepairs() uint64 { return s.o.enf.DriftRepairs() }

func (s metricsSource) Sync() metrics.SyncInfo {
	st := s.o.e.Status()
	refused := 0
	for _, p := range st.Policies {
		if p.Error != "" {
			refused++
		}
	}
	return metrics.SyncInfo{LastDuration: s.o.e.lastTook(), Syncs: s.o.e.Syncs(), Policies: st.PolicyCount,
		PoliciesRefused: refused, Endpoints: st.Endpoints, EndpointsFailed: st.FailedEndpoints}
}
