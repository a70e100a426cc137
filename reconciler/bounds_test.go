package reconciler

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/api/v1alpha1"
)

// TestPolicySourceBounds: the API server refuses an interval or timeout outside the bounds, with
// the CRD's message; the controller keeps them too (objects stored before the bounds), and gives
// a namespace one worker at a time.
func TestPolicySourceBounds(t *testing.T) {
	cl, ctx := namespaceClient(t, "np-bounds")
	for _, tc := range []struct {
		name              string
		interval, timeout time.Duration
		refused           string
	}{
		{"busy loop", time.Millisecond, 0, "interval must be between 10s and 168h"},
		{"a year", 365 * 24 * time.Hour, 0, "interval must be between 10s and 168h"},
		{"a worker held for an hour", time.Minute, time.Hour, "timeout must be between 1s and 5m"},
		{"within", 10 * time.Second, 5 * time.Minute, ""},
	} {
		ps := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Namespace: "np-bounds", Name: strings.ReplaceAll(tc.name, " ", "-")},
			Spec: v1alpha1.PolicySourceSpec{URL: "https://git.example/p.git", Interval: metav1.Duration{Duration: tc.interval},
				Timeout: metav1.Duration{Duration: tc.timeout}}}
		err := cl.Create(ctx, ps)
		switch {
		case tc.refused == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused)):
			t.Errorf("%s: %v, want refused with %q", tc.name, err, tc.refused)
		}
	}
	for url, ok := range map[string]bool{"file:///etc": false, "git@github.com:org/repo.git": false, "ext::sh -c id": false,
		"ssh://git@github.com/org/repo.git": true, "https://git.example/p.git": true} {
		ps := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Namespace: "np-bounds", GenerateName: "url-"},
			Spec: v1alpha1.PolicySourceSpec{URL: url, Interval: metav1.Duration{Duration: time.Minute}}}
		if err := cl.Create(ctx, ps); (err == nil) != ok {
			t.Errorf("url %q: %v, want accepted %v", url, err, ok)
		}
	}
	if boundInterval(time.Millisecond) != v1alpha1.MinInterval || boundInterval(0) != time.Minute ||
		boundTimeout(time.Hour) != v1alpha1.MaxTimeout || boundTimeout(0) != 0 {
		t.Error("the controller does not keep the bounds")
	}
	c := &Controller{}
	if !c.acquire("tenant") || c.acquire("tenant") || !c.acquire("platform") {
		t.Fatal("a namespace gets more than one worker, or another namespace none")
	}
	c.release("tenant")
	if !c.acquire("tenant") {
		t.Error("a released namespace cannot be taken again")
	}
}

// TestHookSecretPerSource: a source that names a webhook Secret of its own is signed for by its
// token alone, not by the receiver's shared secret; one that names none takes the shared one; one
// whose Secret cannot be read takes none (every delivery refused).
func TestHookSecretPerSource(t *testing.T) {
	cl, ctx := namespaceClient(t, "np-hooks")
	if err := cl.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "np-hooks", Name: "hook"}, Data: map[string][]byte{"token": []byte("tenant-token")}}); err != nil {
		t.Fatal(err)
	}
	for name, ref := range map[string]string{"own": "hook", "shared": "", "unreadable": "missing"} {
		ps := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Namespace: "np-hooks", Name: name},
			Spec: v1alpha1.PolicySourceSpec{URL: "https://git.example/p.git", Interval: metav1.Duration{Duration: time.Minute}}}
		if ref != "" {
			ps.Spec.WebhookSecretRef = &v1alpha1.LocalObjectReference{Name: ref}
		}
		if err := cl.Create(ctx, ps); err != nil {
			t.Fatal(err)
		}
	}
	c := &Controller{Client: cl, APIReader: cl}
	for name, want := range map[string]string{"own": "tenant-token", "shared": "platform", "unreadable": "", "no-such-source": "platform"} {
		if got := string(c.HookSecret(ctx, "np-hooks", name, []byte("platform"))); got != want {
			t.Errorf("%s: secret %q, want %q", name, got, want)
		}
	}
}

// namespaceClient is a client of the package's API server (PolicySources and core objects) and a
// namespace made for the test.
func namespaceClient(t *testing.T, name string) (client.Client, context.Context) {
	t.Helper()
	cfg := apiServer.Start(t)
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := cl.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Delete(context.Background(), ns) })
	return cl, ctx
}
