package e2e

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/netpact/netpact/scenarios"
)

// Seed 000's Kafka rules on kind: the broker (netpact probe-kafka-broker in a pod, advertising
// the pod's address) and franz-go's client in another pod, through the Kafka proxy of the
// enforcer.
var _ = Describe("seed 000's Kafka rules on kind", Label("kind"), Ordered, func() {
	BeforeAll(func() {
		if kindData == nil {
			Skip("the kind specs run with make e2e (ginkgo --label-filter=kind)")
		}
	})

	It("produces on orders and consumes from notifications, and the Kafka proxy denies the rest with TOPIC_AUTHORIZATION_FAILED", func() {
		start := time.Now()
		res, report := runOnKind("seeds", "000-kafka-topics.yaml")
		AddReportEntry("000-kafka-topics.yaml on kind", time.Since(start).Round(100*time.Millisecond).String())
		GinkgoWriter.Print(report)
		Expect(res.Error).To(BeEmpty(), report)
		Expect(res.Steps).To(HaveLen(2))
		for _, st := range res.Steps {
			Expect(st.Pending).To(BeEmpty(), "step %q", st.Name)
			Expect(st.Failed).To(BeFalse(), "step %q:\n%s", st.Name, report)
		}
		// Each outcome was observed: a record acked and read (the client reconnected to the
		// address the broker advertised), and both kinds of request denied by the proxy.
		seen := map[scenarios.Outcome]bool{}
		for _, c := range res.Steps[1].Cells {
			seen[c.Observed] = true
		}
		for _, o := range []scenarios.Outcome{scenarios.KafkaProduceOK, scenarios.KafkaProduceDenied,
			scenarios.KafkaConsumeOK, scenarios.KafkaConsumeDenied} {
			Expect(seen).To(HaveKey(o), "no probe observed %s:\n%s", o, report)
		}
	})
})
