package reconciler

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	admissionv1api "k8s.io/api/admission/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/policy"
)

// startAdmission serves the admission webhook on 127.0.0.1 with a certificate netpact issues and
// stores, and registers it for CNPs, CCNPs and NetworkPolicies (caBundle patched by netpact).
func startAdmission(t *testing.T, kc kubernetes.Interface, ns string) *CertManager {
	t.Helper()
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fail, none := admissionv1.Fail, admissionv1.SideEffectClassNone
	url := fmt.Sprintf("https://127.0.0.1:%d/validate-policy", l.Addr().(*net.TCPAddr).Port)
	vwc := &admissionv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "netpact-test-policies"},
		Webhooks: []admissionv1.ValidatingWebhook{{Name: "policies.netpact.io", ClientConfig: admissionv1.WebhookClientConfig{URL: &url},
			Rules: []admissionv1.RuleWithOperations{{Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
				Rule: admissionv1.Rule{APIGroups: []string{"cilium.io"}, APIVersions: []string{"v2"}, Resources: []string{"ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"}}},
				{Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
					Rule: admissionv1.Rule{APIGroups: []string{"networking.k8s.io"}, APIVersions: []string{"v1"}, Resources: []string{"networkpolicies"}}}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"netpact-admission-test": "true"}},
			FailurePolicy:     &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}}}}
	vwc.Webhooks[0].NamespaceSelector = nil
	if ns != "" {
		vwc.Webhooks[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	}
	if _, err := kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, vwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm := &CertManager{Client: kc, Namespace: "default", Secret: "netpact-test-webhook-cert", Webhook: vwc.Name,
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
	if err := cm.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/validate-policy", &AdmissionHandler{})
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{GetCertificate: cm.GetCertificate, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 5 * time.Second}
	// Every call of the API server makes a handshake: a rotation test must meet the certificate
	// served now, not a connection kept from before.
	srv.SetKeepAlivesEnabled(false)
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() {
		srv.Close()
		kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, vwc.Name, metav1.DeleteOptions{})
		kc.CoreV1().Secrets("default").Delete(ctx, cm.Secret, metav1.DeleteOptions{})
	})
	awaitWebhook(t, kc, ns)
	return cm
}

// awaitWebhook waits until the API server calls the webhook with the CA it was given: it reads
// webhook configurations through an informer, so a configuration just created or patched takes
// effect a moment later, and a test's first write could go unjudged or fail the handshake.
func awaitWebhook(t *testing.T, kc kubernetes.Interface, ns string) {
	t.Helper()
	if ns == "" {
		ns = "default"
	}
	ctx := context.Background()
	probe := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "webhook-probe", "namespace": ns},
		"spec": map[string]any{"endpointSelector": map[string]any{}, "ingress": []any{map[string]any{"toPorts": []any{map[string]any{
			"ports": []any{map[string]any{"port": "80", "protocol": "TCP"}}, "rules": map[string]any{"http": []any{map[string]any{"path": "("}}}}}}}}}}
	res := dynamic.NewForConfigOrDie(apiServer.Start(t)).Resource(schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}).Namespace(ns)
	var last error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		_, last = res.Create(ctx, probe, metav1.CreateOptions{})
		if last == nil {
			res.Delete(ctx, "webhook-probe", metav1.DeleteOptions{}) // not judged yet
			continue
		}
		if strings.Contains(last.Error(), "netpact refuses this policy") {
			return
		}
	}
	t.Fatalf("the API server does not call the webhook: %v", last)
}

