package datapath

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

// TestResyncRepairsDrift: entries changed, removed or added behind netpact's back in the
// policy, prefix_policy and endpoints maps are put back as last written, writes before
// deletes, and each is reported in the engine's terms.
func TestResyncRepairsDrift(t *testing.T) {
	d, st, ep := unitSetup(t, unitPolicies)
	if fixed, err := d.Resync(); err != nil || len(fixed) != 0 {
		t.Fatalf("resync of untouched maps repaired %v (err %v), want nothing", fixed, err)
	}
	identity := func(name string) uint32 {
		ident, _ := st.Identity(policy.EndpointKey{Namespace: "app", Name: name})
		return uint32(ident.ID)
	}
	idB, idC := identity("b"), identity("c")
	policyKey := func(identity uint32, port uint16) bpf.TcPolicyKey {
		return bpf.TcPolicyKey{Prefixlen: policyKeyBits + 16, EpId: ep.ID, Identity: identity, Direction: dirIngress,
			Proto: uint8(policy.ProtoTCP), Port: htons(port)}
	}
	applied := d.applied[ep.ID]
	denyC22, allowB80 := policyKey(idC, 22), policyKey(idB, 80)
	for _, k := range []bpf.TcPolicyKey{denyC22, allowB80} {
		if _, ok := applied.Policy[k]; !ok {
			t.Fatalf("no policy entry %+v to tamper with", k)
		}
	}
	policyBefore := snapshotPolicy(t, d)
	var infoBefore bpf.TcEndpointInfo
	if err := d.objs.Endpoints.Lookup(uint32(ep.Ifindex), &infoBefore); err != nil {
		t.Fatal(err)
	}
	rev := d.cfg.PolicyRev

	// What root could do to the pinned maps.
	strayPolicy := bpf.TcPolicyKey{Prefixlen: policyKeyBits + 16, EpId: 99, Identity: 7, Direction: dirEgress,
		Proto: uint8(policy.ProtoUDP), Port: htons(53)}
	strayPrefix := bpf.TcPrefixPolicyKey{Prefixlen: prefixKeyBits + 24, EpId: 99, Direction: dirEgress,
		Proto: uint8(policy.ProtoTCP), Port: htons(443), Family: familyV4, Addr: addr16(netip.MustParseAddr("10.9.0.0"))}
	const strayIfindex = 1 << 30
	cleared := infoBefore
	cleared.Flags = 0
	for _, err := range []error{
		d.objs.Policy.Delete(denyC22),
		d.objs.Policy.Put(allowB80, valueOf(policy.VerdictDeny, 0)),
		d.objs.Policy.Put(strayPolicy, valueOf(policy.VerdictAllow, 5)),
		d.objs.PrefixPolicy.Put(strayPrefix, valueOf(policy.VerdictAllow, 6)),
		d.objs.Endpoints.Put(uint32(ep.Ifindex), cleared),
		d.objs.Endpoints.Put(uint32(strayIfindex), bpf.TcEndpointInfo{EpId: 99}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}

	fixed, err := d.Resync()
	if err != nil {
		t.Fatal(err)
	}
	addrs := " 10.0.0.1 fd00::1"
	rule := func(k bpf.TcPolicyKey) uint32 { return applied.Policy[k].RuleId }
	want := []DriftEntry{
		{Map: "policy", Endpoint: ep.ID, Key: fmt.Sprintf("ingress identity %d TCP 22", idC), Wrote: fmt.Sprintf("deny rule %d", rule(denyC22))},
		{Map: "policy", Endpoint: ep.ID, Key: fmt.Sprintf("ingress identity %d TCP 80", idB), Found: "deny rule 0",
			Wrote: fmt.Sprintf("allow rule %d", rule(allowB80))},
		{Map: "endpoints", Endpoint: ep.ID, Key: fmt.Sprintf("ifindex %d", ep.Ifindex),
			Found: fmt.Sprintf("id %d identity %d flags []", ep.ID, ep.Identity) + addrs,
			Wrote: fmt.Sprintf("id %d identity %d flags [enforce-ingress enforce-egress]", ep.ID, ep.Identity) + addrs},
		{Map: "policy", Endpoint: 99, Key: "egress identity 7 UDP 53", Found: "allow rule 5"},
		{Map: "prefix_policy", Endpoint: 99, Key: "egress prefix 10.9.0.0/24 TCP 443", Found: "allow rule 6"},
		{Map: "endpoints", Endpoint: 99, Key: fmt.Sprintf("ifindex %d", strayIfindex), Found: "id 99 identity 0 flags []"},
	}
	sortEntries := func(es []DriftEntry) []DriftEntry {
		return slices.SortedFunc(slices.Values(es), func(a, b DriftEntry) int { return strings.Compare(a.String(), b.String()) })
	}
	if got, want := sortEntries(fixed), sortEntries(want); !slices.Equal(got, want) {
		t.Errorf("resync repaired\n%s\nwant\n%s", lines(got), lines(want))
	}
	if i := slices.IndexFunc(fixed, func(e DriftEntry) bool { return e.Wrote == "" }); i >= 0 &&
		slices.ContainsFunc(fixed[i:], func(e DriftEntry) bool { return e.Wrote != "" }) {
		t.Errorf("a delete came before a write:\n%s", lines(fixed))
	}
	if after := snapshotPolicy(t, d); after != policyBefore {
		t.Errorf("the policy map after resync differs from before the tampering")
	}
	var info bpf.TcEndpointInfo
	if err := d.objs.Endpoints.Lookup(uint32(ep.Ifindex), &info); err != nil || info != infoBefore {
		t.Errorf("the endpoint entry after resync is %+v (err %v), want %+v", info, err, infoBefore)
	}
	for name, err := range map[string]error{
		"prefix_policy": d.objs.PrefixPolicy.Lookup(strayPrefix, new(bpf.TcPolicyValue)),
		"endpoints":     d.objs.Endpoints.Lookup(uint32(strayIfindex), new(bpf.TcEndpointInfo)),
	} {
		if err == nil {
			t.Errorf("the %s entry netpact never wrote is still there", name)
		}
	}
	if d.cfg.PolicyRev == rev {
		t.Error("resync repaired entries without bumping the policy revision: tracked flows keep their old verdicts")
	}
	if again, err := d.Resync(); err != nil || len(again) != 0 {
		t.Errorf("a second resync repaired %v (err %v), want nothing", again, err)
	}
}

func lines[T fmt.Stringer](xs []T) string {
	var b strings.Builder
	for _, x := range xs {
		fmt.Fprintf(&b, "  %s\n", x)
	}
	return b.String()
}
