//go:build linux

package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/netpact/netpact/internal/kubetest"
)

// TestClusterFlagsSelectTheCluster: a kubeconfig with two contexts, "envtest" the test API
// server and "closed" (current) a port nobody listens on. --kubeconfig and KUBECONFIG find the
// file, --context picks the context, as kubectl does; without --context the current one is
// used. Commands with a local default read a cluster only when --kubeconfig or --context names
// one.
func TestClusterFlagsSelectTheCluster(t *testing.T) {
	cfg := apiServer.Start(t)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "two-contexts")
	if err := kubetest.WriteKubeconfig(cfg, kubeconfig, "envtest"); err != nil {
		t.Fatal(err)
	}
	closed := closedPort(t)
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc.Clusters["closed"] = &clientcmdapi.Cluster{Server: "https://" + closed, InsecureSkipTLSVerify: true}
	kc.AuthInfos["closed"] = &clientcmdapi.AuthInfo{Token: "nobody"}
	kc.Contexts["closed"] = &clientcmdapi.Context{Cluster: "closed", AuthInfo: "closed"}
	kc.CurrentContext = "closed"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	refused := closed + ": connect: connection refused"
	// No PolicySource is named so in the test API server: reaching it answers "not found".
	reached := `policysources.netpact.io "no-such-source" not found`

	for _, tc := range []struct {
		env  string
		args []string
		want string
	}{
		{"", []string{"reconcile", "source", "no-such-source", "--kubeconfig", kubeconfig, "--context", "envtest"}, reached},
		{"", []string{"reconcile", "source", "no-such-source", "--kubeconfig", kubeconfig}, refused},
		{kubeconfig, []string{"reconcile", "source", "no-such-source", "--context", "envtest"}, reached},
		{kubeconfig, []string{"reconcile", "source", "no-such-source"}, refused},
		{kubeconfig, []string{"reconcile", "source", "no-such-source", "--context", "nonesuch"}, `context "nonesuch" does not exist`},
		{filepath.Join(dir, "missing"), []string{"reconcile", "source", "no-such-source"}, "no cluster: no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config), and not in a pod"},
		{kubeconfig, []string{"status", "--context", "closed"}, refused},
		{kubeconfig, []string{"observe", "--context", "envtest"}, "the enforcer DaemonSet (netpact) in any namespace: not installed"},
		{kubeconfig, []string{"observe", "--context", "closed"}, refused},
		{kubeconfig, []string{"predict", "--context", "closed", "."}, refused},
		{kubeconfig, []string{"plan", "--context", "closed", ".", "."}, refused},
		// KUBECONFIG alone does not turn a local command to the cluster.
		{kubeconfig, []string{"status", "--status-file", filepath.Join(dir, "none.json")}, "read status (is the reconciler running?)"},
		{kubeconfig, []string{"status", "--token", "x"}, "--token names no cluster by itself: give --kubeconfig FILE or --context NAME too"},
	} {
		t.Setenv("KUBECONFIG", tc.env)
		stdout, stderr, err := runErr(tc.args...)
		if got := stderr + errText(err); !strings.Contains(got, tc.want) {
			t.Errorf("KUBECONFIG=%s netpact %s: want %q in\n%s%s", tc.env, strings.Join(tc.args, " "), tc.want, stdout, got)
		}
	}

	t.Setenv("KUBECONFIG", kubeconfig)
	stdout, stderr, code := run(t, "status", "--context", "envtest", "-n", "nothing-here", "-o", "json")
	if !strings.Contains(stdout, `"sources": []`) {
		t.Errorf("status --context envtest: exit %d\n%s%s", code, stdout, stderr)
	}
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
