package scenarios

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/internal/kubetest"
)

// apiServer is this package's kube-apiserver and etcd, started by the first test that needs it.
var apiServer kubetest.Server

// TestClusterRefusesWhatItCannotRun: against a real API server holding netpact's DaemonSet, the
// cluster backend fails a scenario with externals or a dnsTTL, or an enforcementMode other than
// the enforcers' flag, before it touches the cluster, naming each; the enforcers' own mode runs.
func TestClusterRefusesWhatItCannotRun(t *testing.T) {
	cfg := apiServer.Start(t)
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	labels := map[string]string{"app.kubernetes.io/name": "netpact"}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "netpact", Namespace: "kube-system"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "enforcer", Image: "netpact:test",
					Args: []string{"enforcer", "--policy-enforcement-mode=default"}}}}}}}
	if _, err := kc.AppsV1().DaemonSets("kube-system").Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kc.AppsV1().DaemonSets("kube-system").Delete(context.Background(), "netpact", metav1.DeleteOptions{})
	})
	sc, err := LoadFile("testdata/externals.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sc.EnforcementMode = "always"
	c := NewCluster(ClusterOptions{Config: cfg, Client: kc})
	_, err = c.Start(sc)
	for _, want := range []string{
		"externals are not supported on kind yet",
		"dnsTTL is not supported on kind yet",
		"enforcementMode always: the cluster's enforcers run with --policy-enforcement-mode=default, and switching it per scenario is not supported on kind yet",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if nss, err := kc.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err == nil {
		for _, ns := range nss.Items {
			if ns.Name == "default" || ns.Name == "kube-system" {
				continue
			}
			if !strings.HasPrefix(ns.Name, "kube-") {
				t.Errorf("the refused scenario made namespace %s", ns.Name)
			}
		}
	}
	sc.EnforcementMode, sc.Externals, sc.DNSTTL = "default", nil, nil
	if err := c.supports(ctx, sc); err != nil {
		t.Errorf("the enforcers' own mode: %v", err)
	}
}

// TestDigOutcome: on a cluster, a lookup through dig gives the rcode it printed: NXDOMAIN is
// allow (the resolver answered) unless the probe asks for the exact answer.
func TestDigOutcome(t *testing.T) {
	header := func(status string) string {
		return "; <<>> DiG 9.18 <<>> +search api.stripe.com\n;; ->>HEADER<<- opcode: QUERY, status: " + status + ", id: 4242\n"
	}
	for _, c := range []struct {
		status string
		exact  bool
		want   Outcome
	}{
		{"NOERROR", false, Allow}, {"NOERROR", true, Allow},
		{"NXDOMAIN", false, Allow}, {"NXDOMAIN", true, DNSNXDomain},
		{"REFUSED", false, DNSRefused}, {"SERVFAIL", true, "dns-servfail"},
	} {
		if got := digOutcome(header(c.status), c.exact); got != c.want {
			t.Errorf("status %s (exact %v): %s, want %s", c.status, c.exact, got, c.want)
		}
	}
}
