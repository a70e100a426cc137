package policy

import (
	"slices"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/api/ciliumv2"
)

// Label sources, as Cilium writes them before the first colon of a selector key.
const (
	sourceAny      = "any"
	sourceK8s      = "k8s"
	sourceReserved = "reserved"
	sourceCIDR     = "cidr"
)

// Labels Cilium derives for every pod; they take part in its identity and can be selected.
const (
	LabelPodNamespace   = "io.kubernetes.pod.namespace"
	LabelNamespacePfx   = "io.cilium.k8s.namespace.labels."
	LabelServiceAccount = "io.cilium.k8s.policy.serviceaccount"
	LabelCluster        = "io.cilium.k8s.policy.cluster"
	// LabelNamespaceName is the label the API server puts on every namespace.
	LabelNamespaceName = "kubernetes.io/metadata.name"
	// ciliumLabelPrefix is the prefix Cilium keeps for the labels it derives and owns; it is
	// matched without a trailing dot, as Cilium matches it.
	ciliumLabelPrefix = "io.cilium.k8s"
)

// reservedPodLabel reports whether a pod label's key is one Cilium derives itself (namespace,
// namespace labels, service account, cluster, anything under io.cilium.k8s). Cilium drops such
// labels from a pod, so that whoever may create a pod cannot claim a namespace label or service
// account it does not have; they never take part in the pod's identity.
func reservedPodLabel(key string) bool {
	return strings.HasPrefix(key, ciliumLabelPrefix) || key == LabelPodNamespace
}

// splitSource splits "k8s:app" into ("k8s", "app"); a key without a known source is "any".
func splitSource(k string) (source, key string) {
	if i := strings.IndexByte(k, ':'); i > 0 {
		switch src := k[:i]; src {
		case sourceAny, sourceK8s, sourceReserved, sourceCIDR, "container", "unspec", "cilium-generated", "kvstore", "fqdn", "cidrgroup", "node":
			return src, k[i+1:]
		}
	}
	return sourceAny, k
}

type labelValue struct{ source, value string }

// labelSet is the security-relevant labels of an identity, by key.
type labelSet map[string]labelValue

func (ls labelSet) String() string {
	parts := make([]string, 0, len(ls))
	for k, v := range ls {
		parts = append(parts, v.source+":"+k+"="+v.value)
	}
	sort.Strings(parts)
	return strings.Join(parts, ";")
}

// Sorted returns the labels as "source:key=value" strings in order.
func (ls labelSet) Sorted() []string {
	s := ls.String()
	if s == "" {
		return nil
	}
	return strings.Split(s, ";")
}

// identityRelevant reports whether a pod label takes part in the pod's identity, following
// Cilium's default label filter: Kubernetes bookkeeping labels are left out, so selecting on
// them matches nothing, exactly as on a Cilium cluster.
func identityRelevant(key string) bool {
	if strings.HasPrefix(key, "app.kubernetes.io") {
		return true
	}
	for _, p := range []string{"io.kubernetes", "kubernetes.io", "statefulset.kubernetes.io/pod-name",
		"apps.kubernetes.io/pod-index", "batch.kubernetes.io/job-completion-index", "batch.kubernetes.io/controller-uid",
		"k8s.io", "pod-template-generation", "pod-template-hash", "controller-revision-hash", "annotation", "etcd_node"} {
		if strings.HasPrefix(key, p) {
			return false
		}
	}
	return !strings.Contains(key, "beta.kubernetes.io")
}

// podLabels builds the identity labels of a pod as Cilium does: its own labels without the
// reserved ones, then the labels derived from its namespace and spec.
func podLabels(cluster string, ns *Namespace, ep *Endpoint) labelSet {
	ls := labelSet{}
	for k, v := range ep.Labels {
		if identityRelevant(k) && !reservedPodLabel(k) {
			ls[k] = labelValue{sourceK8s, v}
		}
	}
	ls[LabelPodNamespace] = labelValue{sourceK8s, ep.Namespace}
	if ns != nil {
		for k, v := range ns.Labels {
			ls[LabelNamespacePfx+k] = labelValue{sourceK8s, v}
		}
	}
	ls[LabelNamespacePfx+LabelNamespaceName] = labelValue{sourceK8s, ep.Namespace}
	sa := ep.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	ls[LabelServiceAccount] = labelValue{sourceK8s, sa}
	ls[LabelCluster] = labelValue{sourceK8s, cluster}
	return ls
}

