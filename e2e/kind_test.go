package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netpact/netpact/enforcer/kubenode"
	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/kind"
	"github.com/netpact/netpact/scenarios"
)

// kindSuite is the cluster process 1 brought up (or found retained) for every process.
type kindSuite struct {
	Name       string
	Kubeconfig string
	Created    bool
	// ProbeImage is the netpact image: scenario pods no manifest made are created from it.
	ProbeImage string
	// GitServerImage serves the GitOps suite's repository (netpact git-server).
	GitServerImage string
}

var kindData *kindSuite

const root = ".."

// kindSelected: the kind specs run only when asked for by label (make e2e), never as part of a
// plain `go test ./...`.
func kindSelected() bool {
	f := GinkgoLabelFilter()
	return strings.Contains(f, "kind") && Label("kind").MatchesLabelFilter(f)
}

// seedManifests are seed 002's workloads, applied once per suite.
var seedManifests = filepath.Join(root, "kind", "manifests", "seed-002")

// setUpKind creates the suite's cluster (or reuses one kept with E2E_RETAIN=1) and applies the
// seed 002 workloads.
func setUpKind() *kindSuite {
	testenv.RequireCommand(GinkgoT(), "docker", "docker.io (kind/dockerd.sh start installs it)")
	kind.UsePrivateDocker()
	if os.Getenv("DOCKER_HOST") == "" {
		testenv.Missing(GinkgoT(), "a Docker engine for kind", "kind/dockerd.sh start, or make e2e")
	}
	imagesFile := os.Getenv("NETPACT_IMAGES")
	if imagesFile == "" {
		imagesFile = filepath.Join(root, "bin", "images.list")
	}
	images, err := kind.ReadImages(imagesFile)
	if err != nil {
		testenv.Missing(GinkgoT(), "the kind images ("+err.Error()+")", "make images")
	}
	ks := &kindSuite{Name: "netpact-e2e", Kubeconfig: filepath.Join(root, "bin", "kind-netpact-e2e.kubeconfig"),
		ProbeImage: images.Netpact, GitServerImage: images.GitServer}
	exists, err := kind.Exists(ks.Name)
	Expect(err).NotTo(HaveOccurred())
	if _, statErr := os.Stat(ks.Kubeconfig); exists && statErr == nil {
		fmt.Fprintf(GinkgoWriter, "reusing the retained cluster %s: loading %s and applying the chart\n", ks.Name, images.Netpact)
		// The retained cluster gets this tree's netpact: image, CRDs, RBAC, DaemonSet.
		Expect(kind.LoadImages(ks.Name, []string{images.Netpact, images.GitServer})).To(Succeed())
		objs, err := kind.ReadManifests(enforcerChart(), images.Netpact)
		Expect(err).NotTo(HaveOccurred())
		cfg, client := kindClient(ks)
		applier, err := kubeapply.New(cfg)
		Expect(err).NotTo(HaveOccurred())
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		Expect(applier.Apply(ctx, objs)).To(Succeed())
		Expect(kubeapply.WaitWorkloads(ctx, client, objs)).To(Succeed())
	} else {
		if exists {
			Expect(kind.Delete(ks.Name, ks.Kubeconfig)).To(Succeed())
		}
		start := time.Now()
		_, err := kind.Create(context.Background(), kind.Options{
			Name: ks.Name, Config: filepath.Join(root, "kind", "cluster.yaml"),
			Manifest: enforcerChart(), Images: images,
			Kubeconfig: ks.Kubeconfig, Retain: os.Getenv("E2E_RETAIN") == "1",
			LogsDir: filepath.Join(root, "bin", "kind-logs"), Out: GinkgoWriter,
		})
		Expect(err).NotTo(HaveOccurred(), "create the kind cluster")
		ks.Created = true
		AddReportEntry("cluster create", time.Since(start).Round(100*time.Millisecond).String())
	}
	cfg, client := kindClient(ks)
	start := time.Now()
	objs := seedObjects(images)
	applier, err := kubeapply.New(cfg)
	Expect(err).NotTo(HaveOccurred())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	Expect(applier.Apply(ctx, objs)).To(Succeed())
	Expect(kubeapply.WaitWorkloads(ctx, client, objs)).To(Succeed())
	Expect(kubeapply.WaitPodsReady(ctx, client, "db")).To(Succeed())
	Expect(kubeapply.WaitPodsReady(ctx, client, "dummy")).To(Succeed())
	AddReportEntry("seed 002 workloads Ready", time.Since(start).Round(100*time.Millisecond).String())
	return ks
}

// enforcerChart is the Helm chart's enforcer and CRDs, in netpactNS; the GitOps specs install
// its controller and admission webhook, and uninstall them after.
func enforcerChart() string {
	return chartManifest("enforcer", true, true, "controller.enabled=false", "admission.enabled=false")
}

