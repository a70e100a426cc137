package reconciler

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/netpact/netpact/policy"
)

// paperNode enforces nothing: enough for what a reconcile reports before the datapath.
type paperNode struct{}

func (paperNode) Enforce(*policy.Cluster, []*policy.Policy) error { return nil }
func (paperNode) Verify() error                                   { return nil }

// TestStatusWarnings: a revision whose policies are valid but will not do what they read as is
// enforced, and its status lists the warnings with file:line in the repository; a revision
// that adds the missing dns rule clears the toFQDNs one.
func TestStatusWarnings(t *testing.T) {
	srv := newGitServer(t)
	w := srv.clone(t)
	seed := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "policies", "000-l7-dns-and-namespace-default-deny", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	w.commit("seed 000's toFQDNs policy", map[string]string{"policies/allow-external-api.yaml": seed("allow-external-api.yaml")})
	w.push("main")
	obj := newObj(srv.httpURL())
	target := &NodeTarget{NodeName: "paper", Node: paperNode{}, Cluster: func() *policy.Cluster { return &policy.Cluster{} }}
	r := New(obj, &Source{URL: obj.Spec.URL, Ref: obj.Spec.Ref, Timeout: 5 * time.Second}, target)
	r.WorkDir = t.TempDir()
	if err := r.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "policies/allow-external-api.yaml:12:7: CiliumNetworkPolicy default/allow-external-api: spec.egress[0].toFQDNs: toFQDNs selects addresses learned from DNS answers, but no egress rule with rules.dns on port 53 applies to these pods"
	if st := r.Status(); len(st.Status.Warnings) != 1 || !strings.HasPrefix(st.Status.Warnings[0], want) {
		t.Fatalf("warnings %q, want one starting %q", st.Status.Warnings, want)
	}

	dns, err := os.ReadFile(filepath.Join("..", "policy", "testdata", "warn", "dns-for-backend.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	w.commit("the dns rule it needs", map[string]string{"policies/dns-for-backend.yaml": string(dns)})
	w.push("main")
	if err := r.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := r.Status(); len(st.Status.Warnings) != 0 {
		t.Errorf("warnings %q after the dns rule, want none", st.Status.Warnings)
	}
}

// TestAdmissionWarnsOfKafkaRules: the webhook admits a policy with Kafka rules and says, as a
// warning kubectl prints, that they follow Cilium 1.19's semantics (Cilium 1.20 removed them).
func TestAdmissionWarnsOfKafkaRules(t *testing.T) {
	obj := `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"k","namespace":"n"},"spec":{` +
		`"endpointSelector":{"matchLabels":{"app":"kafka"}},"ingress":[{"toPorts":[{"ports":[{"port":"9092","protocol":"TCP"}],` +
		`"rules":{"kafka":[{"role":"produce","topic":"orders"}]}}]}]}}`
	resp := (&AdmissionHandler{}).review(&admissionv1.AdmissionRequest{UID: "u", Operation: admissionv1.Create,
		Kind: metav1.GroupVersionKind{Group: "cilium.io", Version: "v2", Kind: "CiliumNetworkPolicy"}, Name: "k", Namespace: "n",
		Object: runtime.RawExtension{Raw: []byte(obj)}})
	want := "spec.ingress[0].toPorts[0].rules.kafka: kafka rules follow Cilium 1.19's semantics"
	if !resp.Allowed || len(resp.Warnings) != 1 || !strings.HasPrefix(resp.Warnings[0], want) {
		t.Errorf("allowed %v, warnings %q; want one starting %q", resp.Allowed, resp.Warnings, want)
	}
}
