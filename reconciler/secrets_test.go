package reconciler

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

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
	objs, err := kind.ReadManifests(filepath.Join("..", "deploy", "reconciler"), "unused")
	if err != nil {
		t.Fatal(err)
	}
	applier, err := kubeapply.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		switch o.GetKind() {
		case "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			if _, err := applier.ApplyOne(ctx, o, "test"); err != nil {
				t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
			}
		}
	}
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