// seedObjects are the seed 002 manifests with the images built here.
func seedObjects(images kind.Images) []*unstructured.Unstructured {
	files, err := filepath.Glob(filepath.Join(seedManifests, "*.yaml"))
	Expect(err).NotTo(HaveOccurred())
	sort.Strings(files)
	byName := map[string]string{}
	for _, ref := range images.Workloads {
		repo := ref[:strings.LastIndex(ref, ":")]
		byName[strings.ToUpper(filepath.Base(repo))+"_IMAGE"] = ref
	}
	var out []*unstructured.Unstructured
	for _, f := range files {
		raw, err := os.ReadFile(f)
		Expect(err).NotTo(HaveOccurred())
		for placeholder, ref := range byName {
			raw = bytes.ReplaceAll(raw, []byte(placeholder), []byte(ref))
		}
		Expect(string(raw)).NotTo(MatchRegexp(`[A-Z]+_IMAGE`), "%s names an image the images file lacks", f)
		objs, err := kubeapply.Decode(f, raw)
		Expect(err).NotTo(HaveOccurred())
		out = append(out, objs...)
	}
	return out
}

func tearDownKind() {
	if kindData == nil || !kindData.Created || os.Getenv("E2E_RETAIN") == "1" {
		return
	}
	Expect(kind.Delete(kindData.Name, kindData.Kubeconfig)).To(Succeed())
	_ = os.Remove(kindData.Kubeconfig)
}

func kindClient(ks *kindSuite) (*rest.Config, kubernetes.Interface) {
	cfg, err := clientcmd.BuildConfigFromFlags("", ks.Kubeconfig)
	Expect(err).NotTo(HaveOccurred())
	client, err := kubernetes.NewForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
	return cfg, client
}

