package kubenode

import (
	"cmp"
	"context"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/policy"
)

// runDriftRepair writes back, every DriftInterval until ctx ends, the datapath entries that
// something other than the enforcer changed, and logs each one.
func (e *Enforcement) runDriftRepair(ctx context.Context) {
	if e.cfg.Enforcer == nil {
		return
	}
	e.cfg.Enforcer.RunDriftRepair(ctx, e.cfg.DriftInterval, func(r enforcer.DriftRepair) {
		attrs := []any{"map", r.Map, "endpoint", r.Endpoint, "key", r.Key,
			"found", cmp.Or(r.Found, "nothing"), "wrote", cmp.Or(r.Wrote, "nothing (deleted)")}
		if r.Pod != (policy.EndpointKey{}) {
			attrs = append(attrs, "pod", r.Pod.String())
		}
		e.cfg.Log.Warn("datapath drift repaired", attrs...)
	}, func(err error) {
		e.cfg.Log.Error("datapath drift repair", "err", err)
	})
}
