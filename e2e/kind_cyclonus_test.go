package e2e

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/connectivity/probe"
	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/netpact/netpact/internal/cyclonus"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios"
)

// kindCyclonusCases picks at least 30 of cyclonus' cases, deterministically, spread evenly over
// the generator's order (which walks its tags): those whose actions a fixed set of nine pods can
// carry out (policies, namespace and pod labels; not pods or namespaces made or deleted).
func kindCyclonusCases(all []*generator.TestCase, want int) []*generator.TestCase {
	var ok []*generator.TestCase
	for _, tc := range all {
		fits := true
		for _, st := range tc.Steps {
			for _, a := range st.Actions {
				if a.CreatePod != nil || a.DeletePod != nil || a.CreateNamespace != nil || a.DeleteNamespace != nil {
					fits = false
				}
			}
		}
		if fits {
			ok = append(ok, tc)
		}
	}
	var out []*generator.TestCase
	for i := 0; i < want && i < len(ok); i++ {
		out = append(out, ok[i*len(ok)/want])
	}
	return out
}

var _ = Describe("cyclonus on kind", Ordered, Label("kind"), func() {
	BeforeAll(func() {
		if kindData == nil {
			Skip("the kind specs run with make e2e (ginkgo --label-filter=kind)")
		}
	})

	It("agrees with cyclonus' truth tables on 32 of its cases, over TCP, UDP and SCTP, across nodes", func() {
		cfg, client := kindClient(kindData)
		sc := &scenarios.Scenario{Name: "cyclonus on kind"}
		for _, ns := range []string{"x", "y", "z"} {
			sc.Namespaces = append(sc.Namespaces, scenarios.Namespace{Name: ns})
			for _, name := range []string{"a", "b", "c"} {
				p := scenarios.Pod{Name: name, Namespace: ns, Labels: map[string]string{"pod": name}}
				for _, port := range []uint16{80, 81} {
					for _, proto := range []policy.Proto{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP} {
						p.Ports = append(p.Ports, scenarios.Port{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(proto.String())),
							Port: port, Protocol: proto})
					}
				}
				sc.Pods = append(sc.Pods, p)
			}
		}
		backend := scenarios.NewCluster(scenarios.ClusterOptions{Config: cfg, Client: client, ProbeImage: kindData.ProbeImage,
			ProbeTimeout: time.Second})
		start := time.Now()
		pc, err := backend.Start(sc)
		Expect(err).NotTo(HaveOccurred())
		defer func() { Expect(backend.Stop()).To(Succeed()) }()
		ips := map[string]string{}
		for _, ep := range pc.Endpoints {
			ips[ep.Namespace+"/"+ep.Name] = ep.IPs[0].String()
		}
		cases := kindCyclonusCases(cyclonus.TestCases(ips["z/c"]), 32)
		Expect(cases).To(HaveLen(32))
		tags := map[string]bool{}
		for _, tc := range cases {
			for t := range tc.Tags {
				tags[t] = true
			}
		}
		jobs := &probe.JobBuilder{TimeoutSeconds: 1}
		var probes, sctp int
		var failures, details []string
		for ci, tc := range cases {
			st := &cyclonus.State{Res: cyclonus.Resources(ips)}
			for si, step := range tc.Steps {
				for _, a := range step.Actions {
					Expect(st.Apply(a)).To(Succeed(), "case %q step %d", tc.Description, si+1)
				}
				b, err := st.Bundle()
				Expect(err).NotTo(HaveOccurred())
				Expect(backend.Enforce(st.Cluster(), b.Policies)).To(Succeed(), "case %q step %d", tc.Description, si+1)
				truth := matcher.BuildNetworkPolicies(true, st.Policies)
				var cells []scenarios.Cell
				var want []scenarios.Outcome
				for _, job := range jobs.GetJobsForProbeConfig(st.Res, step.Probe).Valid {
					if job.FromKey == job.ToKey {
						continue // loopback never leaves the pod
					}
					proto, _ := policy.ParseProto(string(job.Protocol))
					if proto == policy.ProtoSCTP {
						sctp++ // an INIT on a raw socket, asked of the destination's listener
					}
					cells = append(cells, scenarios.Cell{From: job.FromKey, To: job.ToKey,
						Port: scenarios.Port{Port: uint16(job.ResolvedPort), Protocol: proto}})
					w := scenarios.Timeout
					if truth.IsTrafficAllowed(job.Traffic()).IsAllowed() {
						w = scenarios.Allow
					}
					want = append(want, w)
				}
				Expect(cells).NotTo(BeEmpty())
				// Each cell is probed once: a wrong cell is a failure, never probed again.
				backend.BeginStep()
				got := backend.ProbeBatch(cells)
				probes += len(cells)
				var wrong []scenarios.Cell
				for i := range cells {
					if got[i] != want[i] {
						failures = append(failures, fmt.Sprintf("case %d %q step %d: %s: cyclonus %s, observed %s",
							ci+1, tc.Description, si+1, cells[i], want[i], got[i]))
						wrong = append(wrong, cells[i])
					}
				}
				// What the first wrong cells' probes printed, and the flows the enforcers report for them.
				if len(wrong) > 0 && len(details) < 40 {
					details = append(details, backend.Flows(wrong[:min(len(wrong), 4)])...)
				}
			}
		}
		tagList := make([]string, 0, len(tags))
		for t := range tags {
			tagList = append(tagList, t)
		}
		sort.Strings(tagList)
		AddReportEntry("cyclonus on kind", fmt.Sprintf("%d cases, %d probes (%d SCTP), %d tags, %s",
			len(cases), probes, sctp, len(tags), time.Since(start).Round(time.Second)))
		fmt.Fprintf(GinkgoWriter, "cyclonus on kind: %d cases, %d probes, tags %s\n", len(cases), probes, strings.Join(tagList, " "))
		Expect(failures).To(BeEmpty(), "%d probes disagree:\n%s\nthe first wrong cells' probes, and their flows:\n%s",
			len(failures), strings.Join(failures[:min(len(failures), 30)], "\n"), strings.Join(details, "\n"))
		Expect(len(tags)).To(BeNumerically(">=", 15), "the cases cover cyclonus' tags: %v", tagList)
	})
})
