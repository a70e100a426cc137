package kubenode

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/cniplugin"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/datapath/datapathtest"
	"github.com/netpact/netpact/policy"
)

// TestPodProgrammedWhileStatusWritesHang: a new pod's ADD waits for a sync, never for the node's
// status object. The API server here is real; the path to it holds every write of the status
// until the client gives up (10 s), as an overloaded API server does. The pod must be programmed
// well within that, while a write is in flight.
func TestPodProgrammedWhileStatusWritesHang(t *testing.T) {
	dp, _ := datapathtest.Open(t, datapath.Options{})
	cfg := apiServer.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The path to the API server: everything passes, but a status write hangs until its client
	// ends it.
	upstream, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var hung, inFlight atomic.Int32
	rp := httputil.NewSingleHostReverseProxy(upstream)
	rp.Transport, rp.FlushInterval = tr, -1
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPatch && strings.Contains(r.URL.Path, "/nodepolicystatuses/") {
			// The body read, the server notices the client leaving.
			_, _ = io.Copy(io.Discard, r.Body)
			hung.Add(1)
			inFlight.Add(1)
			defer inFlight.Add(-1)
			select {
			case <-r.Context().Done():
			case <-ctx.Done():
			}
			http.Error(w, "held", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer slow.Close()
	slowCfg := &rest.Config{Host: slow.URL}
	kc := kubernetes.NewForConfigOrDie(cfg)
	dyn, err := dynamic.NewForConfig(slowCfg)
	if err != nil {
		t.Fatal(err)
	}

	const node, ns = "waitnode", "wait-programmed"
	if _, err := kc.CoreV1().Nodes().Create(ctx, kubeNode(node, []string{"10.250.0.0/24"}, "172.31.0.2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kc.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = kc.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })

	e := NewEnforcement(EnforceConfig{NodeName: node, Client: kc, Dynamic: dyn,
		Enforcer: enforcer.New(node, dp, policy.Options{Node: node}), EndpointDir: t.TempDir(), DriftInterval: -1})
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- e.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	for e.Ready() != nil {
		if ctx.Err() != nil {
			t.Fatalf("the enforcement never synced: %v", e.Ready())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for inFlight.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("the first sync's status was never written")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A pod of the node, as the CNI plugin records it before it asks.
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "none"}}}}
	p, err = kc.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ifindex := datapathtest.Link(t, "npwait0")
	if err := cniplugin.WriteEndpoint(e.cfg.EndpointDir, cniplugin.Endpoint{ContainerID: "c1", Namespace: ns, Pod: "web",
		PodUID: string(p.UID), HostVeth: "npwait0", HostIfIndex: ifindex, IPs: []string{"10.250.0.7"}}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := e.WaitProgrammed(wctx, ns, "web", string(p.UID)); err != nil {
		t.Fatalf("the ADD waited on the status write: %v (status writes held: %d, in flight: %d)", err, hung.Load(), inFlight.Load())
	}
	if !e.cfg.Enforcer.IsProgrammed(policy.EndpointKey{Namespace: ns, Name: "web"}) {
		t.Fatalf("the pod is not programmed: %v", e.cfg.Enforcer.Failed())
	}
	if inFlight.Load() == 0 {
		t.Fatal("no status write was held while the pod was programmed: the test proves nothing")
	}
}
