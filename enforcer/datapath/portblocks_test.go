package datapath

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

// TestAddressMatchedPortRangesAreBlocks: 70 addresses times ports 1000-5000 used to be 280,070
// exact-port entries (more than the map holds for the whole node); as aligned port blocks it is
// a few per address, and a range wider than 4,096 ports is no longer refused. Range edges hold
// on the real program.
func TestAddressMatchedPortRangesAreBlocks(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: wide, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress:\n  - from:\n")
	for i := 0; i < 70; i++ {
		fmt.Fprintf(&b, "    - ipBlock: {cidr: 192.0.2.%d/32}\n", i+1)
	}
	b.WriteString("    ports: [{port: 1000, endPort: 5000, protocol: TCP}, {port: 20000, endPort: 40000, protocol: UDP}]\n")
	d, st, ep := unitSetup(t, b.String())
	es, _ := st.Endpoint(policy.EndpointKey{Namespace: "app", Name: "a"})
	e, err := ToBPF(ep.ID, es)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Prefix) > 70*40 {
		t.Errorf("%d address-matched entries for 70 addresses and two ranges", len(e.Prefix))
	}
	for _, c := range []struct {
		src   string
		proto policy.Proto
		port  uint16
		want  uint32
	}{
		{"192.0.2.1", policy.ProtoTCP, 1000, tcOK},
		{"192.0.2.70", policy.ProtoTCP, 5000, tcOK},
		{"192.0.2.35", policy.ProtoTCP, 4096, tcOK},
		{"192.0.2.1", policy.ProtoTCP, 999, tcShot},
		{"192.0.2.1", policy.ProtoTCP, 5001, tcShot},
		{"192.0.2.71", policy.ProtoTCP, 1000, tcShot},
		{"192.0.2.9", policy.ProtoUDP, 20000, tcOK},
		{"192.0.2.9", policy.ProtoUDP, 40000, tcOK},
		{"192.0.2.9", policy.ProtoUDP, 32768, tcOK},
		{"192.0.2.9", policy.ProtoUDP, 40001, tcShot},
		{"192.0.2.9", policy.ProtoTCP, 20000, tcShot},
	} {
		p := pkt{src: c.src, dst: "10.0.0.1", proto: c.proto, sport: 40000, dport: c.port, syn: true}
		if got := runProg(t, d.objs.TcToPod, ep.Ifindex, p.build(t)); got != c.want {
			t.Errorf("%s %s/%d: verdict %d, want %d", c.src, c.proto, c.port, got, c.want)
		}
		dec := st.Decide(netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst), c.proto, c.port)
		if (dec.Outcome == policy.OutcomeAllowed) != (c.want == tcOK) {
			t.Errorf("%s %s/%d: the engine says %s", c.src, c.proto, c.port, dec.Outcome)
		}
	}
	// What was written reads back as the engine's ranges.
	got, err := d.Dump(ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := FromBPF(e); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Error("the dump differs from the conversion")
	}
	ranges := 0
	for _, de := range got {
		if de.Key.PortLo == 1000 && de.Key.PortHi == 5000 {
			ranges++
		}
	}
	if ranges != 70 {
		t.Errorf("%d entries read back as 1000-5000, want 70", ranges)
	}
}
