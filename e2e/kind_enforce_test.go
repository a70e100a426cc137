package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/enforcer/kubenode"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/scenarios"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// netpactPod is a pod of the netpact image running args, on any worker.
func netpactPod(ns, name string, labels map[string]string, args ...string) *corev1.Pod {
	grace := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &grace, Containers: []corev1.Container{{
			Name: "main", Image: kindData.ProbeImage, ImagePullPolicy: corev1.PullNever, Args: args}}},
	}
}

func createNamespace(ctx context.Context, client kubernetes.Interface, name string) {
	err := client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if err == nil || !apierrors.IsNotFound(err) {
		Eventually(func() bool {
			_, err := client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		}).WithTimeout(2*time.Minute).WithPolling(time.Second).Should(BeTrue(), "namespace %s of an earlier run gone", name)
	}
	_, err = client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func(ctx SpecContext) {
		_ = client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	// Pods need the namespace's default service account.
	Eventually(func() error {
		_, err := client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err
	}).WithTimeout(30 * time.Second).Should(Succeed())
}

var _ = Describe("the netpact enforcer on kind", Ordered, Label("kind"), func() {
	var (
		client kubernetes.Interface
		ctx    = context.Background()
	)
	BeforeAll(func() {
		if kindData == nil {
			Skip("the kind specs run with make e2e (ginkgo --label-filter=kind)")
		}
		_, client = kindClient(kindData)
	})

	It("never lets a packet of a new pod past an egress default deny, even one sent from its first instant", func() {
		createNamespace(ctx, client, "np-window-sink")
		createNamespace(ctx, client, "np-window")
		createNamespace(ctx, client, "np-window-open")
		// The sink logs every source address that reaches it.
		sink := netpactPod("np-window-sink", "sink", nil, "probe-server", "--port=9000/UDP", "--port=9000/TCP", "--log")
		_, err := client.CoreV1().Pods(sink.Namespace).Create(ctx, sink, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(kubeapply.WaitPodsReady(ctx, client, sink.Namespace)).To(Succeed())
		sinkPod, err := client.CoreV1().Pods(sink.Namespace).Get(ctx, "sink", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		to := netipPort(sinkPod.Status.PodIP, 9000)

		deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-egress", Namespace: "np-window"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}}
		_, err = client.NetworkingV1().NetworkPolicies("np-window").Create(ctx, deny, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		// Every node enforces it before the pods come (the policy is old news to them).
		Eventually(func() error { return nodesEnforce(ctx, "np-window", "deny-egress") }).
			WithTimeout(time.Minute).WithPolling(200 * time.Millisecond).Should(Succeed())

		// Pods that send from their first instant: six under the deny, one (the control) open.
		const n = 6
		for i := 0; i < n; i++ {
			p := netpactPod("np-window", fmt.Sprintf("flood-%d", i), map[string]string{"app": "flood"},
				"probe-flood", "--to="+to, "--for=20s")
			_, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
		}
		ctl := netpactPod("np-window-open", "flood", nil, "probe-flood", "--to="+to, "--for=20s")
		_, err = client.CoreV1().Pods(ctl.Namespace).Create(ctx, ctl, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		Expect(kubeapply.WaitPodsReady(wctx, client, "np-window")).To(Succeed())
		Expect(kubeapply.WaitPodsReady(wctx, client, "np-window-open")).To(Succeed())
		time.Sleep(3 * time.Second)

		logs := func() string {
			raw, err := client.CoreV1().Pods(sink.Namespace).GetLogs("sink", &corev1.PodLogOptions{}).DoRaw(ctx)
			Expect(err).NotTo(HaveOccurred())
			return string(raw)
		}
		ctlPod, err := client.CoreV1().Pods("np-window-open").Get(ctx, "flood", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		Eventually(logs).WithTimeout(10*time.Second).Should(ContainSubstring("from "+ctlPod.Status.PodIP+"\n"),
			"the open pod's flood reaches the sink: the flood works")
		pods, err := client.CoreV1().Pods("np-window").List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(pods.Items).To(HaveLen(n))
		nodes := map[string]bool{}
		got := logs()
		for _, p := range pods.Items {
			nodes[p.Spec.NodeName] = true
			for _, ip := range p.Status.PodIPs {
				Expect(got).NotTo(ContainSubstring("from "+ip.IP+"\n"), "pod %s (%s) got past the egress deny:\n%s", p.Name, ip.IP, got)
			}
		}
		Expect(len(nodes)).To(BeNumerically(">=", 2), "the pods under the deny landed on both workers")
	})

	// soak probes seed 001's last step round after round while disrupt runs, and fails on any
	// probe whose verdict is not the expected one.
	soak := func(disrupt func()) {
		sc, err := scenarios.LoadFile(filepath.Join(root, "scenarios", "seeds", "001-frontend-to-backend.yaml"))
		Expect(err).NotTo(HaveOccurred())
		cfg, client := kindClient(kindData)
		backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client, ProbeImage: kindData.ProbeImage,
			ProbeTimeout: 1500 * time.Millisecond})
		done := make(chan struct{})
		started := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			defer close(done)
			<-started
			disrupt()
		}()
		var once sync.Once
		probes, wrong, err := (&scenarios.Runner{Backend: backend}).Soak(sc, "frontend-egress-control as well", func(n int) bool {
			if n > 0 {
				once.Do(func() { close(started) })
			}
			select {
			case <-done:
				return n < 200
			default:
				return true
			}
		})
		Expect(err).NotTo(HaveOccurred())
		AddReportEntry("soak probes", probes)
		var lines []string
		for _, c := range wrong {
			lines = append(lines, fmt.Sprintf("%s: expected %s, observed %s", c.Cell, c.Expected, c.Observed))
		}
		Expect(wrong).To(BeEmpty(), "%d of %d probes wrong:\n%s", len(wrong), probes, strings.Join(lines, "\n"))
		Expect(probes).To(BeNumerically(">=", 200))
	}

	enforcerPod := func(node string) corev1.Pod {
		pods, err := client.CoreV1().Pods(netpactNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=netpact",
			FieldSelector: "spec.nodeName=" + node})
		Expect(err).NotTo(HaveOccurred())
		Expect(pods.Items).To(HaveLen(1))
		return pods.Items[0]
	}

	It("keeps every verdict while one node's enforcer is killed with SIGKILL and restarts", func() {
		soak(func() {
			node := "netpact-e2e-worker"
			before := enforcerPod(node)
			restarts := before.Status.ContainerStatuses[0].RestartCount
			out, err := exec.Command("docker", "exec", node, "pkill", "-9", "-f", "^/usr/local/bin/netpact enforcer").CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "kill the enforcer on %s: %s", node, out)
			Eventually(func() bool {
				p := enforcerPod(node)
				return p.Status.ContainerStatuses[0].RestartCount > restarts && kubeapply.PodReady(&p)
			}).WithTimeout(2 * time.Minute).WithPolling(500 * time.Millisecond).Should(BeTrue())
		})
	})

	It("restores the L7 proxy when its enforcer is killed: seed 002's L7 step passes on both workers after", func() {
		for _, node := range []string{"netpact-e2e-worker", "netpact-e2e-worker2"} {
			before := enforcerPod(node)
			restarts := before.Status.ContainerStatuses[0].RestartCount
			out, err := exec.Command("docker", "exec", node, "pkill", "-9", "-f", "^/usr/local/bin/netpact enforcer").CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), "kill the enforcer on %s: %s", node, out)
			Eventually(func() bool {
				p := enforcerPod(node)
				return p.Status.ContainerStatuses[0].RestartCount > restarts && kubeapply.PodReady(&p)
			}).WithTimeout(2 * time.Minute).WithPolling(500 * time.Millisecond).Should(BeTrue())
		}
		res, report := runOnKind("seeds", "002-flask-postgres.yaml")
		Expect(res.Error).To(BeEmpty(), report)
		Expect(res.Steps).To(HaveLen(3))
		Expect(res.Steps[2].Pending).To(BeEmpty())
		Expect(res.Steps[2].Failed).To(BeFalse(), "the L7 step after the restarts:\n%s", report)
	})

	It("hands a pod's egress to an address outside the cluster to the L7 proxy: allowed GETs answer, from the node's address, others get Cilium's 403", func() {
		const node = "netpact-e2e-worker"
		n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		var nodeIP netip.Addr
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == corev1.NodeInternalIP && ip.Is4() {
				nodeIP = ip
			}
		}
		Expect(nodeIP.IsValid()).To(BeTrue(), "node %s has no IPv4 InternalIP", node)
		// Outside the cluster: this process, on the host's address in the kind nodes' network.
		hostIP := hostAddressFacing(nodeIP)
		Expect(hostIP.IsValid()).To(BeTrue(), "no address of this host is in the network of %s", nodeIP)
		ln, err := net.Listen("tcp4", net.JoinHostPort(hostIP.String(), "0"))
		Expect(err).NotTo(HaveOccurred())
		seen := make(chan string, 100)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case seen <- r.RemoteAddr:
			default:
			}
			io.WriteString(w, "outside")
		})}
		go srv.Serve(ln)
		DeferCleanup(func() { srv.Close() })
		port := uint16(ln.Addr().(*net.TCPAddr).Port)

		createNamespace(ctx, client, "np-l7out")
		pod := netpactPod("np-l7out", "client", map[string]string{"app": "client"}, "probe-server")
		pod.Spec.NodeName = node
		_, err = client.CoreV1().Pods("np-l7out").Create(ctx, pod, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-l7out")).To(Succeed())
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		objs, err := kubeapply.Decode("e2e", []byte(fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: outside-l7, namespace: np-l7out}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toCIDR: [%s/32]
      toPorts:
        - ports: [{port: "%d", protocol: TCP}]
          rules:
            http: [{method: GET, path: /allowed}]
`, hostIP, port)))
		Expect(err).NotTo(HaveOccurred())
		cnp, err := applier.ApplyOne(ctx, objs[0], "e2e")
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() error { return nodesAt(ctx, cnp, 1, "") }).WithTimeout(time.Minute).Should(Succeed())
		Eventually(func() string { return httpFrom(ctx, "np-l7out", "client", hostIP.String(), port, "/allowed") }).
			WithTimeout(time.Minute).Should(Equal("http-200"))
		Expect(httpFrom(ctx, "np-l7out", "client", hostIP.String(), port, "/denied")).To(Equal("http-403"))
		// The proxy connects from the node's address: the node masquerades what leaves the cluster.
		var from []string
		for len(seen) > 0 {
			from = append(from, <-seen)
		}
		Expect(from).NotTo(BeEmpty())
		for _, a := range from {
			ap, err := netip.ParseAddrPort(a)
			Expect(err).NotTo(HaveOccurred())
			Expect(ap.Addr()).To(Equal(nodeIP), "the outside server saw requests from %v", from)
		}
		// The other ports of that address stay denied at L3/L4.
		Expect(probeFrom(ctx, "np-l7out", "client", hostIP.String(), port+1)).To(Equal("timeout"))
		cl, err := client.CoreV1().Pods("np-l7out").Get(ctx, "client", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		enf := enforcerPod(node)
		// The proxy's record of the denied request: Hubble's L7 request flow, DROPPED (a denied
		// request has no response record; the pod got the proxy's 403).
		rs := enforcerFlows(ctx, client, enf.Name, observe.Filter{FromIPs: []string{cl.Status.PodIP}, Protocols: []string{"http"}})
		Expect(flowsOf(rs)).To(ContainElement(SatisfyAll(HaveField("Verdict", observe.Dropped),
			HaveField("L7.HTTP", SatisfyAll(Not(BeNil()), HaveField("Method", "GET"), HaveField("URL", ContainSubstring("/denied")))))),
			"flows:\n%s", renderFlows(rs, observe.OutputCompact))
	})

	It("keeps every verdict through a rollout of the DaemonSet", func() {
		soak(func() {
			patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"netpact.io/restartedAt":%q}}}}}`,
				time.Now().Format(time.RFC3339Nano))
			_, err := client.AppsV1().DaemonSets(netpactNS).Patch(ctx, "netpact", ktypes.StrategicMergePatchType,
				[]byte(patch), metav1.PatchOptions{})
			Expect(err).NotTo(HaveOccurred())
			Eventually(func() bool {
				d, err := client.AppsV1().DaemonSets(netpactNS).Get(ctx, "netpact", metav1.GetOptions{})
				Expect(err).NotTo(HaveOccurred())
				s := d.Status
				return s.ObservedGeneration == d.Generation && s.UpdatedNumberScheduled == s.DesiredNumberScheduled &&
					s.NumberReady == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled
			}).WithTimeout(3 * time.Minute).WithPolling(time.Second).Should(BeTrue())
		})
	})

	It("lets each enforcer write only its own node's status object", func() {
		cfg, _ := kindClient(kindData)
		self := enforcerPod("netpact-e2e-worker")
		// A token of the enforcer's service account bound to its pod carries the pod's node.
		tok, err := client.CoreV1().ServiceAccounts(netpactNS).CreateToken(ctx, "netpact", &authv1.TokenRequest{
			Spec: authv1.TokenRequestSpec{BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1",
				Name: self.Name, UID: self.UID}}}, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		asEnforcer := rest.AnonymousClientConfig(cfg)
		asEnforcer.BearerToken = tok.Status.Token
		dyn, err := dynamic.NewForConfig(asEnforcer)
		Expect(err).NotTo(HaveOccurred())
		write := func(node string) error {
			patch := fmt.Sprintf(`{"apiVersion":"netpact.io/v1alpha1","kind":"NodePolicyStatus","metadata":{"name":%q},"status":{"policyCount":0,"endpoints":0,"failedEndpoints":0,"errorCount":0}}`, node)
			force := true
			_, err := dyn.Resource(kubenode.NPSResource).Patch(ctx, node, ktypes.ApplyPatchType, []byte(patch),
				metav1.PatchOptions{FieldManager: "e2e-dry-run", Force: &force, DryRun: []string{metav1.DryRunAll}})
			return err
		}
		Expect(write("netpact-e2e-worker")).To(Succeed(), "its own node's")
		err = write("netpact-e2e-worker2")
		Expect(err).To(HaveOccurred(), "another node's status")
		Expect(err.Error()).To(ContainSubstring("its own node"))
		// And nothing else of ours: no policy writes.
		err = dyn.Resource(kubenode.CNPResource).Namespace("default").Delete(ctx, "anything", metav1.DeleteOptions{})
		Expect(apierrors.IsForbidden(err)).To(BeTrue(), "delete a CNP: %v", err)
	})

	It("keeps enforcing the last good version of a policy the API server accepts and the enforcer refuses", func() {
		createNamespace(ctx, client, "np-bad")
		createNamespace(ctx, client, "np-bad-client")
		srv := netpactPod("np-bad", "server", map[string]string{"app": "server"}, "probe-server", "--port=8080/TCP")
		_, err := client.CoreV1().Pods("np-bad").Create(ctx, srv, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		cl := netpactPod("np-bad-client", "client", nil, "probe-server")
		cl.Annotations = map[string]string{"netpact.io/prober": "true"}
		_, err = client.CoreV1().Pods("np-bad-client").Create(ctx, cl, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-bad")).To(Succeed())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-bad-client")).To(Succeed())
		server, err := client.CoreV1().Pods("np-bad").Get(ctx, "server", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		apply := func(doc string) *unstructured.Unstructured {
			objs, err := kubeapply.Decode("e2e", []byte(doc))
			Expect(err).NotTo(HaveOccurred())
			got, err := applier.ApplyOne(ctx, objs[0], "e2e")
			Expect(err).NotTo(HaveOccurred())
			return got
		}
		good := apply(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-nobody, namespace: np-bad}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: nobody}}]
