package kubenode

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/netpact/netpact/policy"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ktypes "k8s.io/apimachinery/pkg/types"

	"github.com/netpact/netpact/api/v1alpha1"
)

// FieldManager is the server-side apply field manager of the enforcer's status writes.
const FieldManager = "netpact-enforcer"

// statusLocked makes the NodePolicyStatus of the sync just done the one to write.
func (e *Enforcement) statusLocked(err error, start time.Time, took time.Duration) v1alpha1.NodePolicyStatusStatus {
	st := v1alpha1.NodePolicyStatusStatus{Mode: string(e.cfg.Mode)}
	st.Policies, st.Revisions, st.ErrorCount = e.policiesStatusLocked()
	for _, p := range st.Policies {
		if p.Audit {
			st.Audited = append(st.Audited, policy.Key{Kind: policy.Kind(p.Kind), Namespace: p.Namespace, Name: p.Name}.String())
		}
	}
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
			ep.Generation, ep.Revision, ep.Audit = po.goodGeneration, po.goodRevision, po.good.Audit
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

// runStatusWriter writes the status of the newest sync whenever one completes, until ctx ends.
func (e *Enforcement) runStatusWriter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.statusDue:
		}
		e.mu.Lock()
		st := e.status
		e.mu.Unlock()
		e.writeStatus(ctx, st)
	}
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

// Status is the last sync's status.
func (e *Enforcement) Status() v1alpha1.NodePolicyStatusStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}
