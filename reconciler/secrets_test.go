package reconciler

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/kind"
)

// TestControllerRunsWithTheShippedRBAC: the controller, as the ServiceAccount the shipped
// manifest makes and with the ClusterRole it ships (secrets: get alone), enforces a source whose
// repository needs credentials from a Secret: it reads that Secret by name, uncached, and never
// lists or watches the cluster's Secrets (which that role forbids).
func TestControllerRunsWithTheShippedRBAC(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	applyShipped(t, cfg, "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
	startNodeAgent(t, cfg, "rbac-node")
	srv := newGitServer(t)
	w := srv.clone(t)
	w.commit("allow b", map[string]string{"policies/a.yaml": strings.Replace(allowB, "namespace: app", "namespace: netpact-system", 1)})
	w.push("main")
	authed, ca := basicAuthServer(t, srv)
	if _, err := kc.CoreV1().Secrets("netpact-system").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "git-auth"},
		Data: map[string][]byte{"username": []byte("bot"), "password": []byte("token-123"), "ca.crt": ca}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kc.CoreV1().Secrets("netpact-system").Delete(context.Background(), "git-auth", metav1.DeleteOptions{})
	})
	as := rest.CopyConfig(cfg)
	as.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:netpact-system:netpact-reconciler"}
	cl := startController(t, as)
	src := newObj(authed.URL + "/policies.git")
	src.Name = "rbac"
	src.Spec.SecretRef = &v1alpha1.LocalObjectReference{Name: "git-auth"}
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Create(ctx, src); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Delete(context.Background(), src) })
	waitFor(t, cl, ktypes.NamespacedName{Namespace: src.Namespace, Name: src.Name}, "enforced with the Secret's credentials", func(o *v1alpha1.PolicySource) bool {
		ok, _, _ := ready(o)
		return ok && o.Status.LastEnforcedRevision != ""
	})
}

// TestAdmissionRunsWithTheShippedRBAC: the admission webhook, as the ServiceAccount the shipped
// manifest makes, with its roles and its ValidatingAdmissionPolicy, issues its certificate into
// its Secret and patches the webhook configuration; the create right it needs for that Secret
// does not let it make any other (such as the receiver's netpact-receiver).
func TestAdmissionRunsWithTheShippedRBAC(t *testing.T) {
	cfg := apiServer.Start(t)
	ctx := context.Background()
	applyShipped(t, cfg, "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
		"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
	kc := kubernetes.NewForConfigOrDie(cfg)
	// The configuration the webhook keeps the caBundle of, matching nothing here (the shipped one
	// would send every policy write of the other tests to a Service envtest does not run).
	none, fail, path := admissionv1.SideEffectClassNone, admissionv1.Fail, "/validate-policy"
	if _, err := kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &admissionv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "netpact-policies"},
		Webhooks: []admissionv1.ValidatingWebhook{{Name: "policies.netpact.io", SideEffects: &none, FailurePolicy: &fail, AdmissionReviewVersions: []string{"v1"},
			ClientConfig: admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Namespace: "netpact-system", Name: "netpact-admission", Path: &path}},
			Rules: []admissionv1.RuleWithOperations{{Operations: []admissionv1.OperationType{admissionv1.Create},
				Rule: admissionv1.Rule{APIGroups: []string{"example.com"}, APIVersions: []string{"v1"}, Resources: []string{"nothing"}}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), "netpact-policies", metav1.DeleteOptions{})
		kc.CoreV1().Secrets("netpact-system").Delete(context.Background(), "netpact-webhook-cert", metav1.DeleteOptions{})
	})
	as := rest.CopyConfig(cfg)
	as.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:netpact-system:netpact-admission"}
	akc := kubernetes.NewForConfigOrDie(as)
	// The policy takes effect when the API server's informer has it: until a write it refuses is
	// refused, nothing is proven.
	rogue := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "netpact-receiver"}, Data: map[string][]byte{"token": []byte("attacker")}}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := akc.CoreV1().Secrets("netpact-system").Create(ctx, rogue, metav1.CreateOptions{})
		if err == nil {
			kc.CoreV1().Secrets("netpact-system").Delete(ctx, rogue.Name, metav1.DeleteOptions{})
		} else if strings.Contains(err.Error(), "writes only its certificate's Secret") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the admission webhook's account may create netpact-receiver: %v", err)
		}
	}
	cm := &CertManager{Client: akc, Namespace: "netpact-system", Secret: "netpact-webhook-cert", Webhook: "netpact-policies",
		DNSNames: []string{"netpact-admission.netpact-system.svc"}}
	if err := cm.Ensure(ctx); err != nil {
		t.Fatalf("the webhook's certificate, as its own account: %v", err)
	}
	vwc, err := kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "netpact-policies", metav1.GetOptions{})
	if err != nil || string(vwc.Webhooks[0].ClientConfig.CABundle) != string(cm.CA()) {
		t.Errorf("caBundle not patched by the webhook's own account: %v", err)
	}
}

// applyShipped applies the objects of these kinds from deploy/reconciler; the admission policies
// (which would judge other tests' writes) are deleted when the test ends.
func applyShipped(t *testing.T, cfg *rest.Config, kinds ...string) {
	t.Helper()
	objs, err := kind.ReadManifests(filepath.Join("..", "deploy", "reconciler"), "unused")
	if err != nil {
		t.Fatal(err)
	}
	applier, err := kubeapply.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if !slices.Contains(kinds, o.GetKind()) {
			continue
		}
		if _, err := applier.ApplyOne(context.Background(), o, "test"); err != nil {
			t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
		}
		if strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
			t.Cleanup(func() { applier.Delete(context.Background(), o) })
		}
	}
}
