package scenarios

import (
	"context"
	"regexp"
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
// cluster backend fails a scenario with externals when it has no kind cluster to run them on,
// or no netpact image, before it touches the cluster, naming each.
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
	c := NewCluster(ClusterOptions{Config: cfg, Client: kc})
	_, err = c.Start(sc)
	for _, want := range []string{
		"externals need a kind cluster: their hosts run as containers on its Docker network",
		"externals need the netpact image (ProbeImage)",
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
	c = NewCluster(ClusterOptions{Config: cfg, Client: kc, Kind: "netpact-e2e", ProbeImage: "netpact:test"})
	if err := c.supports(ctx, sc); err != nil {
		t.Errorf("with a kind cluster and the image: %v", err)
	}
	if mode, err := c.enforcerMode(ctx); err != nil || mode != "default" {
		t.Errorf("enforcers' mode: %s, %v", mode, err)
	}
	if err := setModeArg(ds, "always"); err != nil || ds.Spec.Template.Spec.Containers[0].Args[1] != "--policy-enforcement-mode=always" {
		t.Errorf("set the mode argument: %v %v", err, ds.Spec.Template.Spec.Containers[0].Args)
	}
}

// kubeadmCorefile is the Corefile kubeadm gives CoreDNS.
const kubeadmCorefile = `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
`

// TestCorefileHosts: the externals' names go first in the root server block with the
// scenario's TTL and fall through for other names; removing the block gives the Corefile back,
// and adding it twice keeps one.
func TestCorefileHosts(t *testing.T) {
	sc, err := LoadFile("testdata/externals.yaml")
	if err != nil {
		t.Fatal(err)
	}
	block := hostsBlock(sc)
	got, err := withHosts(kubeadmCorefile, block)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".:53 {\n" + corefileBegin + "\n    template IN A api.stripe.com. {\n",
		"        match \"^api[.]stripe[.]com[.]$\"\n        answer \"{{ .Name }} 2 IN A 198.51.100.1\"\n        fallthrough\n",
		"answer \"{{ .Name }} 2 IN AAAA 2001:db8::1\"",
		"    template ANY ANY . {\n        match \"" + outsideCluster + "\"\n        rcode NXDOMAIN\n        fallthrough\n    }\n" +
			corefileEnd + "\n    errors\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("want %q in\n%s", want, got)
		}
	}
	if again, _ := withHosts(got, block); again != got {
		t.Errorf("added twice:\n%s", again)
	}
	if back := withoutHosts(got); back != kubeadmCorefile {
		t.Errorf("removed:\n%s", back)
	}
	if _, err := withHosts("example.org {\n}\n", block); err == nil {
		t.Error("a Corefile without .:53 took the block")
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

// TestOutsideCluster: the names CoreDNS answers NXDOMAIN for during a scenario are those outside
// .local and .arpa, whatever their length.
func TestOutsideCluster(t *testing.T) {
	re := regexp.MustCompile(outsideCluster)
	for name, want := range map[string]bool{
		"nowhere.example.com.": true, "a.b.": true, "x.arpb.": true, "x.locals.": true, "x.lo.": true, "io.": true,
		"kube-dns.kube-system.svc.cluster.local.": false, "nowhere.example.com.default.svc.cluster.local.": false,
		"10.0.96.10.in-addr.arpa.": false, "local.": false, ".": false,
	} {
		if got := re.MatchString(name); got != want {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
}
