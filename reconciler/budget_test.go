package reconciler

import (
	"context"
	"fmt"
	"strings"
	"testing"

	admissionv1api "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/policy"
)

// cidrCNP is a CNP in ns whose egress names n distinct /32s in 10.first.0.0/16.
func cidrCNP(ns, name string, first, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":%q,"namespace":%q},`+
		`"spec":{"endpointSelector":{},"egress":[{"toCIDR":[`, name, ns)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"10.%d.%d.%d/32"`, first, i/256, i%256)
	}
	b.WriteString("]}]}}")
	return b.String()
}

// TestAdmissionNamespaceBudget: against a real API server, the webhook counts the CIDRs of the
// namespace's other policies and refuses one that would pass the namespace's budget, naming it;
// replacing a policy counts it once; another namespace has a budget of its own. validate refuses
// the same bundle at the policy that crosses the budget.
func TestAdmissionNamespaceBudget(t *testing.T) {
	cfg := apiServer.Start(t)
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := "np-budget"
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kc.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	applier, err := kubeapply.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"big-1", "big-2"} {
		objs, err := kubeapply.Decode(name, []byte(cidrCNP(ns, name, 100+i, 15000)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := applier.ApplyOne(ctx, objs[0], "test"); err != nil {
			t.Fatal(err)
		}
	}
	reader, err := client.New(cfg, client.Options{Scheme: runtime.NewScheme()})
	if err != nil {
		t.Fatal(err)
	}
	h := &AdmissionHandler{NamespaceCIDRs: NamespaceCIDRCounter(reader)}
	review := func(op admissionv1api.Operation, namespace, obj string) *admissionv1api.AdmissionResponse {
		return h.review(&admissionv1api.AdmissionRequest{UID: "u", Operation: op, Namespace: namespace, Name: "x",
			Kind:   metav1.GroupVersionKind{Group: "cilium.io", Version: "v2", Kind: "CiliumNetworkPolicy"},
			Object: runtime.RawExtension{Raw: []byte(obj)}})
	}
	if r := review(admissionv1api.Create, ns, cidrCNP(ns, "third", 110, 3000)); r.Allowed ||
		!strings.Contains(r.Result.Message, "namespace np-budget would name 33000 CIDRs with this policy's 3000, more than the 32768") {
		t.Errorf("30,000 + 3,000 CIDRs: allowed %v, %v", r.Allowed, r.Result)
	}
	if r := review(admissionv1api.Create, ns, cidrCNP(ns, "third", 110, 2000)); !r.Allowed {
		t.Errorf("30,000 + 2,000 CIDRs: refused: %v", r.Result)
	}
	if r := review(admissionv1api.Update, ns, cidrCNP(ns, "big-1", 100, 16000)); !r.Allowed {
		t.Errorf("big-1 replaced by 16,000 CIDRs (31,000 in all): refused: %v", r.Result)
	}
	if r := review(admissionv1api.Create, "np-other", cidrCNP("np-other", "third", 110, 16000)); !r.Allowed {
		t.Errorf("another namespace's 16,000 CIDRs: refused: %v", r.Result)
	}

	// validate: the same namespace's three policies in one bundle.
	bundle := strings.Join([]string{cidrCNP(ns, "big-1", 100, 15000), cidrCNP(ns, "big-2", 101, 15000), cidrCNP(ns, "third", 110, 3000)}, "\n---\n")
	_, err = policy.LoadBytes("bundle.yaml", []byte(bundle), policy.LoadOptions{})
	if err == nil || !strings.Contains(err.Error(), "CiliumNetworkPolicy np-budget/third: spec: namespace np-budget would name 33000 CIDRs") {
		t.Errorf("validate of 33,000 CIDRs in one namespace: %.400v", err)
	}
}
