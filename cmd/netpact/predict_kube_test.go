//go:build linux

package main

import (
	"context"
	"encoding/json"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netpact/netpact/internal/kubetest"
)

// TestPredictKubeconfig: `netpact predict --kubeconfig` against a real API server predicts the
// pods that are there: not those on the host network, finished or without an address; two pods
// with the same labels alike; a pod's label claiming a namespace label ignored, with the notice a
// cluster file gets. A user who may not list nodes still gets the matrix, with a warning; one who
// may not list pods gets an error that names the right.
func TestPredictKubeconfig(t *testing.T) {
	cfg := apiServer.Start(t)
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	makePredictCluster(ctx, t, kc)
	dir := t.TempDir()
	admin := filepath.Join(dir, "admin.kubeconfig")
	if err := kubetest.WriteKubeconfig(cfg, admin, "envtest"); err != nil {
		t.Fatal(err)
	}
	policies := filepath.Join("testdata", "predict-kubeconfig")

	stdout, stderr, code := run(t, "predict", "--kubeconfig", admin, "-o", "json", policies)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	checkPredictedCluster(t, stdout)
	notice := `notice: cluster envtest: pod pk-shop/sneaky: label "io.cilium.k8s.namespace.labels.team" is ignored for policy`
	if !strings.Contains(stderr, notice) {
		t.Errorf("stderr lacks %q:\n%s", notice, stderr)
	}

	// A reader of pods and namespaces only: the same cells, and a warning that nodes are unknown.
	grantList(ctx, t, kc, "pk-reader", "pods", "namespaces")
	reader := filepath.Join(dir, "reader.kubeconfig")
	if err := kubetest.WriteKubeconfig(impersonating(cfg, "pk-reader"), reader, "envtest-reader"); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code = run(t, "predict", "--kubeconfig", reader, "-o", "json", policies)
	if code != 0 {
		t.Fatalf("as a reader without nodes: exit %d\n%s", code, stderr)
	}
	checkPredictedCluster(t, stdout)
	if want := "cluster envtest-reader: warning: may not list nodes"; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}

	nobody := filepath.Join(dir, "nobody.kubeconfig")
	if err := kubetest.WriteKubeconfig(impersonating(cfg, "pk-nobody"), nobody, "envtest-nobody"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kubeconfig", nobody}, "read cluster envtest-nobody (needs list on pods and namespaces"},
		{[]string{"--cluster", "cluster.yaml", "--kubeconfig", admin}, "give one of them"},
		{[]string{"--cluster", "cluster.yaml", "--context", "envtest"}, "give one of them"},
		{nil, "no cluster: give --cluster FILE"},
		{[]string{"--as", "pk-reader"}, "--as names no cluster by itself"},
	} {
		cmd := &cobra.Command{}
		cmd.SetContext(ctx)
		var clusterPath string
		cmd.Flags().StringVar(&clusterPath, "cluster", "", "")
		kube := addClusterFlags(cmd.Flags())
		if err := cmd.Flags().Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		if _, err := loadCluster(cmd, clusterPath, kube); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}

// makePredictCluster makes pk-shop and pk-tools (team=tools), a node, and pods with the addresses
// a kubelet would report.
func makePredictCluster(ctx context.Context, t *testing.T, kc kubernetes.Interface) {
	t.Helper()
	for ns, team := range map[string]string{"pk-shop": "shop", "pk-tools": "tools"} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"team": team}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	node, err := kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "pk-node"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.30.0.2"}}
	if _, err := kc.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(ns, name, app string, port int32, phase corev1.PodPhase, ips ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
			Spec:   corev1.PodSpec{NodeName: "pk-node", Containers: []corev1.Container{{Name: "c", Image: "probe"}}},
			Status: corev1.PodStatus{Phase: phase}}
		if port != 0 {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "serve", ContainerPort: port, Protocol: corev1.ProtocolTCP}}
		}
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		if len(ips) > 0 {
			p.Status.PodIP = ips[0]
		}
		return p
	}
	run, done := corev1.PodRunning, corev1.PodSucceeded
	hostAgent := pod("pk-shop", "host-agent", "agent", 80, run, "172.30.0.2")
	hostAgent.Spec.HostNetwork = true
	sneaky := pod("pk-shop", "sneaky", "client", 0, run, "10.30.0.40")
	sneaky.Labels["io.cilium.k8s.namespace.labels.team"] = "tools"
	db := pod("pk-shop", "db", "db", 5432, run, "10.30.0.20")
	db.Spec.NodeName = "pk-gone" // a node the cluster does not list
	for _, p := range []*corev1.Pod{
		pod("pk-shop", "web-1", "web", 80, run, "10.30.0.11"),
		pod("pk-shop", "web-2", "web", 80, run, "10.30.0.12", "fd00:30::12"),
		db, sneaky, hostAgent,
		pod("pk-shop", "job", "web", 80, done, "10.30.0.30"),
		pod("pk-shop", "pending", "web", 80, corev1.PodPending),
		pod("pk-tools", "debug", "debug", 0, run, "10.30.1.5"),
	} {
		if err := kubetest.CreatePod(ctx, kc, p); err != nil {
			t.Fatal(err)
		}
	}
}

