package enforcer

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/policy"
)

// TestHubbleFlowsCacheFollowsState: the labels and policies HubbleFlows keeps per compiled state
// give the flows a fresh conversion gives, and a new state's flows name the new state's
// policies, not those cached from the last one.
func TestHubbleFlowsCacheFollowsState(t *testing.T) {
	compile := func(yaml string) *policy.State {
		t.Helper()
		b, err := policy.LoadBytes("bench-policies.yaml", []byte(yaml), policy.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st, err := policy.Compile(benchCluster(), b, policy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	ev := datapath.Flow{Time: 1, Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), Proto: policy.ProtoTCP,
		SrcPort: 41002, DstPort: 9999, Direction: policy.Ingress, Reason: datapath.ReasonDropDefaultDeny}
	e := &Enforcer{state: compile(benchPolicies)}
	e.publishLocked()
	e.HubbleFlows(ev, "node-1") // fills the cache
	first := e.HubbleFlows(ev, "node-1")
	// What the conversion gave before the cache: every value built from the state anew.
	e.hubble.Store(nil)
	if fresh := e.HubbleFlows(ev, "node-1"); !reflect.DeepEqual(first, fresh) {
		t.Fatalf("cached and fresh conversions differ:\n%+v\n%+v", first, fresh)
	}
	if len(first) != 2 || len(first[0].IngressDeniedBy) != 2 || len(first[0].Source.Labels) == 0 {
		t.Fatalf("want a policy verdict and a drop naming two policies and b's labels: %+v", first)
	}
	e.state = compile(strings.ReplaceAll(benchPolicies, "a-metrics", "a-scrape"))
	e.publishLocked()
	var names []string
	for _, p := range e.HubbleFlows(ev, "node-1")[0].IngressDeniedBy {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "a-from-b,a-scrape" && strings.Join(names, ",") != "a-scrape,a-from-b" {
		t.Fatalf("after the policy was renamed, the drop names %v", names)
	}
}