`)
		Eventually(func() error { return nodesAt(ctx, good, 1, "") }).WithTimeout(time.Minute).Should(Succeed())
		Expect(probeFrom(ctx, "np-bad-client", "client", server.Status.PodIP, 8080)).To(Equal("timeout"))
		// Generation 2 asks for toServices, which the enforcer refuses by name; the CRD, as
		// Cilium's, accepts it.
		bad := apply(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-nobody, namespace: np-bad}
spec:
  endpointSelector: {matchLabels: {app: server}}
  egress:
    - toServices: [{k8sService: {serviceName: kubernetes, namespace: default}}]
`)
		Expect(bad.GetGeneration()).To(Equal(int64(2)))
		Eventually(func() error { return nodesAt(ctx, bad, 1, "toServices") }).WithTimeout(time.Minute).Should(Succeed())
		// The last good version still closes the server's ingress.
		Expect(probeFrom(ctx, "np-bad-client", "client", server.Status.PodIP, 8080)).To(Equal("timeout"))
		Expect(applier.Delete(ctx, bad)).To(Succeed())
		Eventually(func() string { return probeFrom(ctx, "np-bad-client", "client", server.Status.PodIP, 8080) }).
			WithTimeout(time.Minute).Should(Equal("allow"))
	})

	It("serves flow events naming the deciding rule, and metrics, on the node's address only", func() {
		createNamespace(ctx, client, "np-flows")
		createNamespace(ctx, client, "np-flows-client")
		srv := netpactPod("np-flows", "server", map[string]string{"app": "server"}, "probe-server", "--port=8080/TCP")
		_, err := client.CoreV1().Pods("np-flows").Create(ctx, srv, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		cl := netpactPod("np-flows-client", "client", nil, "probe-server")
		_, err = client.CoreV1().Pods("np-flows-client").Create(ctx, cl, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-flows")).To(Succeed())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-flows-client")).To(Succeed())
		server, err := client.CoreV1().Pods("np-flows").Get(ctx, "server", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		clientPod, err := client.CoreV1().Pods("np-flows-client").Get(ctx, "client", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		objs, err := kubeapply.Decode("e2e", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-cluster, namespace: np-flows}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
    - fromEntities: [cluster]
`))
		Expect(err).NotTo(HaveOccurred())
		cnp, err := applier.ApplyOne(ctx, objs[0], "e2e")
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() error { return nodesAt(ctx, cnp, 1, "") }).WithTimeout(time.Minute).Should(Succeed())
		Expect(probeFrom(ctx, "np-flows-client", "client", server.Status.PodIP, 8080)).To(Equal("timeout"))
		enf := enforcerPod(server.Spec.NodeName)
		get := func(path string, params map[string]string) string {
			req := client.CoreV1().RESTClient().Get().Namespace(netpactNS).Resource("pods").Name(enf.Name + ":9879").
				SubResource("proxy").Suffix(path)
			for k, v := range params {
				req = req.Param(k, v)
			}
			raw, err := req.DoRaw(ctx)
			Expect(err).NotTo(HaveOccurred(), "%s of %s", path, enf.Name)
			return string(raw)
		}
		rs := enforcerFlows(ctx, client, enf.Name, observe.Filter{FromIPs: []string{clientPod.Status.PodIP},
			ToIPs: []string{server.Status.PodIP}, Protocols: []string{"tcp"}, Ports: []uint16{8080}})
		Expect(flowsOf(rs)).To(ContainElement(SatisfyAll(
			HaveField("Verdict", observe.Dropped), HaveField("TrafficDirection", observe.Ingress),
			HaveField("L4.TCP.DestinationPort", uint32(8080)),
			HaveField("Source", SatisfyAll(Not(BeNil()), HaveField("Namespace", "np-flows-client"), HaveField("PodName", "client"))),
			HaveField("Destination", SatisfyAll(Not(BeNil()), HaveField("Namespace", "np-flows"), HaveField("PodName", "server"))),
			HaveField("IngressDeniedBy", ContainElement(SatisfyAll(HaveField("Namespace", "np-flows"), HaveField("Name", "deny-cluster")))))),
			"flows:\n%s", renderFlows(rs, observe.OutputCompact))
		metrics := get("metrics", nil)
		for _, m := range []string{`netpact_datapath_packets_total{reason=`, `verdict="drop"`, `netpact_flow_events_total{direction="ingress"`,
			`netpact_map_entries{map="conntrack"}`, `netpact_sync_duration_seconds `, `netpact_policies{refused="false"}`,
			`netpact_endpoints{state="programmed"}`} {
			Expect(metrics).To(ContainSubstring(m))
		}
		// Bound to the node's address, not to every interface.
		out, err := exec.Command("docker", "exec", server.Spec.NodeName, "ss", "-Hltn", "sport = :9879").CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "%s", out)
		Expect(strings.TrimSpace(string(out))).To(ContainSubstring(enf.Status.HostIP + ":9879"))
		Expect(string(out)).NotTo(MatchRegexp(`(\*|0\.0\.0\.0|\[::\]):9879`))
		// A pod reaches the node's address, but not its flows without a token allowed to get them;
		// its readiness stays open.
		for path, want := range map[string]string{"/flows": "http-401", "/status": "http-401", "/metrics": "http-401", "/readyz": "http-200"} {
			Expect(probeWith(ctx, "np-flows-client", "client", probeagent.Request{Proto: "TCP", Host: enf.Status.HostIP, Port: 9879,
				HTTP: true, Path: path, TimeoutMS: 1500})).To(Equal(want), "a pod's GET %s on the node's endpoints", path)
		}
	})

	It("translates ClusterIPs before egress policy: the rule to a Service's pods allows that Service, denies another, refuses one without backends, and flows name both", func() {
		createNamespace(ctx, client, "np-svc")
		createNamespace(ctx, client, "np-svc-client")
		for _, name := range []string{"a", "b"} {
			_, err := client.CoreV1().Pods("np-svc").Create(ctx, netpactPod("np-svc", name, map[string]string{"app": name},
				"probe-server", "--port=8080/TCP"), metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
		}
		_, err := client.CoreV1().Pods("np-svc-client").Create(ctx, netpactPod("np-svc-client", "client", nil, "probe-server"), metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		vip := map[string]string{}
		for name, app := range map[string]string{"svc-a": "a", "svc-b": "b", "svc-none": "nothing"} {
			svc, err := client.CoreV1().Services("np-svc").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": app}, Ports: []corev1.ServicePort{
					{Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}}, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
			vip[name] = svc.Spec.ClusterIP
		}
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-svc")).To(Succeed())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-svc-client")).To(Succeed())
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		objs, err := kubeapply.Decode("e2e", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-a, namespace: np-svc-client}
spec:
  endpointSelector: {}
  egress:
    - toEndpoints: [{matchLabels: {app: a, k8s:io.kubernetes.pod.namespace: np-svc}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`))
		Expect(err).NotTo(HaveOccurred())
		cnp, err := applier.ApplyOne(ctx, objs[0], "e2e")
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() error { return nodesAt(ctx, cnp, 1, "") }).WithTimeout(time.Minute).Should(Succeed())
		// Every node translates once the EndpointSlices of a and b are in: then the verdicts hold.
		Eventually(func() string { return probeFrom(ctx, "np-svc-client", "client", vip["svc-a"], 80) }).
			WithTimeout(time.Minute).Should(Equal("allow"))
		Expect(probeFrom(ctx, "np-svc-client", "client", vip["svc-b"], 80)).To(Equal("timeout"))
		Expect(probeFrom(ctx, "np-svc-client", "client", vip["svc-none"], 80)).To(Equal("refused"))
		a, err := client.CoreV1().Pods("np-svc").Get(ctx, "a", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		b, err := client.CoreV1().Pods("np-svc").Get(ctx, "b", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		// Direct to the pods, the same verdicts: policy sees the backend either way.
		Expect(probeFrom(ctx, "np-svc-client", "client", a.Status.PodIP, 8080)).To(Equal("allow"))
		Expect(probeFrom(ctx, "np-svc-client", "client", b.Status.PodIP, 8080)).To(Equal("timeout"))
		cl, err := client.CoreV1().Pods("np-svc-client").Get(ctx, "client", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		enf := enforcerPod(cl.Spec.NodeName)
		// Hubble names the Service a flow was translated from as its destination_service.
		rs := enforcerFlows(ctx, client, enf.Name, observe.Filter{FromIPs: []string{cl.Status.PodIP}, Protocols: []string{"tcp"},
			Ports: []uint16{8080}})
		text := renderFlows(rs, observe.OutputCompact)
		Expect(flowsOf(rs)).To(ContainElement(SatisfyAll(HaveField("TrafficDirection", observe.Egress), HaveField("Verdict", observe.Forwarded),
			HaveField("Destination", SatisfyAll(Not(BeNil()), HaveField("Namespace", "np-svc"), HaveField("PodName", "a"))),
			HaveField("L4.TCP.DestinationPort", uint32(8080)),
			HaveField("DestinationService", Equal(&observe.Service{Namespace: "np-svc", Name: "svc-a"})))), "flows:\n%s", text)
		Expect(flowsOf(rs)).To(ContainElement(SatisfyAll(HaveField("TrafficDirection", observe.Egress), HaveField("Verdict", observe.Dropped),
			HaveField("Destination", SatisfyAll(Not(BeNil()), HaveField("Namespace", "np-svc"), HaveField("PodName", "b"))),
			HaveField("DestinationService", Equal(&observe.Service{Namespace: "np-svc", Name: "svc-b"})))), "flows:\n%s", text)
	})

	It("judges a NodePort's client, not the node kube-proxy masqueraded it to: only the admitted pod gets through", func() {
		createNamespace(ctx, client, "np-nodeport")
		for _, name := range []string{"web", "allowed", "other"} {
			args := []string{"probe-server"}
			if name == "web" {
				args = append(args, "--port=8080/TCP")
			}
			_, err := client.CoreV1().Pods("np-nodeport").Create(ctx, netpactPod("np-nodeport", name, map[string]string{"app": name}, args...),
				metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
		}
		svc, err := client.CoreV1().Services("np-nodeport").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
				{Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}}, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		nodePort := uint16(svc.Spec.Ports[0].NodePort)
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-nodeport")).To(Succeed())
		web, err := client.CoreV1().Pods("np-nodeport").Get(ctx, "web", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		// The node web runs on: kube-proxy there translates to web and masquerades to its address.
		node, err := client.CoreV1().Nodes().Get(ctx, web.Spec.NodeName, metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		var nodeIP string
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && !strings.Contains(a.Address, ":") {
				nodeIP = a.Address
			}
		}
		Expect(nodeIP).NotTo(BeEmpty())
		// Open, the NodePort reaches web from both pods.
		Eventually(func() string { return probeFrom(ctx, "np-nodeport", "other", nodeIP, nodePort) }).
			WithTimeout(time.Minute).Should(Equal("allow"))
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		objs, err := kubeapply.Decode("e2e", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-allowed, namespace: np-nodeport}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: allowed}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`))
		Expect(err).NotTo(HaveOccurred())
		cnp, err := applier.ApplyOne(ctx, objs[0], "e2e")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { _ = applier.Delete(ctx, cnp) })
		Eventually(func() error { return nodesAt(ctx, cnp, 1, "") }).WithTimeout(time.Minute).Should(Succeed())
		Expect(probeFrom(ctx, "np-nodeport", "allowed", nodeIP, nodePort)).To(Equal("allow"), "the admitted pod through the NodePort")
		Expect(probeFrom(ctx, "np-nodeport", "other", nodeIP, nodePort)).To(Equal("timeout"),
			"another pod through the NodePort: judged as the node it was masqueraded to, the host allowance let it in")
		Expect(probeFrom(ctx, "np-nodeport", "other", web.Status.PodIP, 8080)).To(Equal("timeout"), "the same pod, direct")
	})

	It("fails closed the pods of a policy too big to enforce, names it in the status, and programs the others", func() {
		createNamespace(ctx, client, "np-big")
		node := "netpact-e2e-worker"
		for _, name := range []string{"big", "small"} {
			p := netpactPod("np-big", name, map[string]string{"app": name}, "probe-server", "--port=8080/TCP")
			p.Spec.NodeName = node
			_, err := client.CoreV1().Pods("np-big").Create(ctx, p, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-big")).To(Succeed())
		// 200 addresses x 100 ports: 20,000 entries for one endpoint, over the 16,384 it may have.
		var cidrs, ports []string
		for i := 0; i < 200; i++ {
			cidrs = append(cidrs, fmt.Sprintf(`"198.51.%d.%d/32"`, i/100, i%100+1))
		}
		for i := 0; i < 100; i++ {
			ports = append(ports, fmt.Sprintf(`{port: "%d", protocol: TCP}`, 2000+2*i))
		}
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		objs, err := kubeapply.Decode("e2e", []byte(fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: too-big, namespace: np-big}
spec:
  endpointSelector: {matchLabels: {app: big}}
  egress:
    - toCIDR: [%s]
      toPorts: [{ports: [%s]}]
`, strings.Join(cidrs, ", "), strings.Join(ports, ", "))))
		Expect(err).NotTo(HaveOccurred())
		_, err = applier.ApplyOne(ctx, objs[0], "e2e")
		Expect(err).NotTo(HaveOccurred())
		var st v1alpha1.NodePolicyStatus
		Eventually(func() error {
			all, err := nodeStatuses(ctx, cfg)
			if err != nil {
				return err
			}
			st = all[node]
			for _, ee := range st.Status.EndpointErrors {
				if ee.Pod == "np-big/big" {
					return nil
				}
			}
			return fmt.Errorf("np-big/big not failed on %s: %+v", node, st.Status.EndpointErrors)
		}).WithTimeout(time.Minute).WithPolling(200 * time.Millisecond).Should(Succeed())
		var reason string
		for _, ee := range st.Status.EndpointErrors {
			if ee.Pod == "np-big/big" {
				reason = ee.Error
			}
			Expect(ee.Pod).NotTo(Equal("np-big/small"))
		}
		Expect(reason).To(ContainSubstring("np-big/too-big"), "the status names the policy")
		Expect(reason).To(ContainSubstring("failed closed"))
		// Closed: even the open port of the big pod is dropped; the small one still answers.
		pods, err := client.CoreV1().Pods("np-big").List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		ips := map[string]string{}
		for _, p := range pods.Items {
			ips[p.Name] = p.Status.PodIP
		}
		Expect(probeFrom(ctx, "np-big", "small", ips["big"], 8080)).To(Equal("timeout"))
		Expect(probeFrom(ctx, "np-big", "big", ips["small"], 8080)).To(Equal("timeout"))
		createNamespace(ctx, client, "np-big-client")
		cl := netpactPod("np-big-client", "client", nil, "probe-server")
		_, err = client.CoreV1().Pods("np-big-client").Create(ctx, cl, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-big-client")).To(Succeed())
		Expect(probeFrom(ctx, "np-big-client", "client", ips["small"], 8080)).To(Equal("allow"))
	})

	It("enforces a CiliumClusterwideNetworkPolicy across namespaces and nodes", func() {
		createNamespace(ctx, client, "np-ccnp-a")
		createNamespace(ctx, client, "np-ccnp-b")
		// Servers on different workers; each client beside one server and across from the other.
		on := func(node string, p *corev1.Pod) *corev1.Pod { p.Spec.NodeName = node; return p }
		for _, p := range []*corev1.Pod{
			on("netpact-e2e-worker", netpactPod("np-ccnp-a", "server", map[string]string{"app": "ccnp-server"}, "probe-server", "--port=8080/TCP")),
			on("netpact-e2e-worker2", netpactPod("np-ccnp-b", "server", map[string]string{"app": "ccnp-server"}, "probe-server", "--port=8080/TCP")),
			on("netpact-e2e-worker", netpactPod("np-ccnp-b", "client", nil, "probe-server")),
			on("netpact-e2e-worker2", netpactPod("np-ccnp-a", "client", nil, "probe-server")),
		} {
			_, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-ccnp-a")).To(Succeed())
		Expect(kubeapply.WaitPodsReady(ctx, client, "np-ccnp-b")).To(Succeed())
		a, err := client.CoreV1().Pods("np-ccnp-a").Get(ctx, "server", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		b, err := client.CoreV1().Pods("np-ccnp-b").Get(ctx, "server", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(probeFrom(ctx, "np-ccnp-b", "client", a.Status.PodIP, 8080)).To(Equal("allow"))
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		// Every ccnp-server of the cluster, whatever its namespace, takes ingress only from np-ccnp-a.
		objs, err := kubeapply.Decode("e2e", []byte(`apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: np-ccnp-servers}
spec:
  endpointSelector: {matchLabels: {app: ccnp-server}}
  ingress:
    - fromEndpoints:
        - matchExpressions:
            - {key: k8s:io.kubernetes.pod.namespace, operator: In, values: [np-ccnp-a]}
`))
		Expect(err).NotTo(HaveOccurred())
		ccnp, err := applier.ApplyOne(ctx, objs[0], "e2e")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { _ = applier.Delete(ctx, ccnp) })
		Eventually(func() error { return nodesAt(ctx, ccnp, 1, "") }).WithTimeout(time.Minute).Should(Succeed())
		Expect(probeFrom(ctx, "np-ccnp-b", "client", a.Status.PodIP, 8080)).To(Equal("timeout"), "b's client to a's server")
		Expect(probeFrom(ctx, "np-ccnp-b", "client", b.Status.PodIP, 8080)).To(Equal("timeout"), "b's client to b's server")
		Expect(probeFrom(ctx, "np-ccnp-a", "client", b.Status.PodIP, 8080)).To(Equal("allow"), "a's client to b's server")
		Expect(probeFrom(ctx, "np-ccnp-a", "client", a.Status.PodIP, 8080)).To(Equal("allow"), "a's client to a's server")
		Expect(applier.Delete(ctx, ccnp)).To(Succeed())
		Eventually(func() string { return probeFrom(ctx, "np-ccnp-b", "client", a.Status.PodIP, 8080) }).
			WithTimeout(time.Minute).Should(Equal("allow"))
	})

	It("lets no pod fake a namespace label with an io.cilium.k8s pod label: the local node's scenario, on kind", func() {
		res, report := runOnKind("testdata", "faked-namespace-label.yaml")
		GinkgoWriter.Print(report)
		Expect(res.Error).To(BeEmpty(), report)
		Expect(res.Steps).To(HaveLen(3))
		for _, st := range res.Steps {
			Expect(st.Pending).To(BeEmpty(), "step %q", st.Name)
			Expect(st.Failed).To(BeFalse(), "step %q:\n%s", st.Name, report)
		}
	})

	It("proves header and Host rules where the request arrives, and the egress proxy towards an ingress deny: the local node's L7 scenarios, on kind", func() {
		for _, file := range []string{"headers-and-host.yaml", "egress-l7-to-ingress-deny.yaml"} {
			res, report := runOnKind("l7", file)
			GinkgoWriter.Print(report)
			Expect(res.Error).To(BeEmpty(), report)
			for _, st := range res.Steps {
				Expect(st.Pending).To(BeEmpty(), "%s step %q", file, st.Name)
				Expect(st.Failed).To(BeFalse(), "%s step %q:\n%s", file, st.Name, report)
			}
		}
	})
})

// runOnKind runs a scenario file under scenarios/ on the kind cluster: its result and report.
func runOnKind(path ...string) (*scenarios.Result, string) {
	sc, err := scenarios.LoadFile(filepath.Join(append([]string{root, "scenarios"}, path...)...))
	Expect(err).NotTo(HaveOccurred())
	cfg, client := kindClient(kindData)
	backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client, ProbeImage: kindData.ProbeImage,
		Kind: kindData.Name})
	res := (&scenarios.Runner{Backend: backend}).Run(sc)
	var report bytes.Buffer
	scenarios.Print(&report, []*scenarios.Result{res}, false)
	return res, report.String()
}