// TestAdmissionRefusesWhatTheLoaderRefuses applies each file of the loader's invalid policies
// through a real API server with netpact's webhook: every object the API server would store is
// refused, with the loader's field path and message; a valid policy is admitted.
func TestAdmissionRefusesWhatTheLoaderRefuses(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	const ns = "admission"
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cm := startAdmission(t, kc, ns)
	vwc, err := kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "netpact-test-policies", metav1.GetOptions{})
	if err != nil || string(vwc.Webhooks[0].ClientConfig.CABundle) != string(cm.CA()) {
		t.Fatalf("caBundle not patched with netpact's CA: %v", err)
	}
	applier, err := kubeapply.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("../policy/testdata/invalid/*.yaml")
	if len(files) < 40 {
		t.Fatalf("only %d invalid policies found", len(files))
	}
	var byWebhook, byAPI, notObjects []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, lerr := policy.Load([]string{f}, policy.LoadOptions{})
		var list policy.ErrorList
		if !errors.As(lerr, &list) {
			t.Fatalf("%s: the loader does not refuse it: %v", f, lerr)
		}
		objs, err := kubeapply.Decode(f, data)
		if err != nil || len(objs) != 1 || objs[0].GetName() == "" {
			notObjects = append(notObjects, filepath.Base(f)) // kubectl would not send it: not one named object
			continue
		}
		o := objs[0]
		if o.GetKind() != "CiliumClusterwideNetworkPolicy" {
			o.SetNamespace(ns)
		}
		stored, err := applier.ApplyOne(ctx, o, "kubectl")
		if err == nil {
			applier.Delete(ctx, o)
			if o.GetKind() == "CiliumClusterwideNetworkPolicy" && o.GetNamespace() != "" && stored.GetNamespace() == "" {
				// The API server drops the namespace of a cluster-scoped object before admission:
				// what it stores is valid.
				byAPI = append(byAPI, filepath.Base(f)+": namespace dropped by the API server (cluster-scoped)")
				continue
			}
			t.Errorf("%s: admitted; the loader says: %v", filepath.Base(f), lerr)
			continue
		}
		if !strings.Contains(err.Error(), "netpact refuses this policy") {
			byAPI = append(byAPI, filepath.Base(f)+": "+err.Error())
			continue
		}
		// The loader's field path and message, as for the file (the object's namespace may differ).
		found := false
		for _, e := range list {
			if strings.Contains(err.Error(), e.Field+": "+e.Message) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: refused without the loader's message %q: %v", filepath.Base(f), list[0].Field+": "+list[0].Message, err)
		}
		byWebhook = append(byWebhook, filepath.Base(f))
	}
	sort.Strings(byAPI)
	t.Logf("%d of %d refused by netpact's webhook; %d by the API server itself; %d not one object kubectl would send (%s)",
		len(byWebhook), len(files), len(byAPI), len(notObjects), strings.Join(notObjects, ", "))
	for _, s := range byAPI {
		t.Logf("API server: %s", s)
	}
	if len(byWebhook) < 29 {
		t.Errorf("only %d files reached and were refused by the webhook", len(byWebhook))
	}
	good := testPolicy("a-allows-b.yaml")
	objs, _ := kubeapply.Decode("good", []byte(good))
	objs[0].SetNamespace(ns)
	if _, err := applier.ApplyOne(ctx, objs[0], "kubectl"); err != nil {
		t.Errorf("a valid policy refused: %v", err)
	}
	applier.Delete(ctx, objs[0])

	// Rotation: a certificate with less than a third of its life left is replaced, signed by the
	// same CA: the caBundle the API server holds stays as it is.
	before, beforeLeaf := cm.CA(), served(t, cm)
	cm.Now = func() time.Time { return time.Now().Add(300 * 24 * time.Hour) }
	if err := cm.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	vwc, _ = kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "netpact-test-policies", metav1.GetOptions{})
	if served(t, cm) == beforeLeaf || string(cm.CA()) != string(before) || string(vwc.Webhooks[0].ClientConfig.CABundle) != string(before) {
		t.Errorf("certificate not renewed, or renewed under another CA (the caBundle would have to follow)")
	}
	// A renewal now (a name added: the certificate no longer covers its names), and the API
	// server calls the webhook through the new certificate at once: a policy the loader refuses
	// is refused by netpact, a valid one admitted. Were the old certificate still served, or the
	// new one signed by a CA the API server does not know yet, every policy write would fail here.
	cm.Now = nil
	beforeLeaf = served(t, cm)
	cm.DNSNames = append(cm.DNSNames, "rotated.netpact.test")
	if err := cm.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if served(t, cm) == beforeLeaf {
		t.Fatal("no new certificate for a new name")
	}
	bad := strings.Replace(good, "  - fromEndpoints: [{matchLabels: {app: b}}]\n",
		"  - fromEndpoints: [{matchLabels: {app: b}}]\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"(\"}]}}]\n", 1)
	badObjs, _ := kubeapply.Decode("bad", []byte(bad))
	badObjs[0].SetNamespace(ns)
	if _, err := applier.ApplyOne(ctx, badObjs[0], "kubectl"); err == nil || !strings.Contains(err.Error(), "netpact refuses this policy") {
		t.Errorf("after a rotation, a policy the loader refuses: %v", err)
		applier.Delete(ctx, badObjs[0])
	}
	if _, err := applier.ApplyOne(ctx, objs[0], "kubectl"); err != nil {
		t.Errorf("after a rotation, a valid policy refused: %v", err)
	}
	applier.Delete(ctx, objs[0])
}

