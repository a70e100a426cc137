//go:build linux

package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

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
// error, and says unhealthy because of it: on its screen, and as JSON and YAML with -o.
func TestClusterStatus(t *testing.T) {
	sc := newStatusCluster(t)
	sc.enforcer(3)
	ps := sc.source("netpact-system", "policies")
	sc.setSource(ps, true, "3/3")
	sc.nodeStatuses(map[string]string{"node-a": "", "node-b": "spec.ingress[0]: the rule is too big for the datapath"})

	stdout, _, code := run(t, "status", "--kubeconfig", sc.kubeconfig)
	for _, want := range []string{
		"enforcer:    DaemonSet netpact/netpact desired 3, ready 3, available 3, up to date 3\n",
		"controller:  not installed",
		"admission:   not installed",
		"  netpact-system/policies: Ready True, enforced on 3/3 nodes, revision main@sha1:abc\n",
		"nodes:       2 report status, 1 with errors  <- not healthy",
		"  node-b: CiliumNetworkPolicy app/a: spec.ingress[0]: the rule is too big for the datapath",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
		}
	}
	if code != 1 {
		t.Errorf("exit %d with a node reporting an error, want 1:\n%s", code, stdout)
	}

	for _, format := range []string{"json", "yaml"} {
		stdout, _, code := run(t, "status", "--kubeconfig", sc.kubeconfig, "-n", "netpact-system", "-o", format)
		var h clusterHealth
		if err := yaml.UnmarshalStrict([]byte(stdout), &h); err != nil {
			t.Fatalf("-o %s: %v\n%s", format, err, stdout)
		}
		if format == "json" && !json.Valid([]byte(stdout)) {
			t.Errorf("-o json is not JSON:\n%s", stdout)
		}
		want := clusterHealth{Namespace: "netpact-system",
			Enforcer:   workloadHealth{Kind: "DaemonSet", Name: "netpact/netpact", Installed: true, Healthy: true, Desired: 3, Ready: 3, Available: 3, UpToDate: 3},
			Controller: workloadHealth{Kind: "Deployment", Name: "netpact-reconciler"},
			Admission:  workloadHealth{Kind: "Deployment", Name: "netpact-admission"},
			Sources: []sourceHealth{{Namespace: "netpact-system", Name: "policies", Ready: "True", Reason: meta.SucceededReason,
				Message: "enforced revision main@sha1:abc", EnforcedNodes: "3/3", Revision: "main@sha1:abc"}},
			Nodes: nodeHealthCounts{Reporting: 2, WithErrors: []nodeErrors{{Node: "node-b",
				Errors: []string{"CiliumNetworkPolicy app/a: spec.ingress[0]: the rule is too big for the datapath"}}}},
		}
		got, _ := json.Marshal(h)
		if wantJSON, _ := json.Marshal(want); string(got) != string(wantJSON) {
			t.Errorf("-o %s:\n got %s\nwant %s", format, got, wantJSON)
		}
		if code != 1 {
			t.Errorf("-o %s: exit %d, want 1 as on the screen", format, code)
		}
	}
}

// statusCluster is what netpact status reads, made in the test API server and removed when the
// test ends: the enforcer DaemonSet, PolicySources, NodePolicyStatuses; and a kubeconfig for it.
type statusCluster struct {
	t          *testing.T
	ctx        context.Context
	cfg        *rest.Config
	kc         kubernetes.Interface
	cl         client.Client
	kubeconfig string
}

func newStatusCluster(t *testing.T) *statusCluster {
	cfg := apiServer.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cl, err := policySourceClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sc := &statusCluster{t: t, ctx: ctx, cfg: cfg, kc: kubernetes.NewForConfigOrDie(cfg), cl: cl,
		kubeconfig: filepath.Join(t.TempDir(), "kubeconfig")}
	if err := kubetest.WriteKubeconfig(cfg, sc.kubeconfig, "envtest"); err != nil {
		t.Fatal(err)
	}
	return sc
}