var _ = Describe("a kind cluster with netpact as the CNI", Ordered, Label("kind"), func() {
	var (
		cfg    *rest.Config
		client kubernetes.Interface
		ctx    = context.Background()
	)
	BeforeAll(func() {
		if kindData == nil {
			Skip("the kind specs run with make e2e (ginkgo --label-filter=kind)")
		}
		cfg, client = kindClient(kindData)
	})

	It("has 3 nodes Ready, each with IPv4 and IPv6 pod CIDRs, and every kube-system and netpact pod Ready", func() {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(nodes.Items).To(HaveLen(3))
		for _, n := range nodes.Items {
			Expect(n.Spec.PodCIDRs).To(HaveLen(2), "node %s pod CIDRs", n.Name)
			ready := false
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady {
					ready = c.Status == corev1.ConditionTrue
				}
			}
			Expect(ready).To(BeTrue(), "node %s Ready", n.Name)
		}
		for _, ns := range []string{"kube-system", netpactNS} {
			pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			Expect(err).NotTo(HaveOccurred())
			Expect(pods.Items).NotTo(BeEmpty())
			for _, p := range pods.Items {
				Expect(kubeapply.PodReady(&p)).To(BeTrue(), "%s pod %s Ready", ns, p.Name)
			}
		}
	})

	It("runs the enforcer on every node, routing every other node's IPv4 and IPv6 pod CIDRs", func() {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		pods, err := client.CoreV1().Pods(netpactNS).List(ctx,
			metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=netpact"})
		Expect(err).NotTo(HaveOccurred())
		Expect(pods.Items).To(HaveLen(len(nodes.Items)))
		for _, p := range pods.Items {
			raw, err := client.CoreV1().RESTClient().Get().Namespace(netpactNS).Resource("pods").
				Name(p.Name + ":9879").SubResource("proxy").Suffix("routes").DoRaw(ctx)
			Expect(err).NotTo(HaveOccurred(), "routes of %s", p.Name)
			var routes []kubenode.Route
			Expect(json.Unmarshal(raw, &routes)).To(Succeed())
			want := 0
			for _, n := range nodes.Items {
				if n.Name != p.Spec.NodeName {
					want += len(n.Spec.PodCIDRs)
					for _, c := range n.Spec.PodCIDRs {
						Expect(routes).To(ContainElement(HaveField("Dst.String()", c)), "%s routes %s", p.Spec.NodeName, c)
					}
				}
			}
			Expect(routes).To(HaveLen(want), "routes on %s: %s", p.Spec.NodeName, raw)
		}
	})

	It("has every other node's IPv4 and IPv6 pod CIDRs in each node's routing table, via that node", func() {
		nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		Expect(err).NotTo(HaveOccurred())
		for _, n := range nodes.Items {
			for _, family := range []string{"-4", "-6"} {
				// The node's own table, read in the node container: not the agent's report.
				out, err := exec.Command("docker", "exec", n.Name, "ip", family, "route", "show").CombinedOutput()
				Expect(err).NotTo(HaveOccurred(), "ip %s route in %s: %s", family, n.Name, out)
				for _, other := range nodes.Items {
					if other.Name == n.Name {
						continue
					}
					for _, c := range other.Spec.PodCIDRs {
						p := netip.MustParsePrefix(c)
						if (family == "-6") != p.Addr().Is6() {
							continue
						}
						var via string
						for _, a := range other.Status.Addresses {
							if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == corev1.NodeInternalIP && ip.Is6() == p.Addr().Is6() {
								via = ip.String()
							}
						}
						Expect(via).NotTo(BeEmpty(), "node %s has no InternalIP of %s's family", other.Name, c)
						Expect(string(out)).To(MatchRegexp(`(?m)^`+regexp.QuoteMeta(p.String())+` via `+regexp.QuoteMeta(via)+` `),
							"%s routes %s via %s:\n%s", n.Name, c, via, out)
					}
				}
			}
		}
	})

	It("reaches pods on other nodes over IPv6 as over IPv4", func() {
		backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client})
		debug, err := client.CoreV1().Pods("db").Get(ctx, "debug", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		flask, err := client.CoreV1().Pods("db").List(ctx, metav1.ListOptions{LabelSelector: "app=flask-app"})
		Expect(err).NotTo(HaveOccurred())
		crossed := 0
		for _, f := range flask.Items {
			if f.Spec.NodeName == debug.Spec.NodeName {
				continue
			}
			for _, ip := range f.Status.PodIPs {
				a := netip.MustParseAddr(ip.IP)
				url := fmt.Sprintf("http://%s/", netip.AddrPortFrom(a, 5000))
				stdout, stderr, code, err := backend.Exec(*debug, "curl", "-g", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url)
				Expect(err).NotTo(HaveOccurred())
				Expect(code).To(Equal(0), "curl %s from db/debug on %s: %s", url, debug.Spec.NodeName, stderr)
				Expect(stdout).NotTo(Equal("000"), "curl %s", url)
				crossed++
			}
			Expect(f.Status.PodIPs).To(HaveLen(2), "flask pod %s has IPv4 and IPv6", f.Name)
		}
		Expect(crossed).To(BeNumerically(">=", 2), "no flask pod on another node than db/debug")
	})

	It("runs the seed 002 workloads Ready, spread over both workers", func() {
		flask, err := client.CoreV1().Pods("db").List(ctx, metav1.ListOptions{LabelSelector: "app=flask-app"})
		Expect(err).NotTo(HaveOccurred())
		Expect(flask.Items).To(HaveLen(3))
		nodesOf := map[string]bool{}
		for _, p := range flask.Items {
			Expect(kubeapply.PodReady(&p)).To(BeTrue(), "%s Ready", p.Name)
			nodesOf[p.Spec.NodeName] = true
		}
		Expect(nodesOf).To(HaveLen(2), "flask-app replicas on both workers")
		pg, err := client.CoreV1().Pods("db").Get(ctx, "postgres-0", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(kubeapply.PodReady(pg)).To(BeTrue())
		d1, err := client.CoreV1().Pods("db").Get(ctx, "debug", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		d2, err := client.CoreV1().Pods("dummy").Get(ctx, "debug", metav1.GetOptions{})
		Expect(err).NotTo(HaveOccurred())
		Expect(d1.Spec.NodeName).NotTo(Equal(d2.Spec.NodeName), "the debug pods are on different nodes")
	})

	It("observes the seed's open matrix (steps 4-5) with curl, nc and psql, across nodes and through services", func() {
		sc, err := scenarios.LoadFile(filepath.Join(root, "scenarios", "seeds", "002-flask-postgres.yaml"))
		Expect(err).NotTo(HaveOccurred())
		backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client, ProbeImage: kindData.ProbeImage})
		start := time.Now()
		res := (&scenarios.Runner{Backend: backend, Parallel: 8}).Run(sc)
		AddReportEntry("seed 002 scenario on kind", time.Since(start).Round(100*time.Millisecond).String())
		var report bytes.Buffer
		scenarios.Print(&report, []*scenarios.Result{res}, true)
		GinkgoWriter.Print(report.String())
		Expect(res.Error).To(BeEmpty())
		Expect(res.Steps).To(HaveLen(3))
		open := res.Steps[0]
		Expect(open.Pending).To(BeEmpty())
		Expect(open.Failed).To(BeFalse(), "the open matrix:\n%s", report.String())
		// Every tool ran, the services were reached every way, and cells crossed nodes.
		var curl, nc, psql, cross, viaService int
		for _, c := range open.Cells {
			if c.Loopback {
				continue
			}
			switch {
			case c.Cell.HTTP:
				curl++
			case c.To == "db/postgres-0":
				psql++
			default:
				nc++
			}
			if c.Cell.Service != "" {
				viaService++
			}
			from, to := backend.Pods(c.From), backend.Pods(c.To)
			for _, t := range to {
				if t.Spec.NodeName != from[0].Spec.NodeName {
					cross++
					break
				}
			}
		}
		Expect(curl).To(BeNumerically(">=", 6))
		Expect(nc).To(BeNumerically(">=", 3))
		Expect(psql).To(BeNumerically(">=", 3))
		Expect(viaService).To(BeNumerically(">=", 6))
		Expect(cross).To(BeNumerically(">=", 4))
		// The L3 step and the L7 one (GET / answered, /metrics 403 by the L7 proxy of the flask
		// pods' nodes, from debug pods on either node) are enforced on kind.
		Expect(res.Steps[1].Pending).To(BeEmpty())
		Expect(res.Steps[1].Failed).To(BeFalse(), "the L3 step:\n%s", report.String())
		Expect(res.Steps[2].Pending).To(BeEmpty())
		Expect(res.Steps[2].Failed).To(BeFalse(), "the L7 step:\n%s", report.String())
		// Each probe went to every flask replica: some from a debug pod on another node, whose
		// flows the uplink hands to the proxy of the replica's node (ingress L7 across nodes).
		crossL7 := 0
		for _, c := range res.Steps[2].Cells {
			from := backend.Pods(c.From)
			for _, t := range backend.Pods(c.To) {
				if c.Cell.HTTP && t.Spec.NodeName != from[0].Spec.NodeName {
					crossL7++
				}
			}
		}
		Expect(crossL7).To(BeNumerically(">=", 2), "no L7 probe crossed nodes")
	})

	// The seed scenarios run seedRounds times in a row: a verdict that differs between rounds is
	// a race in the product or the harness (issue 30), never noise to retry.
	It("enforces every L3/L4 step of the seed scenarios, the same files as on the local node, 5 times with the same verdict", func() {
		const seedRounds = 5
		files, err := filepath.Glob(filepath.Join(root, "scenarios", "seeds", "*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		// 000 is four files: its enforcement-always step became a scenario of its own, and its
		// audit-then-enforce one (steps 2 and 5 of the article) and its Kafka example too.
		Expect(files).To(HaveLen(7))
		Expect(files).To(ContainElement(HaveSuffix("000-audit-then-enforce.yaml")))
		var report bytes.Buffer
		wrongPerRound := make([]int, seedRounds)
		for round := range seedRounds {
			enforced := 0
			for _, f := range files {
				sc, err := scenarios.LoadFile(f)
				Expect(err).NotTo(HaveOccurred())
				backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client, ProbeImage: kindData.ProbeImage,
					Kind: kindData.Name})
				start := time.Now()
				res := (&scenarios.Runner{Backend: backend}).Run(sc)
				AddReportEntry(fmt.Sprintf("%s on kind, round %d", filepath.Base(f), round+1), time.Since(start).Round(100*time.Millisecond).String())
				report.Reset()
				scenarios.Print(&report, []*scenarios.Result{res}, false)
				GinkgoWriter.Print(report.String())
				Expect(res.Error).To(BeEmpty(), "%s round %d:\n%s", f, round+1, report.String())
				for i, st := range res.Steps {
					audited := 0
					for _, c := range st.Cells {
						if !c.OK {
							wrongPerRound[round]++
						}
						if c.Observed == scenarios.Audit {
							audited++
						}
					}
					// The audit-mode step passes only if the enforcers reported its connections as
					// AUDIT (the cluster backend's AuditWitness): a connection that merely got
					// through is observed allow.
					if filepath.Base(f) == "000-audit-then-enforce.yaml" && i == 0 {
						Expect(audited).To(BeNumerically(">", 0), "%s round %d: no connection reported as AUDIT:\n%s", f, round+1, report.String())
					}
					Expect(st.Failed).To(BeFalse(), "%s round %d step %q:\n%s", f, round+1, st.Name, report.String())
					if st.Pending != "" {
						// Only DNS-name and Kafka steps wait for later work: no HTTP step does.
						Expect(st.Pending).To(MatchRegexp(`(?i)DNS|Kafka|toFQDNs`), "%s step %q pending", f, st.Name)
						Expect(st.Pending).NotTo(MatchRegexp(`(?i)HTTP`), "%s step %q pending", f, st.Name)
						continue
					}
					enforced++
				}
			}
			Expect(enforced).To(BeNumerically(">=", 10))
		}
		AddReportEntry("seed scenarios on kind: wrong cells per round", fmt.Sprint(wrongPerRound))
		GinkgoWriter.Printf("seed scenarios on kind, %d rounds: wrong cells per round %v\n", seedRounds, wrongPerRound)
	})
})