// TestAdmissionHandlerHostileRequests: what a caller of the webhook's port that is not the API
// server gets: no answer but an error for a wrong method, type, body or size; a review without an
// object is refused, not admitted.
func TestAdmissionHandlerHostileRequests(t *testing.T) {
	h := &AdmissionHandler{}
	do := func(method, ctype string, body []byte) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, "/validate-policy", bytes.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	for _, c := range []struct {
		name, method, ctype string
		body                []byte
		code                int
	}{
		{"GET", http.MethodGet, "application/json", nil, http.StatusMethodNotAllowed},
		{"not JSON", http.MethodPost, "text/plain", []byte("x"), http.StatusUnsupportedMediaType},
		{"garbage", http.MethodPost, "application/json", []byte("{{{"), http.StatusBadRequest},
		{"no request", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), http.StatusBadRequest},
		{"over 4 MiB", http.MethodPost, "application/json", bytes.Repeat([]byte(" "), maxAdmissionBody+2), http.StatusRequestEntityTooLarge},
	} {
		if rec := do(c.method, c.ctype, c.body); rec.Code != c.code {
			t.Errorf("%s: %d, want %d", c.name, rec.Code, c.code)
		}
	}
	for _, obj := range []string{``, `"a string"`, `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"x"}}`,
		`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}`} {
		body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","operation":"CREATE",` +
			`"kind":{"group":"cilium.io","version":"v2","kind":"CiliumNetworkPolicy"},"name":"x","namespace":"n"`
		if obj != "" {
			body += `,"object":` + obj
		}
		body += `}}`
		rec := do(http.MethodPost, "application/json", []byte(body))
		var review admissionv1api.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &review); err != nil || review.Response == nil {
			t.Fatalf("object %q: no review in the answer: %v %s", obj, err, rec.Body.String())
		}
		if review.Response.Allowed || review.Response.UID != "u1" {
			t.Errorf("object %q: allowed %v uid %q, want refused with the request's uid", obj, review.Response.Allowed, review.Response.UID)
		}
	}
}

// TestCertManagerRetriesAtStart: at start-up the webhook configuration may not exist yet: the
// certificate manager keeps trying, and succeeds once it does, instead of failing the start.
func TestCertManagerRetriesAtStart(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const ns = "cert-retry"
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cm := &CertManager{Client: kc, Namespace: ns, Secret: "cert", Webhook: "netpact-retry-policies", DNSNames: []string{"x.cert-retry.svc"}}
	failures := 0
	done := make(chan error, 1)
	go func() { done <- cm.EnsureRetrying(ctx, func(error) { failures++ }) }()
	time.Sleep(1500 * time.Millisecond) // a start-up whose webhook configuration comes later
	none := admissionv1.SideEffectClassNone
	fail := admissionv1.Fail
	path := "/validate-policy"
	if _, err := kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, &admissionv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "netpact-retry-policies"},
		Webhooks: []admissionv1.ValidatingWebhook{{Name: "retry.netpact.io", SideEffects: &none, FailurePolicy: &fail, AdmissionReviewVersions: []string{"v1"},
			ClientConfig: admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Namespace: ns, Name: "x", Path: &path}},
			Rules: []admissionv1.RuleWithOperations{{Operations: []admissionv1.OperationType{admissionv1.Create},
				Rule: admissionv1.Rule{APIGroups: []string{"example.com"}, APIVersions: []string{"v1"}, Resources: []string{"nothing"}}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(context.Background(), "netpact-retry-policies", metav1.DeleteOptions{})
	})
	if err := <-done; err != nil {
		t.Fatalf("the certificate manager gave up: %v", err)
	}
	if failures == 0 {
		t.Error("no attempt failed before the configuration existed")
	}
	vwc, _ := kc.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "netpact-retry-policies", metav1.GetOptions{})
	if string(vwc.Webhooks[0].ClientConfig.CABundle) != string(cm.CA()) {
		t.Error("the caBundle was not patched once the configuration existed")
	}
}