// enforcer makes the enforcer DaemonSet, every one of its desired pods ready, in namespace
// netpact (a Helm release's, not the plain manifests' kube-system: status finds it anywhere).
func (sc *statusCluster) enforcer(desired int32) {
	t := sc.t
	const ns = "netpact"
	if _, err := sc.kc.CoreV1().Namespaces().Create(sc.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	labels := map[string]string{"app.kubernetes.io/name": "netpact"}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "netpact", Namespace: ns},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "enforcer", Image: "netpact"}}}}}}
	got, err := sc.kc.AppsV1().DaemonSets(ns).Create(sc.ctx, ds, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sc.kc.AppsV1().DaemonSets(ns).Delete(context.Background(), "netpact", metav1.DeleteOptions{})
	})
	got.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: desired, NumberReady: desired, NumberAvailable: desired, UpdatedNumberScheduled: desired}
	if _, err := sc.kc.AppsV1().DaemonSets(ns).UpdateStatus(sc.ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// source makes a PolicySource, and its namespace when missing; it has no status yet.
func (sc *statusCluster) source(namespace, name string) *v1alpha1.PolicySource {
	t := sc.t
	if _, err := sc.kc.CoreV1().Namespaces().Create(sc.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	ps := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: v1alpha1.PolicySourceSpec{URL: "http://git.example/policies.git", Interval: metav1.Duration{Duration: time.Minute}}}
	if err := sc.cl.Create(sc.ctx, ps); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.cl.Delete(context.Background(), ps) })
	return ps
}

// setSource writes the status a controller would: Ready or not, main@sha1:abc enforced on
// enforced nodes.
func (sc *statusCluster) setSource(ps *v1alpha1.PolicySource, ready bool, enforced string) {
	if err := writeSourceStatus(sc.ctx, sc.cl, ps, ready, enforced); err != nil {
		sc.t.Fatal(err)
	}
}

func writeSourceStatus(ctx context.Context, cl client.Client, ps *v1alpha1.PolicySource, ready bool, enforced string) error {
	if err := cl.Get(ctx, client.ObjectKeyFromObject(ps), ps); err != nil {
		return err
	}
	cond := metav1.Condition{Type: meta.ReadyCondition, Status: metav1.ConditionTrue, Reason: meta.SucceededReason,
		Message: "enforced revision main@sha1:abc", LastTransitionTime: metav1.Now()}
	if !ready {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, meta.ProgressingReason, "revision main@sha1:abc is applied, enforced on "+enforced+" nodes"
	}
	ps.Status.ObservedGeneration = ps.Generation
	ps.Status.EnforcedNodes, ps.Status.LastAppliedRevision, ps.Status.LastEnforcedRevision = enforced, "main@sha1:abc", "main@sha1:abc"
	ps.Status.Conditions = []metav1.Condition{cond}
	return cl.Status().Update(ctx, ps)
}

// nodeStatuses makes a NodePolicyStatus per node, with a policy error when not empty.
func (sc *statusCluster) nodeStatuses(errs map[string]string) {
	t := sc.t
	dyn := dynamic.NewForConfigOrDie(sc.cfg)
	res := dyn.Resource(v1alpha1.GroupVersion.WithResource("nodepolicystatuses"))
	for name, perr := range errs {
		st := map[string]any{"policies": []any{map[string]any{"kind": "CiliumNetworkPolicy", "namespace": "app", "name": "a", "uid": "u1",
			"generation": 1, "error": perr}}, "policyCount": 1, "endpoints": 2, "failedEndpoints": 0, "errorCount": 0}
		raw, _ := json.Marshal(map[string]any{"apiVersion": "netpact.io/v1alpha1", "kind": "NodePolicyStatus",
			"metadata": map[string]any{"name": name}, "status": st})
		u := &unstructured.Unstructured{}
		_ = u.UnmarshalJSON(raw)
		if _, err := res.Create(sc.ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = res.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
}
