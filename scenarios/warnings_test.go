package scenarios

import (
	"strings"
	"testing"
)

// TestStepWarnings: a step reports the warnings of its policies over the scenario's pods, each
// once: the toFQDNs rule's at the step that applies it, nothing at the next, and at the step that
// adds the dns rule only the Kafka rule's notice (its semantics are Cilium 1.19's).
func TestStepWarnings(t *testing.T) {
	sc, err := LoadFile("testdata/warnings.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := (&Runner{Backend: NewPrediction()}).Run(sc)
	if len(r.Steps) != 3 {
		t.Fatalf("steps %+v", r.Steps)
	}
	want := [][]string{
		{"allow-external-api.yaml:12:7: warning: CiliumNetworkPolicy default/allow-external-api: spec.egress[0].toFQDNs: toFQDNs selects addresses learned from DNS answers, but no egress rule with rules.dns on port 53 applies to default/backend"},
		nil,
		{"notice: ../policies/000-l7-dns-and-namespace-default-deny/kafka-produce-consume.yaml:22:13: CiliumNetworkPolicy production/kafka-produce-consume: spec.ingress[0].toPorts[0].rules.kafka: kafka rules follow Cilium 1.19's semantics"},
	}
	for i, s := range r.Steps {
		if len(s.Warnings) != len(want[i]) {
			t.Errorf("step %q: warnings %q, want %d", s.Name, s.Warnings, len(want[i]))
			continue
		}
		for j, w := range want[i] {
			if !strings.Contains(s.Warnings[j], w) {
				t.Errorf("step %q: warning %q, want %q", s.Name, s.Warnings[j], w)
			}
		}
	}
	var b strings.Builder
	Print(&b, []*Result{r}, false)
	if !strings.Contains(b.String(), "\n    ../policies/000-l7-dns-and-namespace-default-deny/allow-external-api.yaml:12:7: warning: ") {
		t.Errorf("the report does not show the warning under its step:\n%s", b.String())
	}
}