// TestAdmissionReplicasAcrossRotation: two replicas share the Secret; one renews the certificate
// under a new CA (the Secret holds no CA key, as an earlier version wrote it) while the other
// still serves the old one (it reads the Secret again only at its next check). The API server
// calls the replica with the old certificate and must still trust it: the caBundle keeps the
// previous CA. Then that replica takes the new certificate, and is trusted too.
func TestAdmissionReplicasAcrossRotation(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	const ns = "admission-replicas"
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	serving := startAdmission(t, kc, ns) // the replica the API server calls
	// The Secret as a version of netpact that kept no CA key wrote it: the next renewal makes a
	// new CA.
	sec, err := kc.CoreV1().Secrets(serving.Namespace).Get(ctx, serving.Secret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(sec.Data, "ca.key")
	if _, err := kc.CoreV1().Secrets(serving.Namespace).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The other replica renews now: it is configured with one more name than the certificate has.
	other := &CertManager{Client: kc, Namespace: serving.Namespace, Secret: serving.Secret, Webhook: serving.Webhook,
		DNSNames: append(append([]string(nil), serving.DNSNames...), "renewed.netpact.test"), IPs: serving.IPs}
	if err := other.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if string(other.CA()) == string(serving.CA()) {
		t.Fatal("the other replica did not renew under a new CA")
	}
	applier, err := kubeapply.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := kubeapply.Decode("good", []byte(testPolicy("a-allows-b.yaml")))
	objs[0].SetNamespace(ns)
	if _, err := applier.ApplyOne(ctx, objs[0], "kubectl"); err != nil {
		t.Errorf("a replica still serving the previous certificate is not trusted: %v", err)
	}
	applier.Delete(ctx, objs[0])
	// The serving replica's next check takes the renewed certificate from the Secret (it covers
	// its names) instead of issuing its own.
	if err := serving.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if string(serving.CA()) != string(other.CA()) {
		t.Error("the serving replica issued its own certificate instead of reading the renewed one")
	}
	if _, err := applier.ApplyOne(ctx, objs[0], "kubectl"); err != nil {
		t.Errorf("after taking the renewed certificate: %v", err)
	}
	applier.Delete(ctx, objs[0])
}

// served is the serial number of the certificate cm serves.
func served(t *testing.T, cm *CertManager) string {
	t.Helper()
	c, err := cm.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.String()
}

// TestCertManagerRefusesAPairItsCADidNotSign: a Secret whose serving pair its CA did not sign
// (written by hand, or half-updated) is renewed, not served: the API server trusts the bundle.
func TestCertManagerRefusesAPairItsCADidNotSign(t *testing.T) {
	m := &CertManager{DNSNames: []string{"x.netpact.test"}}
	ca1, _, crt1, leaf1, err := m.renew(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !m.fresh(ca1, crt1, leaf1) {
		t.Fatal("a pair its own CA signed is not fresh")
	}
	ca2, _, _, _, err := m.renew(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.fresh(ca2, crt1, leaf1) {
		t.Error("a pair another CA signed is served as fresh")
	}
}
