package reconciler

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/netpact/netpact/api/v1alpha1"
)

// TestNodeLagRevisionAndAudit: a node that holds an object at its generation but not at the
// revision the reconciler applied (an annotation-only change) does not enforce the revision yet,
// and neither does one that holds the object in audit mode when Git does not say so.
func TestNodeLagRevisionAndAudit(t *testing.T) {
	obj := &unstructured.Unstructured{}
	obj.SetKind("CiliumNetworkPolicy")
	obj.SetNamespace("prod")
	obj.SetName("web")
	obj.SetAnnotations(map[string]string{v1alpha1.RevisionAnnotation: "main@sha1:2"})
	want := map[string]appliedObject{"prod_web": {obj: obj, uid: "u1", generation: 3}}
	status := func(p v1alpha1.EnforcedPolicy) *unstructured.Unstructured {
		nps := &v1alpha1.NodePolicyStatus{Status: v1alpha1.NodePolicyStatusStatus{Policies: []v1alpha1.EnforcedPolicy{p}}}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(nps)
		if err != nil {
			t.Fatal(err)
		}
		return &unstructured.Unstructured{Object: m}
	}
	for _, tc := range []struct {
		name string
		p    v1alpha1.EnforcedPolicy
		lag  string
	}{
		{"enforced", v1alpha1.EnforcedPolicy{UID: "u1", Generation: 3, Revision: "main@sha1:2"}, ""},
		{"older revision, same generation", v1alpha1.EnforcedPolicy{UID: "u1", Generation: 3, Revision: "main@sha1:1"}, "at revision main@sha1:1, not main@sha1:2"},
		{"audit mode added outside Git", v1alpha1.EnforcedPolicy{UID: "u1", Generation: 3, Revision: "main@sha1:2", Audit: true}, "in audit mode on node n1, but not in Git"},
	} {
		lag, err := nodeLag("n1", status(tc.p), want, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if (tc.lag == "") != (lag == "") || !strings.Contains(lag, tc.lag) {
			t.Errorf("%s: lag %q, want %q", tc.name, lag, tc.lag)
		}
	}
	// In Git too: enforced.
	obj.SetAnnotations(map[string]string{v1alpha1.RevisionAnnotation: "main@sha1:2", "policy.cilium.io/audit-mode": "true"})
	if lag, _ := nodeLag("n1", status(v1alpha1.EnforcedPolicy{UID: "u1", Generation: 3, Revision: "main@sha1:2", Audit: true}), want, nil); lag != "" {
		t.Errorf("audit mode from Git: lag %q", lag)
	}
}
