package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/internal/kubeapply"
)

// enforcerGet GETs a path of an enforcer's endpoints (port 9879) through the API server's pod
// proxy, as `netpact observe` and Prometheus' pod discovery reach them.
func enforcerGet(ctx context.Context, client kubernetes.Interface, enforcer, path string) []byte {
	raw, err := client.CoreV1().RESTClient().Get().Namespace(netpactNS).Resource("pods").Name(enforcer + ":9879").
		SubResource("proxy").Suffix(path).DoRaw(ctx)
	Expect(err).NotTo(HaveOccurred(), "%s of %s", path, enforcer)
	return raw
}

// enforcerFlows reads an enforcer's /flows through the API server's pod proxy: Hubble's
// GetFlowsResponse stream (NDJSON) for the filter, decoded with observe.Stream. The filter never
// follows (the answer has to end). sync=1 makes the enforcer answer once its flow reader has
// handed on every event its datapath wrote before the request: the flows of a probe that just
// ran are there, with no sleep or retry.
func enforcerFlows(ctx context.Context, client kubernetes.Interface, enforcer string, f observe.Filter) []*observe.GetFlowsResponse {
	Expect(f.Follow).To(BeFalse(), "a followed stream never ends")
	req := client.CoreV1().RESTClient().Get().Namespace(netpactNS).Resource("pods").Name(enforcer+":9879").
		SubResource("proxy").Suffix("flows").Param("sync", "1")
	for k, vs := range f.Query() {
		for _, v := range vs {
			req = req.Param(k, v)
		}
	}
	raw, err := req.DoRaw(ctx)
	Expect(err).NotTo(HaveOccurred(), "flows of %s: %s", enforcer, raw)
	var out []*observe.GetFlowsResponse
	Expect(observe.Stream(ctx, bytes.NewReader(raw), func(r *observe.GetFlowsResponse) error {
		out = append(out, r)
		return nil
	})).To(Succeed(), "flows of %s:\n%s", enforcer, raw)
	return out
}

// flowsOf are the flows of a stream, without its lost-events records.
func flowsOf(rs []*observe.GetFlowsResponse) []*observe.Flow {
	var out []*observe.Flow
	for _, r := range rs {
		if r.Flow != nil {
			out = append(out, r.Flow)
		}
	}
	return out
}

// renderFlows prints a stream as `netpact observe -o <output>` does (policy names on): the
// lines a failing assertion shows, and what the compact and JSON checks read.
func renderFlows(rs []*observe.GetFlowsResponse, output string) string {
	var b strings.Builder
	p, err := observe.NewPrinter(&b, observe.PrinterOptions{Output: output, PolicyNames: true})
	Expect(err).NotTo(HaveOccurred())
	for _, r := range rs {
		Expect(p.WriteResponse(r)).To(Succeed())
	}
	Expect(p.Flush()).To(Succeed())
	return b.String()
}

// documentedMetric is a row of docs/metrics.md's table: the metric, its type, its labels.
type documentedMetric struct {
	name, typ string
	labels    []string
}

var backticked = regexp.MustCompile("`([^`]+)`")

// documentedMetrics reads docs/metrics.md's table, as enforcer/metrics' tests do.
func documentedMetrics() []documentedMetric {
	b, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	Expect(err).NotTo(HaveOccurred())
	var out []documentedMetric
	for _, line := range strings.Split(string(b), "\n") {
		cols := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| `") || len(cols) < 5 {
			continue
		}
		d := documentedMetric{name: strings.Trim(strings.TrimSpace(cols[1]), "`"), typ: strings.TrimSpace(cols[2])}
		for _, m := range backticked.FindAllStringSubmatch(cols[3], -1) {
			d.labels = append(d.labels, m[1])
		}
		slices.Sort(d.labels)
		out = append(out, d)
	}
	Expect(len(out)).To(BeNumerically(">=", 20), "docs/metrics.md's table")
	return out
}

