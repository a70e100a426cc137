// Package kubetest starts a real API server for controller tests, the envtest way: etcd and
// kube-apiserver built from source offline (make envtest-assets builds them from the modules
// under kind/images into bin/envtest; KUBEBUILDER_ASSETS points elsewhere), with netpact's and
// Cilium's CRDs from deploy/crds installed.
package kubetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/netpact/netpact/internal/testenv"
)

// root is the repository root (this file is internal/kubetest/kubetest.go).
func root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Assets is the directory with kube-apiserver and etcd: KUBEBUILDER_ASSETS, else bin/envtest.
func Assets() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join(root(), "bin", "envtest")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s not in %s (make envtest-assets builds it from source)", b, dir)
		}
	}
	return dir, nil
}

// Server is one API server shared by the tests of a package: started by the first Start, stopped
// by Stop in TestMain.
type Server struct {
	mu  sync.Mutex
	env *envtest.Environment
	cfg *rest.Config
	err error
}

// Start returns the running API server's config, starting it on first use; a missing binary
// skips the test (fails it with CI=true).
func (s *Server) Start(t testenv.TB) *rest.Config {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg != nil {
		return s.cfg
	}
	if s.err != nil {
		t.Fatalf("API server: %v", s.err)
	}
	assets, err := Assets()
	if err != nil {
		testenv.Missing(t, "kube-apiserver and etcd", err.Error())
		return nil
	}
	s.env = &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root(), "deploy", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := s.env.Start()
	if err != nil {
		s.err = err
		s.env.Stop()
		s.env = nil
		t.Fatalf("start kube-apiserver and etcd: %v", err)
	}
	s.cfg = cfg
	return cfg
}

// Stop stops the API server and etcd, if started, and removes their data.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.env == nil {
		return nil
	}
	err := s.env.Stop()
	s.env, s.cfg = nil, nil
	return err
}

// WriteKubeconfig writes a kubeconfig for cfg (its server, credentials and impersonated user) to
// path, with one context, named context and current: what a command under test reads with
// --kubeconfig.
func WriteKubeconfig(cfg *rest.Config, path, context string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[context] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos[context] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		Token: cfg.BearerToken, Impersonate: cfg.Impersonate.UserName, ImpersonateGroups: cfg.Impersonate.Groups}
	kc.Contexts[context] = &clientcmdapi.Context{Cluster: context, AuthInfo: context}
	kc.CurrentContext = context
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// CreatePod creates p, then writes p.Status through the status subresource as a kubelet would:
// the API server alone runs no pod, so a test gives it its phase and addresses.
func CreatePod(ctx context.Context, client kubernetes.Interface, p *corev1.Pod) error {
	status := p.Status
	got, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	got.Status = status
	if _, err := client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, got, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}
