package reconciler

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/internal/kubetest"
	"github.com/netpact/netpact/policy"
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

var (
	cnpGVR  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	ccnpGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
	knpGVR  = schema.GroupVersionResource{Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"}
)

// nodeAgent stands in for the enforcers of a few nodes: each live node writes its
// NodePolicyStatus with every policy object at its generation, as the enforcer does once its
// datapath holds it. A node taken out of live stops reporting (it lags).
type nodeAgent struct {
	dyn     dynamic.Interface
	mu      sync.Mutex
	live    map[string]bool
	lastErr error
}

func startNodeAgent(t *testing.T, cfg *rest.Config, nodes ...string) *nodeAgent {
	t.Helper()
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	a := &nodeAgent{dyn: dynamic.NewForConfigOrDie(cfg), live: map[string]bool{}}
	for _, n := range nodes {
		node, err := client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		if err == nil {
			node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
			if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		a.live[n] = true
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			a.report(ctx)
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		if a.lastErr != nil {
			t.Logf("node agent: last write error: %v", a.lastErr)
		}
		for _, n := range nodes {
			_ = client.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{})
			_ = a.dyn.Resource(npsResource).Delete(ctx, n, metav1.DeleteOptions{})
		}
	})
	return a
}

func (a *nodeAgent) setLive(node string, live bool) {
	a.mu.Lock()
	a.live[node] = live
	a.mu.Unlock()
}