type selOp uint8

const (
	opIn selOp = iota
	opNotIn
	opExists
	opDoesNotExist
)

type requirement struct {
	source, key string
	op          selOp
	values      []string
}

// selector is a compiled label selector over identity labels. An empty selector matches every
// identity it is evaluated against; callers choose the candidate identities.
type selector struct {
	reqs []requirement
	str  string
}

func (s *selector) matches(ls labelSet) bool {
	for i := range s.reqs {
		r := &s.reqs[i]
		lv, ok := ls[r.key]
		if ok && r.source != sourceAny && lv.source != r.source {
			ok = false
		}
		switch r.op {
		case opIn:
			if !ok || !slices.Contains(r.values, lv.value) {
				return false
			}
		case opNotIn:
			if ok && slices.Contains(r.values, lv.value) {
				return false
			}
		case opExists:
			if !ok {
				return false
			}
		case opDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

// hasKey reports whether the selector constrains a key (any source), or a key with a prefix.
func (s *selector) hasKey(key string, prefix bool) bool {
	for _, r := range s.reqs {
		if r.key == key || (prefix && strings.HasPrefix(r.key, key)) {
			return true
		}
	}
	return false
}

func (s *selector) hasSource(source string) bool {
	for _, r := range s.reqs {
		if r.source == source {
			return true
		}
	}
	return false
}

func (s *selector) add(r requirement) {
	sort.Strings(r.values)
	s.reqs = append(s.reqs, r)
}

// finish sorts the requirements and computes the canonical string used to share work between
// equal selectors.
func (s *selector) finish() *selector {
	sort.Slice(s.reqs, func(i, j int) bool {
		a, b := s.reqs[i], s.reqs[j]
		if a.key != b.key {
			return a.key < b.key
		}
		if a.source != b.source {
			return a.source < b.source
		}
		if a.op != b.op {
			return a.op < b.op
		}
		return strings.Join(a.values, ",") < strings.Join(b.values, ",")
	})
	var b strings.Builder
	for _, r := range s.reqs {
		b.WriteString(r.source)
		b.WriteByte(':')
		b.WriteString(r.key)
		b.WriteByte(" =!?"[r.op])
		b.WriteString(strings.Join(r.values, ","))
		b.WriteByte(';')
	}
	s.str = b.String()
	return s
}

func opFrom(o metav1.LabelSelectorOperator) selOp {
	switch o {
	case metav1.LabelSelectorOpNotIn:
		return opNotIn
	case metav1.LabelSelectorOpExists:
		return opExists
	case metav1.LabelSelectorOpDoesNotExist:
		return opDoesNotExist
	}
	return opIn
}

// ciliumSelector compiles a Cilium endpoint selector; keys keep their source prefixes.
func ciliumSelector(es *ciliumv2.EndpointSelector) *selector {
	s := &selector{}
	for k, v := range es.MatchLabels {
		src, key := splitSource(k)
		s.add(requirement{source: src, key: key, op: opIn, values: []string{v}})
	}
	for _, e := range es.MatchExpressions {
		src, key := splitSource(e.Key)
		s.add(requirement{source: src, key: key, op: opFrom(e.Operator), values: append([]string(nil), e.Values...)})
	}
	return s
}

// k8sSelector compiles a Kubernetes label selector over pod labels (prefix "") or over namespace
// labels (prefix LabelNamespacePfx); a nil selector yields nil.
func k8sSelector(ls *metav1.LabelSelector, keyPrefix string, into *selector) {
	if ls == nil {
		return
	}
	for k, v := range ls.MatchLabels {
		into.add(requirement{source: sourceK8s, key: keyPrefix + k, op: opIn, values: []string{v}})
	}
	for _, e := range ls.MatchExpressions {
		into.add(requirement{source: sourceK8s, key: keyPrefix + e.Key, op: opFrom(e.Operator), values: append([]string(nil), e.Values...)})
	}
}

// namespaceOf returns the namespace a selector is limited to, if it pins exactly one.
func (s *selector) namespaceOf() (string, bool) {
	for _, r := range s.reqs {
		if r.key == LabelPodNamespace && r.op == opIn && len(r.values) == 1 {
			return r.values[0], true
		}
	}
	return "", false
}
