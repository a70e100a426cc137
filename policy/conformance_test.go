package policy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/mattfenwick/cyclonus/pkg/connectivity/probe"
	"github.com/mattfenwick/cyclonus/pkg/matcher"

	"github.com/netpact/netpact/internal/cyclonus"
	"github.com/netpact/netpact/policy"
)

// TestCyclonusConformance runs every case of cyclonus' generator (all tags) and checks each probe
// of each step against the truth table of cyclonus' matcher, loopback included.
func TestCyclonusConformance(t *testing.T) {
	base := cyclonus.Resources(cyclonus.EngineIPs)
	cases := cyclonus.TestCases(cyclonus.EngineIPs["z/c"])
	jobs := &probe.JobBuilder{TimeoutSeconds: 1}
	var probes, steps, failedCases int
	for ci, tc := range cases {
		st := &cyclonus.State{Res: base}
		failed := false
		for si, step := range tc.Steps {
			for _, a := range step.Actions {
				if err := st.Apply(a); err != nil {
					t.Fatalf("case %d %q step %d: %v", ci+1, tc.Description, si+1, err)
				}
			}
			steps++
			b, err := st.Bundle()
			if err != nil {
				t.Fatalf("case %d %q step %d: load: %v", ci+1, tc.Description, si+1, err)
			}
			state, err := policy.Compile(st.Cluster(), b, policy.Options{})
			if err != nil {
				t.Fatalf("case %d %q step %d: compile: %v", ci+1, tc.Description, si+1, err)
			}
			truth := matcher.BuildNetworkPolicies(true, st.Policies)
			var mismatches []string
			for _, job := range jobs.GetJobsForProbeConfig(st.Res, step.Probe).Valid {
				probes++
				want := truth.IsTrafficAllowed(job.Traffic()).IsAllowed()
				proto, _ := policy.ParseProto(string(job.Protocol))
				d := state.Decide(netip.MustParseAddr(job.FromIP), netip.MustParseAddr(job.ToIP), proto, uint16(job.ResolvedPort))
				got := d.Outcome == policy.OutcomeAllowed || d.Outcome == policy.OutcomeL7
				if got != want {
					mismatches = append(mismatches, fmt.Sprintf("%s -> %s %s/%d: cyclonus allowed=%v, netpact %s (%s)",
						job.FromKey, job.ToKey, job.Protocol, job.ResolvedPort, want, d.Outcome, d.Reason()))
				}
			}
			if len(mismatches) > 0 {
				failed = true
				t.Errorf("case %d %q step %d: %d of the probes disagree:\n  %s", ci+1, tc.Description, si+1,
					len(mismatches), strings.Join(mismatches[:min(len(mismatches), 12)], "\n  "))
			}
		}
		if failed {
			failedCases++
		}
	}
	fmt.Printf("cyclonus conformance: %d cases, %d steps, %d probes, %d cases failed\n", len(cases), steps, probes, failedCases)
	if len(cases) != 230 {
		t.Errorf("cyclonus v0.5.6 generates 230 cases, got %d", len(cases))
	}
}
