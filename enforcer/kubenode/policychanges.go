package kubenode

import (
	"fmt"
	"sort"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/policy"
)

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
	md := map[string]any{"name": np.Name, "namespace": np.Namespace}
	if ann := policyAnnotations(np.Annotations); ann != nil {
		md["annotations"] = ann
	}
	obj := map[string]any{
		"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": md,
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
	if ann := policyAnnotations(u.GetAnnotations()); ann != nil {
		md["annotations"] = ann
	}
	obj := map[string]any{"apiVersion": ciliumv2.GroupVersion, "kind": u.GetKind(), "metadata": md}
	for _, f := range []string{"spec", "specs"} {
		if v, ok := u.Object[f]; ok {
			obj[f] = v
		}
	}
	return yaml.Marshal(obj)
}

// policyAnnotations are the annotations of a policy object that change what the engine does
// with it (audit mode) or say where it came from (the reconciler's source annotations); nil
// when it has none of them.
func policyAnnotations(all map[string]string) map[string]string {
	var out map[string]string
	for _, k := range []string{policy.AnnotationAudit, policy.AnnotationCiliumAudit, policy.AnnotationSourceRepository,
		policy.AnnotationSourcePath, policy.AnnotationSourceRevision, policy.AnnotationSourceRules} {
		if v, ok := all[k]; ok {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}
