package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/reconciler"
)

// admissionOptions are the flags of `netpact admission`.
type admissionOptions struct {
	kube                     *clusterFlags
	namespace                string
	listen, healthListen     string
	service, config, secret  string
	certCheck, shutdownDelay time.Duration
}

func newAdmissionCommand() *cobra.Command {
	var o admissionOptions
	cmd := &cobra.Command{
		Use:   "admission [--listen :9443]",
		Short: "Serve the admission webhook that refuses, at the API server, what netpact validate refuses",
		Long: `admission serves /validate-policy over HTTPS for the ValidatingWebhookConfiguration --config:
a CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy that netpact's loader refuses
is refused with the loader's field path and message, and a namespace's CIDR budget is kept.
Its certificate is issued here and kept in the Secret --cert-secret, which every replica shares;
each replica reads it again every --cert-check, and a renewal keeps the previous CA trusted so
that a replica still serving the old certificate is not refused. It runs apart from the
controller that clones tenants' repositories, in replicas of its own (deploy/reconciler/).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runAdmission(ctx, o)
		},
	}
	f := cmd.Flags()
	o.kube = addDaemonClusterFlags(f)
	f.StringVar(&o.namespace, "namespace", "", "namespace of the certificate's Secret (POD_NAMESPACE, else netpact-system)")
	f.StringVar(&o.listen, "listen", ":9443", "address of the webhook (HTTPS)")
	f.StringVar(&o.healthListen, "health-listen", ":8081", "address of /healthz and /readyz (ready once a certificate is served)")
	f.StringVar(&o.service, "service", "netpact-system/netpact-admission", "the webhook's Service (namespace/name), for the certificate's names")
	f.StringVar(&o.config, "config", "netpact-policies", "the ValidatingWebhookConfiguration whose caBundle is kept")
	f.StringVar(&o.secret, "cert-secret", "netpact-webhook-cert", "Secret holding the webhook's CA and certificate")
	f.DurationVar(&o.certCheck, "cert-check", time.Minute, "how often the Secret is read again (a renewal by another replica is taken)")
	f.DurationVar(&o.shutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, how long the replica keeps serving, not ready, while it leaves the Service's endpoints")
	return cmd
}

// runAdmission serves the admission webhook until ctx ends.
func runAdmission(ctx context.Context, o admissionOptions) error {
	cfg, err := o.kube.restConfig()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// The container's memory limit, 90% of it as Go's soft limit: the collector works harder
	// before the kernel kills the process.
	if limit, ok := softMemoryLimit("/sys/fs/cgroup/memory.max"); ok {
		log.Info("Go soft memory limit from the container's", "bytes", limit)
	}
	if o.namespace == "" {
		o.namespace = os.Getenv("POD_NAMESPACE")
	}
	if o.namespace == "" {
		o.namespace = "netpact-system"
	}
	svcNS, svcName, ok := strings.Cut(o.service, "/")
	if !ok || svcNS == "" || svcName == "" {
		return fmt.Errorf("--service %q: want namespace/name", o.service)
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("admission: kubernetes client: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	// The namespace's CIDR budget is read uncached, at each review: the webhook keeps no copy of
	// the cluster's policies.
	reader, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("admission: client: %w", err)
	}
	cm := &reconciler.CertManager{Client: kc, Namespace: o.namespace, Secret: o.secret, Webhook: o.config,
		DNSNames: []string{svcName + "." + svcNS + ".svc", svcName + "." + svcNS + ".svc.cluster.local"}}
	// Until the certificate is issued or read the handshakes fail, and the replica is not ready.
	go func() {
		onErr := func(err error) { log.Error("webhook certificate", "err", err) }
		if cm.EnsureRetrying(ctx, onErr) == nil {
			log.Info("webhook certificate ready")
			cm.Run(ctx, o.certCheck, onErr)
		}
	}()
	errs := make(chan error, 2)
	var draining atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/validate-policy", &reconciler.AdmissionHandler{NamespaceCIDRs: reconciler.NamespaceCIDRCounter(reader)})
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("admission webhook: %w", err)
	}
	srv := newServer("", mux)
	srv.TLSConfig = &tls.Config{GetCertificate: cm.GetCertificate, MinVersion: tls.VersionTLS12}
	go func() { errs <- srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	if o.healthListen != "" && o.healthListen != "0" {
		health := http.NewServeMux()
		health.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
		health.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			if draining.Load() {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
				return
			}
			if _, err := cm.GetCertificate(nil); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			w.Write([]byte("ok"))
		})
		hs := newServer(o.healthListen, health)
		go func() { errs <- hs.ListenAndServe() }()
		defer hs.Close()
	}
	log.Info("admission webhook serving", "listen", o.listen, "service", o.service, "config", o.config)
	select {
	case err := <-errs:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	// Reviews keep being answered while the Service's endpoints and every node's Service rules
	// drop this replica: the API server may still call it (failurePolicy Fail would refuse the
	// write), and a rollout or drain must not refuse policy writes.
	draining.Store(true)
	log.Info("admission webhook draining", "for", o.shutdownDelay)
	time.Sleep(o.shutdownDelay)
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
