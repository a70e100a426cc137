package kubeview

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
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

// TestSnapshotPagesAndRefusesTooMany: against a real API server, a snapshot read two objects a
// page has every pod, and a cluster past a limit is refused with the limit named, pods and
// namespaces alike.
func TestSnapshotPagesAndRefusesTooMany(t *testing.T) {
	cfg := apiServer.Start(t)
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "kv-paging"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range 5 {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%d", i)},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "probe"}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.9.0.%d", i+1),
				PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.9.0.%d", i+1)}}}}
		if err := kubetest.CreatePod(ctx, client, p); err != nil {
			t.Fatal(err)
		}
		want[ns+"/"+p.Name] = true
	}
	cf, err := Snapshot(ctx, client, Options{Source: "cluster envtest", PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, ep := range cf.Endpoints {
		if ep.Namespace == ns {
			got[ep.Key().String()] = len(ep.IPs) == 1
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(map[string]bool{"kv-paging/p0": true, "kv-paging/p1": true, "kv-paging/p2": true,
		"kv-paging/p3": true, "kv-paging/p4": true}) {
		t.Errorf("pods read two a page: %v, want each of %v with its address", got, want)
	}
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{MaxPods: 4, PageSize: 2}, "more than the 4 netpact reads"},
		{Options{MaxPods: 4, PageSize: 100}, "more than the 4 netpact reads"},
		{Options{MaxNamespaces: 1, PageSize: 1}, "namespaces, more than the 1 netpact reads"},
	} {
		_, err := Snapshot(ctx, client, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.opts, err, tc.want)
		}
	}
}