// scrape GETs an enforcer's /metrics and parses it as Prometheus does.
func scrape(ctx context.Context, client kubernetes.Interface, enforcer string) map[string]*dto.MetricFamily {
	raw := enforcerGet(ctx, client, enforcer, "metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	Expect(err).NotTo(HaveOccurred(), "/metrics of %s does not parse:\n%s", enforcer, raw)
	return fams
}

// sample is the value of the series of a family whose labels include want; false when none.
func sample(mf *dto.MetricFamily, want map[string]string) (float64, bool) {
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range want {
			ok = ok && got[k] == v
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

var _ = Describe("observing the enforcers on kind: /metrics and Hubble's /flows", Ordered, Label("kind"), func() {
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

	enforcers := func() []corev1.Pod {
		pods, err := client.CoreV1().Pods(netpactNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=netpact"})
		Expect(err).NotTo(HaveOccurred())
		Expect(pods.Items).NotTo(BeEmpty())
		return pods.Items
	}
	enforcerOn := func(node string) string {
		for _, p := range enforcers() {
			if p.Spec.NodeName == node {
				return p.Name
			}
		}
		Fail("no enforcer on node " + node)
		return ""
	}
	apply := func(manifest string) {
		cfg, _ := kindClient(kindData)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		objs, err := kubeapply.Decode("e2e", []byte(manifest))
		Expect(err).NotTo(HaveOccurred())
		obj, err := applier.ApplyOne(ctx, objs[0], "e2e")
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() error { return nodesAt(ctx, obj, 1, "") }).WithTimeout(time.Minute).Should(Succeed())
	}

	It("serves on every node the documented metric families, of their type and labels, parsed as Prometheus parses them", func() {
		const ns = "np-observe-metrics"
		createNamespace(ctx, client, ns)
		_, err := client.CoreV1().Pods(ns).Create(ctx, netpactPod(ns, "server", map[string]string{"app": "server"},
			"probe-server", "--port=8080/TCP"), metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		// A prober on every enforcer's node, so that each has flows and policy verdicts to count.
		nodes := map[string]string{} // prober -> node
		for i, e := range enforcers() {
			p := netpactPod(ns, fmt.Sprintf("prober-%d", i), map[string]string{"app": "prober"}, "probe-server")
			p.Spec.NodeName = e.Spec.NodeName
			p.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
			_, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
			nodes[p.Name] = e.Spec.NodeName
		}
		Expect(kubeapply.WaitPodsReady(ctx, client, ns)).To(Succeed())
		server, err := client.CoreV1().Pods(ns).Get(ctx, "server", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		// The probers' egress is enforced: each connection is a policy verdict on its node.
		apply(fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: probers-to-server, namespace: %s}
spec:
  endpointSelector: {matchLabels: {app: prober}}
  egress:
    - toEndpoints: [{matchLabels: {app: server}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`, ns))
		for prober := range nodes {
			Expect(probeFrom(ctx, ns, prober, server.Status.PodIP, 8080)).To(Equal("allow"), "%s to the server", prober)
		}

		docs := documentedMetrics()
		// Present at every scrape: the gauges, the metrics without labels, and the datapath's
		// counters (copied from its per-CPU counters at each scrape). After the probes, the flow
		// counters too; those of events a node may never have had (drops, L7, lost events,
		// limited events) appear at their first event and may be absent.
		required := []string{"hubble_flows_processed_total", "hubble_policy_verdicts_total", "netpact_flow_events_total",
			"netpact_policy_verdicts_total", "netpact_datapath_packets_total", "cilium_forward_count_total"}
		for _, d := range docs {
			if d.typ == "gauge" || len(d.labels) == 0 {
				required = append(required, d.name)
			}
		}
		for _, e := range enforcers() {
			// The flow counters count what the node's reader handed on: synced, as /flows is.
			enforcerFlows(ctx, client, e.Name, observe.Filter{Last: 1})
			fams := scrape(ctx, client, e.Name)
			for _, name := range required {
				Expect(fams).To(HaveKey(name), "/metrics of %s on %s", e.Name, e.Spec.NodeName)
			}
			listed := map[string]bool{}
			for _, d := range docs {
				listed[d.name] = true
				mf, ok := fams[d.name]
				if !ok {
					continue
				}
				Expect(strings.ToLower(mf.GetType().String())).To(Equal(d.typ), "type of %s on %s", d.name, e.Spec.NodeName)
				for _, m := range mf.GetMetric() {
					var got []string
					for _, l := range m.GetLabel() {
						got = append(got, l.GetName())
					}
					slices.Sort(got)
					Expect(got).To(Equal(d.labels), "labels of %s on %s", d.name, e.Spec.NodeName)
				}
			}
			for name := range fams {
				if !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
					Expect(listed).To(HaveKey(name), "%s on %s is not in docs/metrics.md", name, e.Spec.NodeName)
				}
			}
			// The prober's connection: an egress policy verdict this node forwarded.
			v, ok := sample(fams["hubble_policy_verdicts_total"], map[string]string{"direction": "egress", "action": "forwarded"})
			Expect(ok && v > 0).To(BeTrue(), "hubble_policy_verdicts_total{direction=egress,action=forwarded} on %s: %v", e.Spec.NodeName, v)
			// netpact_policy_verdicts_total's value of the policy is not checked: a policy entering
			// the top ranking at a scrape starts its own series at 0 (docs/metrics.md).
			v, ok = sample(fams["netpact_endpoints"], map[string]string{"state": "programmed"})
			Expect(ok && v >= 1).To(BeTrue(), "netpact_endpoints{state=programmed} on %s: %v", e.Spec.NodeName, v)
		}
	})

	It("reports a denied connection as Hubble's compact line naming the policy, its rule and file:line, and as Hubble's JSON", func() {
		const ns = "np-observe"
		createNamespace(ctx, client, ns)
		_, err := client.CoreV1().Pods(ns).Create(ctx, netpactPod(ns, "server", map[string]string{"app": "server"},
			"probe-server", "--port=8080/TCP"), metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		_, err = client.CoreV1().Pods(ns).Create(ctx, netpactPod(ns, "client", map[string]string{"app": "client"}, "probe-server"),
			metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(kubeapply.WaitPodsReady(ctx, client, ns)).To(Succeed())
		server, err := client.CoreV1().Pods(ns).Get(ctx, "server", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		clientPod, err := client.CoreV1().Pods(ns).Get(ctx, "client", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		// Open first: the connection that will be denied is otherwise fine.
		Expect(probeFrom(ctx, ns, "client", server.Status.PodIP, 8080)).To(Equal("allow"))
		// The server's ingress under default deny (only a pod nobody runs is allowed), with the
		// source annotations the reconciler writes, so that flows say where it was written.
		apply(fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: default-deny
  namespace: %s
  annotations:
    netpact.io/source-path: policies/np-observe/default-deny.yaml:1
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: nobody}}]
`, ns))
		since := time.Now().Add(-time.Second)
		Expect(probeFrom(ctx, ns, "client", server.Status.PodIP, 8080)).To(Equal("timeout"))

		// The stream the CLI reads (/flows through the pod proxy), as flows, and the CLI itself.
		f := observe.Filter{Verdicts: []string{string(observe.Dropped)}, FromIPs: []string{clientPod.Status.PodIP},
			ToIPs: []string{server.Status.PodIP}, Ports: []uint16{8080}, Since: since}
		rs := enforcerFlows(ctx, client, enforcerOn(server.Spec.NodeName), f)
		flows := flowsOf(rs)
		cli := func(output string) string {
			out, err := exec.Command(netpactCLI(), "observe", "--kubeconfig", kindData.Kubeconfig, "--verdict", "DROPPED",
				"--from-ip", clientPod.Status.PodIP, "--to-ip", server.Status.PodIP, "--port", "8080",
				"--since", since.UTC().Format(time.RFC3339Nano), "-o", output).Output()
			Expect(err).NotTo(HaveOccurred(), "netpact observe -o %s: %s", output, out)
			return string(out)
		}
		compact := cli("compact")
		GinkgoWriter.Print(compact)
		// The drop event: its pods, its policy (default deny of the ingress section), its file.
		Expect(flows).To(ContainElement(SatisfyAll(
			HaveField("Verdict", observe.Dropped), HaveField("TrafficDirection", observe.Ingress),
			HaveField("DropReasonDesc", observe.PolicyDenied),
			HaveField("Source", SatisfyAll(Not(BeNil()), HaveField("Namespace", ns), HaveField("PodName", "client"))),
			HaveField("Destination", SatisfyAll(Not(BeNil()), HaveField("Namespace", ns), HaveField("PodName", "server"))),
			HaveField("IngressDeniedBy", ContainElement(SatisfyAll(HaveField("Name", "default-deny"), HaveField("Namespace", ns),
				HaveField("Rule", HavePrefix("default deny")))))),
		), "flows:\n%s", compact)
		var rule string
		for _, fl := range flows {
			for _, p := range fl.IngressDeniedBy {
				if p.Name == "default-deny" {
					rule = p.Rule
				}
			}
		}
		want := ns + "/default-deny (CiliumNetworkPolicy) " + rule + " at policies/np-observe/default-deny.yaml:"
		Expect(compact).To(MatchRegexp(`(?m)^.*`+regexp.QuoteMeta(ns+"/client")+`:\d+ .*<> `+regexp.QuoteMeta(ns+"/server")+
			`:8080 .*Policy denied DROPPED BY `+regexp.QuoteMeta(want)+`\d+`), "compact lines")
		Expect(compact).To(ContainSubstring("INGRESS DENIED BY "+want), "the policy-verdict line")

		// -o json: one GetFlowsResponse a line, with Hubble's keys.
		lines := strings.Split(strings.TrimSpace(cli("json")), "\n")
		Expect(lines).NotTo(BeEmpty())
		dropped := 0
		for _, line := range lines {
			var rec map[string]any
			Expect(json.Unmarshal([]byte(line), &rec)).To(Succeed(), "a JSON line: %s", line)
			if _, lost := rec["lost_events"]; lost {
				continue
			}
			Expect(rec).To(HaveKey("flow"), line)
			fl, ok := rec["flow"].(map[string]any)
			Expect(ok).To(BeTrue(), line)
			for _, k := range []string{"verdict", "IP", "source", "destination", "drop_reason_desc", "l4", "ingress_denied_by", "time"} {
				Expect(fl).To(HaveKey(k), line)
			}
			Expect(fl["verdict"]).To(Equal("DROPPED"), line)
			Expect(fl["IP"]).To(HaveKeyWithValue("source", clientPod.Status.PodIP), line)
			Expect(fl["destination"]).To(HaveKeyWithValue("pod_name", "server"), line)
			dropped++
		}
		Expect(dropped).To(BeNumerically(">=", 1))
	})
})

// netpactCLI is this tree's netpact, built once (Go's build cache makes it quick after the
// image build compiled the same packages).
var netpactCLI = sync.OnceValue(func() string {
	// Under bin/, not a spec's TempDir: that is removed when the first spec to call this ends,
	// and later specs run it too.
	bin, err := filepath.Abs(filepath.Join(root, "bin", "e2e-netpact"))
	Expect(err).NotTo(HaveOccurred())
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/netpact").CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "build netpact: %s", out)
	return bin
})
