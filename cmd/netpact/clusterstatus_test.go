package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/fluxcd/pkg/apis/meta"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/kubetest"
)

var apiServer kubetest.Server

func TestMain(m *testing.M) {
	// Scripts under test (the CI example) run this binary as netpact itself: see netpactOnPath.
	if os.Getenv(asCLI) == "1" {
		main()
		os.Exit(0)
	}
	code := m.Run()
	if err := apiServer.Stop(); err != nil {
		os.Stderr.WriteString("stop the API server: " + err.Error() + "\n")
		code = 1
	}
	os.Exit(code)
}

// TestClusterStatus: `netpact status --kubeconfig` against a real API server names the enforcer
// DaemonSet's counts, the PolicySources with their nodes, and a node whose status reports an
// error, and says unhealthy because of it.
func TestClusterStatus(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	labels := map[string]string{"app.kubernetes.io/name": "netpact"}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "netpact", Namespace: "kube-system"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "enforcer", Image: "netpact"}}}}}}
	got, err := kc.AppsV1().DaemonSets("kube-system").Create(ctx, ds, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, NumberReady: 3, NumberAvailable: 3, UpdatedNumberScheduled: 3}
	if _, err := kc.AppsV1().DaemonSets("kube-system").UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "netpact-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cl, err := policySourceClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ps := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Name: "policies", Namespace: "netpact-system"},
		Spec: v1alpha1.PolicySourceSpec{URL: "http://git.example/policies.git", Interval: metav1.Duration{Duration: 60e9}}}
	if err := cl.Create(ctx, ps); err != nil {
		t.Fatal(err)
	}
	ps.Status.EnforcedNodes, ps.Status.LastEnforcedRevision = "3/3", "main@sha1:abc"
	ps.Status.Conditions = []metav1.Condition{{Type: meta.ReadyCondition, Status: metav1.ConditionTrue, Reason: meta.SucceededReason,
		Message: "enforced revision main@sha1:abc", LastTransitionTime: metav1.Now()}}
	if err := cl.Status().Update(ctx, ps); err != nil {
		t.Fatal(err)
	}
	for name, perr := range map[string]string{"node-a": "", "node-b": "spec.ingress[0]: the rule is too big for the datapath"} {
		st := map[string]any{"policies": []any{map[string]any{"kind": "CiliumNetworkPolicy", "namespace": "app", "name": "a", "uid": "u1",
			"generation": 1, "error": perr}}, "policyCount": 1, "endpoints": 2, "failedEndpoints": 0, "errorCount": 0}
		raw, _ := json.Marshal(map[string]any{"apiVersion": "netpact.io/v1alpha1", "kind": "NodePolicyStatus",
			"metadata": map[string]any{"name": name}, "status": st})
		u := &unstructured.Unstructured{}
		_ = u.UnmarshalJSON(raw)
		if _, err := dyn.Resource(v1alpha1.GroupVersion.WithResource("nodepolicystatuses")).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	healthy, err := clusterStatus(ctx, cfg, &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"enforcer:    DaemonSet kube-system/netpact desired 3, ready 3, available 3, up to date 3\n",
		"controller:  not installed",
		"admission:   not installed",
		"  netpact-system/policies: Ready True, enforced on 3/3 nodes, revision main@sha1:abc\n",
		"nodes:       2 report status, 1 with errors  <- not healthy",
		"  node-b: CiliumNetworkPolicy app/a: spec.ingress[0]: the rule is too big for the datapath",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	if healthy {
		t.Errorf("healthy with a node reporting an error:\n%s", out.String())
	}
}