func netipPort(ip string, port uint16) string {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), port).String()
}

// nodesEnforce says whether every node's NodePolicyStatus holds the NetworkPolicy.
func nodesEnforce(ctx context.Context, ns, name string) error {
	cfg, client := kindClient(kindData)
	_ = client
	out, err := nodeStatuses(ctx, cfg)
	if err != nil {
		return err
	}
	var missing []string
	for node, st := range out {
		found := false
		for _, p := range st.Status.Policies {
			found = found || (p.Kind == "NetworkPolicy" && p.Namespace == ns && p.Name == name && p.Generation > 0)
		}
		if !found {
			missing = append(missing, node)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("not enforced on %s", strings.Join(missing, ", "))
	}
	return nil
}

// nodeStatuses reads every node's NodePolicyStatus.
func nodeStatuses(ctx context.Context, cfg *rest.Config) (map[string]v1alpha1.NodePolicyStatus, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	list, err := dyn.Resource(kubenode.NPSResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]v1alpha1.NodePolicyStatus{}
	for _, it := range list.Items {
		var st v1alpha1.NodePolicyStatus
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(it.Object, &st); err != nil {
			return nil, err
		}
		out[it.GetName()] = st
	}
	if len(out) != 3 {
		return out, fmt.Errorf("%d node statuses, not 3", len(out))
	}
	return out, nil
}

// nodesAt says whether every node enforces obj at generation gen, and reports an error
// containing errText for it (none when empty).
func nodesAt(ctx context.Context, obj *unstructured.Unstructured, gen int64, errText string) error {
	cfg, _ := kindClient(kindData)
	out, err := nodeStatuses(ctx, cfg)
	if err != nil {
		return err
	}
	for node, st := range out {
		var found *v1alpha1.EnforcedPolicy
		for i, p := range st.Status.Policies {
			if p.UID == string(obj.GetUID()) {
				found = &st.Status.Policies[i]
			}
		}
		switch {
		case found == nil:
			return fmt.Errorf("%s: %s not seen", node, obj.GetName())
		case found.Generation != gen:
			return fmt.Errorf("%s: %s enforced at generation %d, not %d", node, obj.GetName(), found.Generation, gen)
		case errText == "" && found.Error != "":
			return fmt.Errorf("%s: %s: %s", node, obj.GetName(), found.Error)
		case errText != "" && !strings.Contains(found.Error, errText):
			return fmt.Errorf("%s: %s error %q lacks %q", node, obj.GetName(), found.Error, errText)
		}
	}
	return nil
}

// probeFrom makes one TCP probe from a pod running the netpact image and returns its outcome.
// httpFrom makes an HTTP GET of path from a pod: its outcome (http-<code>, timeout, ...).
func httpFrom(ctx context.Context, ns, pod, host string, port uint16, path string) string {
	return probeWith(ctx, ns, pod, probeagent.Request{Proto: "TCP", Host: host, Port: port, HTTP: true, Path: path, TimeoutMS: 3000})
}

// hostAddressFacing is this host's address in the network of a (a kind node's): the address the
// nodes reach the host on, outside the cluster.
func hostAddressFacing(a netip.Addr) netip.Addr {
	addrs, err := net.InterfaceAddrs()
	Expect(err).NotTo(HaveOccurred())
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(n.String()); err == nil && p.Addr().Is4() && p.Contains(a) && p.Addr() != a {
				return p.Addr()
			}
		}
	}
	return netip.Addr{}
}

func probeFrom(ctx context.Context, ns, pod, host string, port uint16) string {
	return probeWith(ctx, ns, pod, probeagent.Request{Proto: "TCP", Host: host, Port: port, TimeoutMS: 1500})
}

// probeWith runs one probe of the probe agent in a pod: its outcome.
func probeWith(ctx context.Context, ns, pod string, req probeagent.Request) string {
	cfg, client := kindClient(kindData)
	p, err := client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	Expect(err).NotTo(HaveOccurred())
	backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client})
	in, err := json.Marshal([]probeagent.Request{req})
	Expect(err).NotTo(HaveOccurred())
	stdout, stderr, code, err := backend.ExecStdin(*p, bytes.NewReader(in), "netpact", "probe")
	Expect(err).NotTo(HaveOccurred())
	Expect(code).To(Equal(0), "netpact probe: %s", stderr)
	var res []probeagent.Result
	Expect(json.Unmarshal([]byte(stdout), &res)).To(Succeed())
	Expect(res).To(HaveLen(1))
	return res[0].Outcome
}