func (a *nodeAgent) report(ctx context.Context) {
	policies := []v1alpha1.EnforcedPolicy{}
	for _, gvr := range []schema.GroupVersionResource{cnpGVR, ccnpGVR, knpGVR} {
		list, err := a.dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
		if err != nil {
			return
		}
		for _, o := range list.Items {
			policies = append(policies, v1alpha1.EnforcedPolicy{Kind: o.GetKind(), Namespace: o.GetNamespace(), Name: o.GetName(),
				UID: string(o.GetUID()), Generation: o.GetGeneration(), Revision: o.GetAnnotations()[v1alpha1.RevisionAnnotation]})
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for n, live := range a.live {
		if !live {
			continue
		}
		obj := map[string]any{"apiVersion": "netpact.io/v1alpha1", "kind": "NodePolicyStatus", "metadata": map[string]any{"name": n},
			"status": map[string]any{"policies": policies, "policyCount": len(policies), "errorCount": 0, "endpoints": 0, "failedEndpoints": 0}}
		data, _ := json.Marshal(obj)
		force := true
		if _, err := a.dyn.Resource(npsResource).Patch(ctx, n, ktypes.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "test-node-agent", Force: &force}); err != nil {
			a.lastErr = err
		}
	}
}

// startController runs the PolicySource controller against the API server until the test ends.
func startController(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	c := &Controller{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Config: cfg, Events: mgr.GetEventRecorder("netpact-reconciler"),
		Name: "policysource-" + strings.ToLower(t.Name()), WorkDir: t.TempDir(), EnforceTimeout: 5 * time.Second}
	if err := c.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return mgr.GetClient()
}

// waitFor polls the PolicySource until cond holds, or fails with its last status.
func waitFor(t *testing.T, cl client.Client, key ktypes.NamespacedName, what string, cond func(*v1alpha1.PolicySource) bool) *v1alpha1.PolicySource {
	t.Helper()
	var obj v1alpha1.PolicySource
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := cl.Get(context.Background(), key, &obj); err == nil && cond(&obj) {
			return &obj
		}
		if time.Now().After(deadline) {
			st, _ := json.MarshalIndent(obj.Status, "", "  ")
			t.Fatalf("%s: not reached; status:\n%s", what, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// requestReconcile asks for a reconcile now, as `netpact reconcile source` does.
func requestReconcile(t *testing.T, cl client.Client, key ktypes.NamespacedName) string {
	t.Helper()
	at, err := RequestReconcile(context.Background(), cl, key)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

var policyB = testPolicy("b-allows-a.yaml")

const knpDeny = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: other}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

// TestClusterController runs the controller against a real kube-apiserver and etcd: a commit is
// applied server-side with the revision and owner labels, Ready only once every node reports it
// (3/3; a lagging node is named and holds Ready back), a broken commit is refused with file:line
// and nothing of it applied, a deleted policy is pruned (unless annotated not to be), a revision
// that empties a namespace is refused, and a reconcile request is answered.
func TestClusterController(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	for _, ns := range []string{"app", "other", "netpact-system"} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	agent := startNodeAgent(t, cfg, "node-1", "node-2", "node-3")
	git := newGitServer(t)
	wt := git.clone(t)
	h1 := wt.commit("two policies", map[string]string{"policies/a.yaml": allowB, "policies/b.yaml": policyB, "policies/deny.yaml": knpDeny})
	wt.push("main")
	cl := startController(t, cfg)
	src := newObj(git.httpURL())
	if err := cl.Create(ctx, src); err != nil {
		t.Fatal(err)
	}
	key := ktypes.NamespacedName{Namespace: src.Namespace, Name: src.Name}
	isReady := func(o *v1alpha1.PolicySource) bool { ok, _, _ := ready(o); return ok }
	got := waitFor(t, cl, key, "first revision enforced", func(o *v1alpha1.PolicySource) bool {
		return isReady(o) && strings.HasSuffix(o.Status.LastEnforcedRevision, h1)
	})
	if got.Status.EnforcedNodes != "3/3" || conditions.Get(got, v1alpha1.EnforcedCondition) == nil {
		t.Errorf("enforced nodes %q, conditions %+v", got.Status.EnforcedNodes, got.Status.Conditions)
	}
	if got.Status.Inventory == nil || len(got.Status.Inventory.Entries) != 3 ||
		got.Status.Inventory.Entries[0].ID != "app_a_cilium.io_CiliumNetworkPolicy" || got.Status.Inventory.Entries[0].V != "v2" {
		t.Errorf("inventory %+v", got.Status.Inventory)
	}
	a, err := dyn.Resource(cnpGVR).Namespace("app").Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.GetAnnotations()[v1alpha1.RevisionAnnotation] != "main@sha1:"+h1 || a.GetLabels()[SourceNameLabel] != "policies" ||
		a.GetLabels()[SourceNamespaceLabel] != "netpact-system" {
		t.Errorf("applied object's annotations %v, labels %v", a.GetAnnotations(), a.GetLabels())
	}
	managed := false
	for _, m := range a.GetManagedFields() {
		managed = managed || (m.Manager == "netpact" && m.Operation == metav1.ManagedFieldsOperationApply)
	}
	if !managed {
		t.Errorf("not server-side applied by field manager netpact: %+v", a.GetManagedFields())
	}

	// A node that does not report holds Ready back and is named.
	agent.setLive("node-3", false)
	h2 := wt.commit("a allows c", map[string]string{"policies/a.yaml": allowC})
	wt.push("main")
	requestReconcile(t, cl, key)
	got = waitFor(t, cl, key, "lagging node named", func(o *v1alpha1.PolicySource) bool {
		_, _, msg := ready(o)
		return strings.HasSuffix(o.Status.LastAppliedRevision, h2) && o.Status.EnforcedNodes == "2/3" &&
			strings.Contains(msg, "node-3") && len(o.Status.LaggingNodes) == 1
	})
	if isReady(got) || strings.HasSuffix(got.Status.LastEnforcedRevision, h2) {
		t.Errorf("ready while a node lags: %+v", got.Status)
	}
	agent.setLive("node-3", true)
	requestReconcile(t, cl, key)
	waitFor(t, cl, key, "all nodes after the lagging one reports", func(o *v1alpha1.PolicySource) bool {
		return isReady(o) && strings.HasSuffix(o.Status.LastEnforcedRevision, h2) && o.Status.EnforcedNodes == "3/3"
	})

	// A broken commit: refused with file:line, nothing applied, the last good still there.
	h3 := wt.commit("broken", map[string]string{"policies/a.yaml": broken, "policies/b.yaml": policyB + "  egress: [{toPorts: 3}]\n"})
	wt.push("main")
	requestReconcile(t, cl, key)
	got = waitFor(t, cl, key, "broken commit refused", func(o *v1alpha1.PolicySource) bool {
		return strings.HasSuffix(o.Status.LastAttemptedRevision, h3) && conditions.IsStalled(o)
	})
	if _, reason, msg := ready(got); reason != v1alpha1.ValidationFailedReason || !strings.Contains(msg, "policies/a.yaml:") ||
		!strings.Contains(msg, "still enforcing main@sha1:"+h2) {
		t.Errorf("broken commit: reason %s, message %s", reason, msg)
	}
	a, _ = dyn.Resource(cnpGVR).Namespace("app").Get(ctx, "a", metav1.GetOptions{})
	if a.GetAnnotations()[v1alpha1.RevisionAnnotation] != "main@sha1:"+h2 {
		t.Errorf("the broken revision touched the cluster: %v", a.GetAnnotations())
	}

	// The fix deletes b and deny; deny is annotated not to be pruned.
	if _, err := dyn.Resource(knpGVR).Namespace("other").Patch(ctx, "deny", ktypes.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"`+PruneAnnotation+`":"disabled"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	run(t, wt.dir, "git", "rm", "-q", "policies/b.yaml", "policies/deny.yaml")
	h4 := wt.commit("fix a, drop b and deny", map[string]string{"policies/a.yaml": allowC, "policies/other.yaml": strings.ReplaceAll(knpDeny, "name: deny", "name: other-deny")})
	wt.push("main")
	requestReconcile(t, cl, key)
	got = waitFor(t, cl, key, "fix enforced", func(o *v1alpha1.PolicySource) bool {
		return isReady(o) && strings.HasSuffix(o.Status.LastEnforcedRevision, h4)
	})
	if _, err := dyn.Resource(cnpGVR).Namespace("app").Get(ctx, "b", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("b not pruned: %v", err)
	}
	if _, err := dyn.Resource(knpGVR).Namespace("other").Get(ctx, "deny", metav1.GetOptions{}); err != nil {
		t.Errorf("deny (prune disabled) was deleted: %v", err)
	}
	if len(got.Status.Inventory.Entries) != 2 {
		t.Errorf("inventory after prune: %+v", got.Status.Inventory)
	}

	// Removing every policy of namespace app: refused by the guard, a still there.
	run(t, wt.dir, "git", "rm", "-q", "policies/a.yaml")
	h5 := wt.commit("empty app", nil)
	wt.push("main")
	requestReconcile(t, cl, key)
	got = waitFor(t, cl, key, "emptying revision refused", func(o *v1alpha1.PolicySource) bool {
		return strings.HasSuffix(o.Status.LastAttemptedRevision, h5) && conditions.IsStalled(o)
	})
	if _, reason, msg := ready(got); reason != v1alpha1.EmptyBundleReason || !strings.Contains(msg, "namespace app") {
		t.Errorf("emptying revision: %s %s", reason, msg)
	}
	if _, err := dyn.Resource(cnpGVR).Namespace("app").Get(ctx, "a", metav1.GetOptions{}); err != nil {
		t.Errorf("a gone after a refused revision: %v", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	handled, err := ReconcileNow(rctx, cl, key, nil)
	cancel()
	if err != nil {
		t.Fatalf("reconcile now: %v", err)
	}
	if _, reason, _ := ready(handled); reason != v1alpha1.EmptyBundleReason {
		t.Errorf("reconcile now: %s, want the guard's refusal again", reason)
	}
	events, err := kc.CoreV1().Events("netpact-system").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	for _, e := range events.Items {
		notes = append(notes, e.Reason+": "+e.Message)
	}
	joined := strings.Join(notes, "\n")
	for _, want := range []string{meta.SucceededReason + ": revision main@sha1:" + h1, v1alpha1.ValidationFailedReason + ": revision main@sha1:" + h3} {
		if !strings.Contains(joined, want) {
			t.Errorf("no event %q among:\n%s", want, joined)
		}
	}
	if err := cl.Delete(ctx, src); err != nil {
		t.Fatal(err)
	}
}

// TestClusterTargetRollsBack: an apply that fails part way (an admission policy lets the dry
// run through and refuses the real write of the second object) leaves the cluster with the last
// enforced revision's objects: what the attempt created is deleted, what it changed is put back.
func TestClusterTargetRollsBack(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "rb"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	startNodeAgent(t, cfg, "rb-node")
	fail := admissionv1.Fail
	vap := &admissionv1.ValidatingAdmissionPolicy{ObjectMeta: metav1.ObjectMeta{Name: "refuse-z"},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
					Rule: admissionv1.Rule{APIGroups: []string{"cilium.io"}, APIVersions: []string{"*"}, Resources: []string{"ciliumnetworkpolicies"}}}}}},
			Validations: []admissionv1.Validation{{Expression: "request.dryRun || object.metadata.name != 'z'", Message: "z is refused"}}}}
	if _, err := kc.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, vap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "refuse-z"}, Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: "refuse-z",
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kc.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, "refuse-z", metav1.DeleteOptions{})
		kc.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, "refuse-z", metav1.DeleteOptions{})
	})
	target := &ClusterTarget{Config: cfg, Source: metav1.ObjectMeta{Namespace: "rb", Name: "src"}, Prune: true, EnforceTimeout: 10 * time.Second}
	cnp := func(name, from string) string {
		return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: " + name + ", namespace: rb}\nspec:\n" +
			"  endpointSelector: {matchLabels: {app: " + name + "}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: " + from + "}}]\n"
	}
	good := loadBundle(t, cnp("a", "b"), cnp("m", "b"))
	if err := target.Apply(ctx, "main@sha1:good", good); err != nil {
		t.Fatal(err)
	}
	// The admission policy may take a moment to be enforced by the API server.
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err = kc.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, "refuse-z", metav1.GetOptions{})
		probe := &unstructured.Unstructured{}
		_ = json.Unmarshal([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"z","namespace":"rb"},"spec":{"endpointSelector":{}}}`), &probe.Object)
		_, cerr := dyn.Resource(cnpGVR).Namespace("rb").Create(ctx, probe, metav1.CreateOptions{})
		if cerr != nil && strings.Contains(cerr.Error(), "z is refused") {
			break
		}
		if cerr == nil {
			dyn.Resource(cnpGVR).Namespace("rb").Delete(ctx, "z", metav1.DeleteOptions{})
		}
		if time.Now().After(deadline) {
			t.Fatalf("the admission policy is not enforced: %v %v", err, cerr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// a changes, new n is created, then z is refused: a and n must go back.
	bad := loadBundle(t, cnp("a", "c"), cnp("n", "c"), cnp("z", "c"), cnp("m", "b"))
	err = target.Apply(ctx, "main@sha1:bad", bad)
	if err == nil || !strings.Contains(err.Error(), "z is refused") || !strings.Contains(err.Error(), "rolled back to the objects of the last enforced revision main@sha1:good") {
		t.Fatalf("apply part way: %v", err)
	}
	a, err := dyn.Resource(cnpGVR).Namespace("rb").Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.GetAnnotations()[v1alpha1.RevisionAnnotation] != "main@sha1:good" {
		t.Errorf("a not rolled back: %v", a.GetAnnotations())
	}
	from, _, _ := unstructured.NestedSlice(a.Object, "spec", "ingress")
	if b, _ := json.Marshal(from); !strings.Contains(string(b), `"app":"b"`) {
		t.Errorf("a's spec not rolled back: %s", b)
	}
	if _, err := dyn.Resource(cnpGVR).Namespace("rb").Get(ctx, "n", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("n, created by the failed attempt, still there: %v", err)
	}
	if target.Enforced() != "main@sha1:good" {
		t.Errorf("enforced %q after a failed apply", target.Enforced())
	}
	for _, n := range []string{"a", "m"} {
		dyn.Resource(cnpGVR).Namespace("rb").Delete(ctx, n, metav1.DeleteOptions{})
	}
}

// loadBundle validates policy documents as the reconciler does.
func loadBundle(t *testing.T, docs ...string) *policy.Bundle {
	t.Helper()
	b, err := policy.LoadBytes("test.yaml", []byte(strings.Join(docs, "---\n")), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestClusterControllerConfinesTenantSources: a PolicySource outside the controller's namespace
// writes policy of its own namespace only: an object naming none lands there, and a revision
// with an object of another namespace or a cluster-wide one is refused whole, naming them.
func TestClusterControllerConfinesTenantSources(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	for _, ns := range []string{"tenant", "victim"} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	startNodeAgent(t, cfg, "tenant-node")
	git := newGitServer(t)
	wt := git.clone(t)
	own := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: mine}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n"
	h1 := wt.commit("own namespace", map[string]string{"policies/mine.yaml": own})
	wt.push("main")
	cl := startController(t, cfg)
	src := newObj(git.httpURL())
	src.Namespace = "tenant"
	if err := cl.Create(ctx, src); err != nil {
		t.Fatal(err)
	}
	key := ktypes.NamespacedName{Namespace: "tenant", Name: src.Name}
	waitFor(t, cl, key, "tenant's own policy enforced", func(o *v1alpha1.PolicySource) bool {
		ok, _, _ := ready(o)
		return ok && strings.HasSuffix(o.Status.LastEnforcedRevision, h1)
	})
	if _, err := dyn.Resource(cnpGVR).Namespace("tenant").Get(ctx, "mine", metav1.GetOptions{}); err != nil {
		t.Fatalf("a policy naming no namespace did not land in the source's: %v", err)
	}
	other := strings.Replace(own, "{name: mine}", "{name: theirs, namespace: victim}", 1)
	wide := "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: everything}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n"
	h2 := wt.commit("reach out", map[string]string{"policies/theirs.yaml": other, "policies/wide.yaml": wide})
	wt.push("main")
	requestReconcile(t, cl, key)
	got := waitFor(t, cl, key, "reaching out refused", func(o *v1alpha1.PolicySource) bool {
		return strings.HasSuffix(o.Status.LastAttemptedRevision, h2) && conditions.IsStalled(o)
	})
	_, reason, msg := ready(got)
	if reason != v1alpha1.ValidationFailedReason || !strings.Contains(msg, "CiliumNetworkPolicy victim/theirs is in namespace victim") ||
		!strings.Contains(msg, "is cluster-wide") || !strings.Contains(msg, "policies/theirs.yaml") {
		t.Errorf("tenant reaching out: %s %s", reason, msg)
	}
	if _, err := dyn.Resource(cnpGVR).Namespace("victim").Get(ctx, "theirs", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the tenant wrote into another namespace: %v", err)
	}
	if _, err := dyn.Resource(ccnpGVR).Get(ctx, "everything", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the tenant wrote a cluster-wide policy: %v", err)
	}
	if err := cl.Delete(ctx, src); err != nil {
		t.Fatal(err)
	}
	dyn.Resource(cnpGVR).Namespace("tenant").Delete(ctx, "mine", metav1.DeleteOptions{})
}

// TestClusterTargetKeepsToItsOwn: ownership comes from the sources' inventories (their status,
// which only the controller writes), not from labels: a source leaves out, alone, an object
// another source's inventory lists, and applies the rest; a label that no inventory backs
// (a tenant relabelling a platform policy) claims nothing, and the owner re-applies its object;
// what is deleted behind a source's back is put back at its next pass. The finalizers and owner
// references a bundle writes are not applied.
func TestClusterTargetKeepsToItsOwn(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "own"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	startNodeAgent(t, cfg, "own-node")
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	// publish writes a target's inventory into its PolicySource's status, as the controller does.
	publish := func(name string, target *ClusterTarget) {
		ps := newObj("https://git.example/p.git")
		ps.Namespace, ps.Name = "own", name
		if err := cl.Create(ctx, ps); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		if err := cl.Get(ctx, ktypes.NamespacedName{Namespace: "own", Name: name}, ps); err != nil {
			t.Fatal(err)
		}
		ps.Status.Inventory = target.Inventory()
		if err := cl.Status().Update(ctx, ps); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Delete(context.Background(), ps) })
	}
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: NAME\n  namespace: own\n" +
		"  finalizers: [example.com/never]\n  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: x, uid: 5f0c1a52-0000-4000-8000-000000000001}]\n" +
		"spec:\n  endpointSelector: {matchLabels: {app: a}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: FROM}}]\n"
	policyOf := func(name, from string) string {
		return strings.Replace(strings.Replace(doc, "NAME", name, 1), "FROM", from, 1)
	}
	a := &ClusterTarget{Config: cfg, Source: metav1.ObjectMeta{Namespace: "own", Name: "a"}, Prune: true, EnforceTimeout: 10 * time.Second}
	if err := a.Apply(ctx, "main@sha1:a", loadBundle(t, policyOf("shared", "b"), policyOf("also-a", "b"))); err != nil {
		t.Fatal(err)
	}
	publish("a", a)
	got, err := dyn.Resource(cnpGVR).Namespace("own").Get(ctx, "shared", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetFinalizers()) != 0 || len(got.GetOwnerReferences()) != 0 {
		t.Errorf("finalizers %v and owner references %v of the bundle were applied", got.GetFinalizers(), got.GetOwnerReferences())
	}

	// b's revision names a's policy and one of its own: a's is left out, b's is applied.
	b := &ClusterTarget{Config: cfg, Source: metav1.ObjectMeta{Namespace: "own", Name: "b"}, Prune: true, EnforceTimeout: 10 * time.Second}
	if err := b.Apply(ctx, "main@sha1:b", loadBundle(t, policyOf("shared", "c"), policyOf("b-own", "c"))); err != nil {
		t.Fatalf("a revision naming another source's policy is refused whole: %v", err)
	}
	if r := b.Refused(); len(r) != 1 || !strings.Contains(r[0], "CiliumNetworkPolicy own/shared belongs to PolicySource own/a") {
		t.Errorf("refused %v, want own/shared, a's", r)
	}
	got, _ = dyn.Resource(cnpGVR).Namespace("own").Get(ctx, "shared", metav1.GetOptions{})
	if got.GetAnnotations()[v1alpha1.RevisionAnnotation] != "main@sha1:a" {
		t.Errorf("the other source's revision was written: %v", got.GetAnnotations())
	}
	if _, err := dyn.Resource(cnpGVR).Namespace("own").Get(ctx, "b-own", metav1.GetOptions{}); err != nil {
		t.Errorf("b's own policy was not applied: %v", err)
	}

	// A tenant relabels a's policy as another source's (which has no inventory): a's next
	// revision is not refused, and its labels are a's again.
	got.SetLabels(map[string]string{SourceNameLabel: "x", SourceNamespaceLabel: "own"})
	if _, err := dyn.Resource(cnpGVR).Namespace("own").Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, "main@sha1:a2", loadBundle(t, policyOf("shared", "d"), policyOf("also-a", "b"))); err != nil {
		t.Fatalf("a's revision after a tenant relabelled its policy: %v", err)
	}
	got, _ = dyn.Resource(cnpGVR).Namespace("own").Get(ctx, "shared", metav1.GetOptions{})
	if got.GetLabels()[SourceNameLabel] != "a" || got.GetAnnotations()[v1alpha1.RevisionAnnotation] != "main@sha1:a2" {
		t.Errorf("a's policy after a's revision: labels %v, annotations %v", got.GetLabels(), got.GetAnnotations())
	}

	// Deleted behind a's back: put back at a's next pass.
	if err := dyn.Resource(cnpGVR).Namespace("own").Delete(ctx, "also-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CorrectDrift(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(cnpGVR).Namespace("own").Get(ctx, "also-a", metav1.GetOptions{}); err != nil {
		t.Errorf("a deleted policy was not put back: %v", err)
	}
	for _, n := range []string{"shared", "also-a", "b-own"} {
		dyn.Resource(cnpGVR).Namespace("own").Delete(ctx, n, metav1.DeleteOptions{})
	}
}

// TestClusterTargetDryRunsTheWholeBundle: every object of a revision is dry-run through the API
// server before any is written: one the API server refuses (a namespace that does not exist)
// stops the revision with nothing written, not even the objects before it.
func TestClusterTargetDryRunsTheWholeBundle(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dry"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	startNodeAgent(t, cfg, "dry-node")
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: NAME, namespace: NS}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n"
	first := strings.NewReplacer("NAME", "aaa-first", "NS", "dry").Replace(doc)
	missing := strings.NewReplacer("NAME", "zzz-second", "NS", "no-such-namespace").Replace(doc)
	target := &ClusterTarget{Config: cfg, Source: metav1.ObjectMeta{Namespace: "netpact-system", Name: "dry"}, Prune: true, EnforceTimeout: 10 * time.Second}
	err := target.Apply(ctx, "main@sha1:dry", loadBundle(t, first, missing))
	if err == nil || !strings.Contains(err.Error(), "dry run; nothing applied") || !strings.Contains(err.Error(), "no-such-namespace/zzz-second") {
		t.Fatalf("a bundle the API server refuses in part: %v", err)
	}
	if _, err := dyn.Resource(cnpGVR).Namespace("dry").Get(ctx, "aaa-first", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the object before the refused one was written: %v", err)
	}
}

// TestDeletedSourcePrunes: a PolicySource carries the prune finalizer; deleting it deletes what
// it applied before it goes, as Flux does, unless spec.prune is false (then they stay).
func TestDeletedSourcePrunes(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "gc"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	startNodeAgent(t, cfg, "gc-node")
	cl := startController(t, cfg)
	for _, prune := range []bool{true, false} {
		git := newGitServer(t)
		wt := git.clone(t)
		name := fmt.Sprintf("gc-%v", prune)
		doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: NAME}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n"
		wt.commit("one policy", map[string]string{"policies/p.yaml": strings.Replace(doc, "NAME", name, 1)})
		wt.push("main")
		src := newObj(git.httpURL())
		src.Namespace, src.Name, src.Spec.Prune = "gc", name, &prune
		if err := cl.Create(ctx, src); err != nil {
			t.Fatal(err)
		}
		key := ktypes.NamespacedName{Namespace: "gc", Name: name}
		got := waitFor(t, cl, key, "enforced", func(o *v1alpha1.PolicySource) bool {
			ok, _, _ := ready(o)
			return ok && o.Status.LastEnforcedRevision != "" && o.Status.Inventory != nil
		})
		if !controllerutil.ContainsFinalizer(got, PruneFinalizer) {
			t.Errorf("prune %v: no finalizer %s: %v", prune, PruneFinalizer, got.Finalizers)
		}
		if err := cl.Delete(ctx, got); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !apierrors.IsNotFound(cl.Get(ctx, key, &v1alpha1.PolicySource{})) {
			if time.Now().After(deadline) {
				t.Fatalf("prune %v: the deleted source is still there", prune)
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, err := dyn.Resource(cnpGVR).Namespace("gc").Get(ctx, name, metav1.GetOptions{})
		if prune && !apierrors.IsNotFound(err) {
			t.Errorf("the deleted source's policy was not pruned: %v", err)
		}
		if !prune && err != nil {
			t.Errorf("spec.prune false: the deleted source's policy is gone: %v", err)
		}
		dyn.Resource(cnpGVR).Namespace("gc").Delete(ctx, name, metav1.DeleteOptions{})
	}
}

// TestKeyringSecretMissing: a source whose spec.verify names a keyring secret that does not exist,
// or holds no keyring, is not reconciled: Ready and Stalled say VerificationFailed and name the
// secret, and nothing of the revision is applied.
func TestKeyringSecretMissing(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "verify"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := kc.CoreV1().Secrets("verify").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "empty-keyring"},
		Data: map[string][]byte{"other": []byte("x")}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cl := startController(t, cfg)
	git := newGitServer(t)
	wt := git.clone(t)
	wt.commit("one policy", map[string]string{"policies/p.yaml": "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: unverified}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n"})
	wt.push("main")
	for _, secret := range []string{"no-such-secret", "empty-keyring"} {
		src := newObj(git.httpURL())
		src.Namespace, src.Name = "verify", secret
		src.Spec.Verify = &v1alpha1.VerifySpec{SecretRef: v1alpha1.LocalObjectReference{Name: secret}}
		if err := cl.Create(ctx, src); err != nil {
			t.Fatal(err)
		}
		got := waitFor(t, cl, ktypes.NamespacedName{Namespace: "verify", Name: secret}, "verification failed", func(o *v1alpha1.PolicySource) bool {
			r := conditions.Get(o, meta.ReadyCondition)
			return r != nil && r.Reason == v1alpha1.VerificationFailedReason
		})
		if msg := conditions.Get(got, meta.ReadyCondition).Message; !strings.Contains(msg, secret) {
			t.Errorf("%s: Ready says %q, which does not name the secret", secret, msg)
		}
		if !conditions.IsStalled(got) {
			t.Errorf("%s: not Stalled", secret)
		}
		if _, err := dyn.Resource(cnpGVR).Namespace("verify").Get(ctx, "unverified", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s: the unverified revision was applied: %v", secret, err)
		}
	}
}