// checkPredictedCluster checks predict's JSON cells over makePredictCluster's pods: they name
// exactly the pods predicted, with the engine's verdicts.
func checkPredictedCluster(t *testing.T, stdout string) {
	t.Helper()
	var results []probeResult
	if err := json.Unmarshal([]byte(stdout), &results); err != nil {
		t.Fatalf("predict's JSON: %v\n%s", err, stdout)
	}
	named := map[string]bool{}
	got := map[string]string{}
	for _, r := range results {
		for _, pod := range []string{r.From, r.To} {
			if strings.HasPrefix(pod, "pk-") {
				named[pod] = true
			}
		}
		got[r.From+" -> "+r.To+" "+strconv.Itoa(int(r.Port))+"/"+r.Protocol] = r.Verdict
	}
	want := []string{"pk-shop/db", "pk-shop/sneaky", "pk-shop/web-1", "pk-shop/web-2", "pk-tools/debug"}
	if names := slices.Sorted(maps.Keys(named)); !slices.Equal(names, want) {
		t.Errorf("cells name %v, want %v", names, want)
	}
	for cell, verdict := range map[string]string{
		"pk-shop/web-1 -> pk-shop/db 5432/TCP":     "allowed",
		"pk-shop/web-2 -> pk-shop/db 5432/TCP":     "allowed",
		"pk-shop/sneaky -> pk-shop/db 5432/TCP":    "default-denied",
		"pk-tools/debug -> pk-shop/db 5432/TCP":    "default-denied",
		"pk-tools/debug -> pk-shop/web-1 80/TCP":   "allowed",
		"pk-tools/debug -> pk-shop/web-2 80/TCP":   "allowed",
		"pk-shop/sneaky -> pk-shop/web-1 80/TCP":   "default-denied",
		"pk-shop/db -> pk-shop/web-2 80/TCP":       "default-denied",
		"pk-shop/web-1 -> pk-shop/web-2 80/TCP":    "default-denied",
		"pk-shop/web-2 -> pk-tools/debug 5432/TCP": "",
	} {
		if got[cell] != verdict {
			t.Errorf("%s: %q, want %q", cell, got[cell], verdict)
		}
	}
}

// grantList lets user list the resources (of the core group), cluster-wide.
func grantList(ctx context.Context, t *testing.T, kc kubernetes.Interface, user string, resources ...string) {
	t.Helper()
	if _, err := kc.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: resources, Verbs: []string{"list"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func impersonating(cfg *rest.Config, user string) *rest.Config {
	as := rest.CopyConfig(cfg)
	as.Impersonate = rest.ImpersonationConfig{UserName: user}
	return as
}
