package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/reconciler"
)

// controllerOptions are the flags of `netpact reconciler`: the cluster's
// PolicySource controller.
type controllerOptions struct {
	kube                               *clusterFlags
	namespace                          string
	leaderElect                        bool
	metricsListen, healthListen        string
	receiverListen, receiverSecretFile string
	enforceTimeout                     time.Duration
}

// runController runs the PolicySource controller until ctx ends: the manager (leader election,
// metrics, health) and the webhook receiver. The admission webhook runs apart (netpact admission).
func runController(ctx context.Context, o controllerOptions) error {
	cfg, err := o.kube.restConfig()
	if err != nil {
		return err
	}
	// Waiting for every node polls the API server every 100 ms per source being enforced:
	// client-go's default of 5 requests per second would space the polls out to a second.
	cfg.QPS, cfg.Burst = 50, 100
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// The container's memory limit, 90% of it as Go's soft limit: the collector works harder
	// before the kernel kills the process.
	if limit, ok := softMemoryLimit("/sys/fs/cgroup/memory.max"); ok {
		log.Info("Go soft memory limit from the container's", "bytes", limit)
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	if o.namespace == "" {
		o.namespace = os.Getenv("POD_NAMESPACE")
	}
	if o.namespace == "" {
		o.namespace = "netpact-system"
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme,
		Metrics: metricsserver.Options{BindAddress: o.metricsListen}, HealthProbeBindAddress: o.healthListen,
		LeaderElection: o.leaderElect, LeaderElectionID: "netpact-reconciler", LeaderElectionNamespace: o.namespace})
	if err != nil {
		return fmt.Errorf("controller manager: %w", err)
	}
	c := &reconciler.Controller{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Config: cfg, Events: mgr.GetEventRecorder("netpact-reconciler"),
		Namespace: o.namespace, WorkDir: os.TempDir(), EnforceTimeout: o.enforceTimeout}
	if err := c.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up the controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	errs := make(chan error, 2)
	if o.receiverListen != "" {
		if _, err := reconciler.ReadSecretFile(o.receiverSecretFile); errors.Is(err, os.ErrNotExist) {
			// The Secret is optional: every hook is refused (401) until its file exists.
			log.Warn("webhook receiver has no secret yet: every push is refused until the file exists", "file", o.receiverSecretFile)
		} else if err != nil {
			return fmt.Errorf("--webhook-secret-file: %w", err)
		}
		secret := func() []byte {
			b, _ := reconciler.ReadSecretFile(o.receiverSecretFile)
			return b
		}
		srv := newServer(o.receiverListen, clusterHookMux(c, secret))
		go func() { errs <- srv.ListenAndServe() }()
		defer srv.Close()
	}
	go func() { errs <- mgr.Start(ctx) }()
	log.Info("PolicySource controller starting", "namespace", o.namespace, "leaderElection", o.leaderElect,
		"receiver", o.receiverListen)
	select {
	case err := <-errs:
		if err == http.ErrServerClosed {
			return nil
		}
		return err
	case <-ctx.Done():
		return nil
	}
}

// clusterHookMux serves the webhook receiver for every PolicySource:
// /hook/NAMESPACE/NAME/{github,gitlab,generic-hmac}, signed with the receiver's secret; an
// authenticated push asks for a reconcile of that source.
func clusterHookMux(c *reconciler.Controller, secret func() []byte) *http.ServeMux {
	type key struct{}
	rc := &reconciler.Receiver{OnPush: func(r *http.Request) {
		nn := r.Context().Value(key{}).([2]string)
		c.Poke(nn[0], nn[1])
	}, SecretFor: func(r *http.Request) []byte {
		// A source with a webhook secret of its own takes only that one.
		nn := r.Context().Value(key{}).([2]string)
		return c.HookSecret(r.Context(), nn[0], nn[1], secret())
	}}
	mux := http.NewServeMux()
	mux.HandleFunc("/hook/{namespace}/{name}/{provider}", func(w http.ResponseWriter, r *http.Request) {
		r2 := r.WithContext(context.WithValue(r.Context(), key{}, [2]string{r.PathValue("namespace"), r.PathValue("name")}))
		r2.URL.Path = "/hook/" + r.PathValue("provider")
		rc.ServeHTTP(w, r2)
	})
	return mux
}
