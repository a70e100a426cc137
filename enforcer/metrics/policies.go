package metrics

import (
	"cmp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// Series of netpact_policy_verdicts_total that name no single policy.
const (
	// PolicyOther is the policy label of the verdicts of the policies outside the top N.
	PolicyOther = "(other)"
	// PolicyNone is the policy label of the verdicts no policy decided (a default deny).
	PolicyNone = "(none)"
)

// policyKey is a netpact_policy_verdicts_total series of one policy, less the policy.
type policyKey struct{ direction, match, action, repo string }

// policyEntry is one policy's verdicts: total ranks it; own says whether it has series of its
// own (else its verdicts count under PolicyOther); series are its series' counters.
type policyEntry struct {
	name   string
	total  uint64
	own    bool
	series map[policyKey]prometheus.Counter
}

// policyTable bounds netpact_policy_verdicts_total's cardinality by the number of policies it
// shows, never by flows: the top policies by verdicts (at most top) have their own series, the
// rest fold into PolicyOther. A verdict counts in the series its policy has when it happens, and
// the ranking is revised at each scrape: a policy that enters the top N starts its own series at
// 0 (what it counted before stays in PolicyOther), one that leaves it loses its series (Prometheus
// sees them go stale). So every series only grows, and the sum over the series is the number of
// verdicts shown; rate() per series, then sum, is exact.
//
// The table itself remembers every policy it saw, up to maxTracked: a node holds a bounded number
// of policies, and past that bound new names count under PolicyOther without being ranked.
type policyTable struct {
	vec        *prometheus.CounterVec
	top        int
	maxTracked int
	entries    map[string]*policyEntry
	owned      int
	other      *policyEntry
	none       *policyEntry
}

func newPolicyTable(top int) *policyTable {
	return &policyTable{
		vec: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netpact_policy_verdicts_total",
			Help: "Policy verdicts by deciding policy (Kind ns/name; the top policies by verdicts, the rest under " +
				"policy=\"(other)\"), direction, match, action and the policy's source repository."},
			[]string{"direction", "match", "action", "policy", "source_repo"}),
		top: top, maxTracked: max(10*top, 1000), entries: map[string]*policyEntry{},
		other: &policyEntry{name: PolicyOther, own: true, series: map[policyKey]prometheus.Counter{}},
		none:  &policyEntry{name: PolicyNone, own: true, series: map[policyKey]prometheus.Counter{}},
	}
}

// observe counts one verdict of each of the deciding policies (none: PolicyNone). The caller
// holds Metrics.mu.
func (t *policyTable) observe(policies []string, k policyKey) {
	if len(policies) == 0 {
		t.inc(t.none, k)
		return
	}
	for _, name := range policies {
		e := t.entries[name]
		if e == nil && len(t.entries) < t.maxTracked {
			// A free place in the top N goes to the first comer: with at most N policies on the
			// node, every one has its own series from its first verdict.
			e = &policyEntry{name: name, own: t.owned < t.top, series: map[policyKey]prometheus.Counter{}}
			if e.own {
				t.owned++
			}
			t.entries[name] = e
		}
		if e == nil {
			t.inc(t.other, k)
			continue
		}
		e.total++
		if e.own {
			t.inc(e, k)
		} else {
			t.inc(t.other, k)
		}
	}
}

func (t *policyTable) inc(e *policyEntry, k policyKey) {
	c, ok := e.series[k]
	if !ok {
		c = counterOf(t.vec, []string{k.direction, k.match, k.action, e.name, k.repo})
		e.series[k] = c
	}
	c.Inc()
}

// rank revises the top N: the policies with the most verdicts keep or get their own series, on a
// tie the one that has them keeps them (so that equal policies do not swap series at each
// scrape). The caller holds Metrics.mu.
func (t *policyTable) rank() {
	if len(t.entries) <= t.top {
		return
	}
	all := make([]*policyEntry, 0, len(t.entries))
	for _, e := range t.entries {
		all = append(all, e)
	}
	slices.SortFunc(all, func(a, b *policyEntry) int {
		if c := cmp.Compare(b.total, a.total); c != 0 {
			return c
		}
		if a.own != b.own {
			if a.own {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.name, b.name)
	})
	for i, e := range all {
		switch want := i < t.top; {
		case want && !e.own:
			e.own = true
		case !want && e.own:
			e.own = false
			t.vec.DeletePartialMatch(prometheus.Labels{"policy": e.name})
			clear(e.series)
		}
	}
	t.owned = min(len(all), t.top)
}

// policyCollector is netpact_policy_verdicts_total, ranked again before each scrape.
type policyCollector struct{ m *Metrics }

func (c *policyCollector) Describe(ch chan<- *prometheus.Desc) { c.m.policies.vec.Describe(ch) }

func (c *policyCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	c.m.policies.rank()
	c.m.mu.Unlock()
	c.m.policies.vec.Collect(ch)
}
