package kubenode

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// newOffline is an Enforcement whose informers are never started: the tests fill their stores
// the way the informers would, and read what the sync derives from them. No API server is
// asked anything (the address is closed).
func newOffline(t *testing.T) *Enforcement {
	t.Helper()
	cfg := &rest.Config{Host: "http://127.0.0.1:1"}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return NewEnforcement(EnforceConfig{NodeName: "n1", Client: client, Dynamic: dyn, EndpointDir: t.TempDir()})
}

func pod(ns, name, node, ip string, created time.Time, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name),
		Labels: map[string]string{"app": name}, CreationTimestamp: metav1.NewTime(created)}}
	p.Spec.NodeName = node
	p.Status.Phase = corev1.PodRunning
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func add(t *testing.T, store interface{ Add(any) error }, objs ...any) {
	t.Helper()
	for _, o := range objs {
		if err := store.Add(o); err != nil {
			t.Fatal(err)
		}
	}
}
