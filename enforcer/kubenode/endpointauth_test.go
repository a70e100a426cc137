package kubenode

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/internal/kubetest"
)

// apiServer is this package's kube-apiserver and etcd, started by the first test that needs it.
var apiServer kubetest.Server

func TestMain(m *testing.M) {
	code := m.Run()
	if err := apiServer.Stop(); err != nil {
		os.Stderr.WriteString("stop the API server: " + err.Error() + "\n")
		code = 1
	}
	os.Exit(code)
}

// TestEndpointAuth: against a real API server, the node's endpoints answer a trusted source (the
// node, the API server) and loopback without a token; any other caller (a pod) needs a bearer
// token the API server authenticates and authorizes for get on the path. /readyz stays open.
func TestEndpointAuth(t *testing.T) {
	cfg := apiServer.Start(t)
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := "np-auth"
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kc.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	token := func(sa string) string {
		if _, err := kc.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := kc.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	reader, nobody := token("flows-reader"), token("nobody")
	if _, err := kc.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "np-auth-flows"},
		Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/flows"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kc.RbacV1().ClusterRoles().Delete(context.Background(), "np-auth-flows", metav1.DeleteOptions{})
	})
	if _, err := kc.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "np-auth-flows"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "np-auth-flows"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "flows-reader", Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kc.RbacV1().ClusterRoleBindings().Delete(context.Background(), "np-auth-flows", metav1.DeleteOptions{})
	})

	node := netip.MustParseAddr("172.18.0.2")
	auth := &EndpointAuth{Client: kc, Trusted: func(ip netip.Addr) bool { return ip == node }, Open: []string{"/readyz"}}
	h := auth.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("served")) }))
	for _, tc := range []struct {
		name, from, path, token string
		want                    int
	}{
		{"a pod without a token", "10.244.1.5:40000", "/flows", "", http.StatusUnauthorized},
		{"a pod's /readyz", "10.244.1.5:40000", "/readyz", "", http.StatusOK},
		{"the node", "172.18.0.2:40000", "/flows", "", http.StatusOK},
		{"loopback", "127.0.0.1:40000", "/status", "", http.StatusOK},
		{"a token allowed /flows", "10.244.1.5:40000", "/flows", reader, http.StatusOK},
		{"the same token on /status", "10.244.1.5:40000", "/status", reader, http.StatusForbidden},
		{"a token allowed nothing", "10.244.1.5:40000", "/flows", nobody, http.StatusForbidden},
		{"a forged token", "10.244.1.5:40000", "/flows", "eyJhbGciOiJub25lIn0.e30.", http.StatusUnauthorized},
		{"a token allowed /flows, again (cached)", "10.244.1.5:40000", "/flows", reader, http.StatusOK},
	} {
		r := httptest.NewRequest("GET", tc.path, nil)
		r.RemoteAddr = tc.from
		if tc.token != "" {
			r.Header.Set("Authorization", "Bearer "+tc.token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s: GET %s from %s: %d %q, want %d", tc.name, tc.path, tc.from, w.Code, w.Body.String(), tc.want)
		}
	}
}
