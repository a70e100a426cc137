package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What a scenario asks of the cluster beyond pods and policies, as on the local node: external
// hosts (containers on kind's network, reached from pods through netpact's masquerade), their
// names in the cluster's CoreDNS with the scenario's TTL, and the enforcers' enforcement mode.
var _ = Describe("external hosts, DNS names and enforcement mode on kind", Label("kind"), Ordered, func() {
	BeforeAll(func() {
		if kindData == nil {
			Skip("the kind specs run with make e2e (ginkgo --label-filter=kind)")
		}
	})
	DescribeTable("scenario file of the local node, on kind",
		func(file string) {
			start := time.Now()
			res, report := runOnKind("testdata", file)
			AddReportEntry(file+" on kind", time.Since(start).Round(100*time.Millisecond).String())
			GinkgoWriter.Print(report)
			Expect(res.Error).To(BeEmpty(), report)
			for _, st := range res.Steps {
				Expect(st.Pending).To(BeEmpty(), "%s step %q", file, st.Name)
				Expect(st.Failed).To(BeFalse(), "%s step %q:\n%s", file, st.Name, report)
			}
			// Nothing of the scenario is left: no external host's container.
			out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=netpact.io/external-of="+kindData.Name).Output()
			Expect(err).NotTo(HaveOccurred())
			Expect(strings.TrimSpace(string(out))).To(BeEmpty(), "external hosts left behind")
			_, client := kindClient(kindData)
			ds, err := client.AppsV1().DaemonSets(netpactNS).Get(context.Background(), "netpact", metav1.GetOptions{})
			Expect(err).NotTo(HaveOccurred())
			Expect(fmt.Sprint(ds.Spec.Template.Spec.Containers[0].Args)).To(ContainSubstring("--policy-enforcement-mode=default"))
			Expect(ds.Annotations).NotTo(HaveKey("netpact.io/scenario-restore-mode"))
		},
		Entry("externals.yaml: by name through kube-dns, and by address", "externals.yaml"),
		Entry("enforcement-always.yaml: the enforcers switched to always, and back", "enforcement-always.yaml"),
	)
})
