package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// planNamespaces are the namespaces whose pods the predict and plan specs check: seed 002's,
// running for the whole suite.
var planNamespaces = []string{"db", "dummy"}

// runNetpact runs this tree's netpact CLI: its stdout, its stderr and its exit code.
func runNetpact(ctx context.Context, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, netpactCLI(), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	Expect(err).NotTo(HaveOccurred(), "netpact %s", strings.Join(args, " "))
	return stdout.String(), stderr.String(), 0
}

// livePods are the "namespace/name" of the running pods of namespaces that have their own
// address: the pods a snapshot of the cluster predicts.
func livePods(ctx context.Context, g Gomega, client kubernetes.Interface, namespaces ...string) []string {
	var out []string
	for _, ns := range namespaces {
		pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && !p.Spec.HostNetwork && len(p.Status.PodIPs) > 0 {
				out = append(out, ns+"/"+p.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}

var _ = Describe("netpact predict and plan on the kind cluster's live pods", Ordered, Label("kind"), func() {
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

	It("predicts the seed 002 policies over exactly the running pods, with the seed's verdicts", func() {
		seed := filepath.Join(root, "policies", "002-flask-postgres-l3-and-l7")
		// A pod restarting between the listing and the snapshot is a different cluster: read again.
		Eventually(func(g Gomega) {
			live := livePods(ctx, g, client, planNamespaces...)
			g.Expect(live).To(ContainElements("db/postgres-0", "db/debug", "dummy/debug"))
			stdout, stderr, code := runNetpact(ctx, "predict", "--kubeconfig", kindData.Kubeconfig, "-o", "json", seed)
			g.Expect(code).To(Equal(0), "netpact predict: %s", stderr)
			var cells []struct {
				From, To, Protocol, Verdict string
				Port                        int
			}
			g.Expect(json.Unmarshal([]byte(stdout), &cells)).To(Succeed(), stdout)
			named := map[string]bool{}
			verdicts := map[string]string{}
			for _, c := range cells {
				for _, pod := range []string{c.From, c.To} {
					if ns, _, _ := strings.Cut(pod, "/"); slices.Contains(planNamespaces, ns) {
						named[pod] = true
					}
				}
				if c.To == "db/postgres-0" && c.Port == 5432 && c.Protocol == "TCP" {
					verdicts[c.From] = c.Verdict
				}
			}
			g.Expect(slices.Sorted(maps.Keys(named))).To(Equal(live), "the pods predict's cells name")
			// Seed 002: only flask-app reaches postgres.
			for _, p := range live {
				want := "default-denied"
				if strings.HasPrefix(p, "db/flask-app-") {
					want = "allowed"
				}
				if p != "db/postgres-0" {
					g.Expect(verdicts).To(HaveKeyWithValue(p, want), "%s -> db/postgres-0 5432/TCP", p)
				}
			}
		}).WithTimeout(time.Minute).WithPolling(2 * time.Second).Should(Succeed())
	})

	It("plans a default deny for db: exit 2, every running pod in exactly one group", func() {
		base, head := GinkgoT().TempDir(), GinkgoT().TempDir()
		Expect(os.WriteFile(filepath.Join(head, "default-deny.yaml"), []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: default-deny, namespace: db}
spec:
  endpointSelector: {}
  ingress:
    - {}
`), 0o644)).To(Succeed())
		Eventually(func(g Gomega) {
			live := livePods(ctx, g, client, planNamespaces...)
			stdout, stderr, code := runNetpact(ctx, "plan", "--kubeconfig", kindData.Kubeconfig, "-o", "json", base, head)
			g.Expect(code).To(Equal(2), "netpact plan with cells changed: %s\n%s", stderr, stdout)
			var plan struct {
				Groups []struct {
					Name string   `json:"name"`
					Pods []string `json:"pods"`
				} `json:"groups"`
			}
			g.Expect(json.Unmarshal([]byte(stdout), &plan)).To(Succeed(), stdout)
			groupsOf := map[string][]string{}
			for _, grp := range plan.Groups {
				g.Expect(grp.Name).NotTo(BeEmpty(), "a group without a name: %s", stdout)
				for _, p := range slices.Compact(slices.Sorted(slices.Values(grp.Pods))) {
					groupsOf[p] = append(groupsOf[p], grp.Name)
				}
			}
			for _, p := range live {
				g.Expect(groupsOf[p]).To(HaveLen(1), "the groups of %s", p)
			}
		}).WithTimeout(time.Minute).WithPolling(2 * time.Second).Should(Succeed())

		_, stderr, code := runNetpact(ctx, "plan", "--kubeconfig", kindData.Kubeconfig, "-o", "json", head, head)
		Expect(code).To(Equal(0), "netpact plan with no cell changed: %s", stderr)
	})
})

var _ = Describe("netpact test --kubeconfig on the kind cluster", Ordered, Label("kind"), func() {
	It("runs seed 003's scenario file from the command line, with progress, and leaves nothing behind", func() {
		if kindData == nil {
			Skip("the kind specs run with make e2e (ginkgo --label-filter=kind)")
		}
		ctx := context.Background()
		_, client := kindClient(kindData)
		stdout, stderr, code := runNetpact(ctx, "test", "--kubeconfig", kindData.Kubeconfig,
			filepath.Join(root, "scenarios", "seeds", "003-knp-universe-to-echo.yaml"))
		Expect(code).To(Equal(0), "netpact test:\n%s\n%s", stdout, stderr)
		// A line per step as it ran, on stderr; the report on stdout.
		for _, step := range []string{"ok       no policy: ", "ok       allow-universe-to-echo: ", "ok       galaxy relabelled as universe is let in: "} {
			Expect(stderr).To(ContainSubstring(step))
		}
		Expect(stdout).To(ContainSubstring("3 steps: 3 ok, 0 pending, 0 failed"))
		// The namespaces and pods it made are gone, and so are its policies.
		Eventually(func(g Gomega) {
			for _, ns := range []string{"echo", "universe", "galaxy"} {
				_, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
				g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "namespace %s is still there (%v)", ns, err)
			}
		}).WithTimeout(2 * time.Minute).WithPolling(2 * time.Second).Should(Succeed())
	})
})
