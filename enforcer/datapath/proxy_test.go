package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/policy"
)

const l7Policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: b}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET}]
`

// TestEndpointAddrsFollowEndpoints: endpoint_addrs holds each endpoint's addresses, and a
// restarted datapath that adopts the pins deletes those of an endpoint it removes (they come from
// the adopted endpoint entries, not from memory of the process that wrote them). Only a pod with
// a proxy entry carries the L7 flags that turn on the redirect's lookups.
func TestEndpointAddrsFollowEndpoints(t *testing.T) {
	n := newTrafficNode(t)
	pin := filepath.Join(DefaultPinPath+"-test", fmt.Sprintf("addrs-%d", os.Getpid()))
	os.RemoveAll(pin)
	d, err := Open(Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	n.apply(t, d, l7Policy)
	a := n.pods["a"]
	lookup := func(d *Datapath, name string) (uint32, bool) {
		p := n.pods[name]
		var ifindex uint32
		err := d.objs.EndpointAddrs.Lookup(bpf.NetpactEndpointAddrKey{Family: familyV4, Addr: addr16(p.IPv4)}, &ifindex)
		return ifindex, err == nil
	}
	for _, name := range []string{"a", "b", "c"} {
		if got, ok := lookup(d, name); !ok || got != uint32(n.pods[name].Ifindex) {
			t.Errorf("endpoint_addrs[%s] = %d (%v), want %d", name, got, ok, n.pods[name].Ifindex)
		}
	}
	flags := func(d *Datapath, name string) uint32 {
		var info bpf.NetpactEndpointInfo
		if err := d.objs.Endpoints.Lookup(uint32(n.pods[name].Ifindex), &info); err != nil {
			t.Fatal(err)
		}
		return info.Flags
	}
	if f := flags(d, "a"); f&flagHasL7 == 0 || f&flagHasL7Ingress == 0 {
		t.Errorf("pod a (an ingress HTTP rule) has flags %#x, want the L7 and L7-ingress flags", f)
	}
	if f := flags(d, "b"); f&(flagHasL7|flagHasL7Ingress) != 0 {
		t.Errorf("pod b (no L7 rule) has flags %#x, want no L7 flag", f)
	}
	d.Close()

	d2, err := Open(Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Teardown() })
	if err := d2.RemoveEndpoint(Endpoint{Ifindex: a.Ifindex, Ifname: a.HostIfname, ID: 1}); err != nil {
		t.Fatal(err)
	}
	if _, ok := lookup(d2, "a"); ok {
		t.Error("a removed endpoint's address is still in endpoint_addrs after a restart")
	}
	if _, ok := lookup(d2, "b"); !ok {
		t.Error("another endpoint's address went with it")
	}
}

const uplinkPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET}]
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
`

// TestUplinkHandsOnlyL7FlowsToTheProxy runs tc_from_uplink on frames from outside the node: it
// passes untouched everything but a new TCP flow that a local pod's ingress L7 rule governs (the
// pod's own program judges the rest), and fails closed on those when no proxy or no listener is
// there, with the reason counted.
func TestUplinkHandsOnlyL7FlowsToTheProxy(t *testing.T) {
	d, _, _ := unitSetup(t, uplinkPolicy)
	uplink := testLink(t, fmt.Sprintf("npu%d", os.Getpid()%100000))
	count := func(r Reason) uint64 {
		cs, err := d.Counters()
		if err != nil {
			t.Fatal(err)
		}
		return cs[r].Packets
	}
	world := "192.0.2.7"
	for _, c := range []struct {
		name string
		p    pkt
		want uint32
	}{
		{"UDP", pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoUDP, sport: 5000, dport: 8080}, tcOK},
		{"TCP SYN to a port without L7 rules", pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 5000, dport: 9090, syn: true}, tcOK},
		{"TCP SYN to an address of no local pod", pkt{src: world, dst: "10.0.0.99", proto: policy.ProtoTCP, sport: 5000, dport: 8080, syn: true}, tcOK},
		{"TCP ACK of no flow of the proxy (tc_to_pod drops it)", pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 5000, dport: 8080, ack: true}, tcOK},
	} {
		if got := runProg(t, d.objs.TcFromUplink, uplink, c.p.build(t)); got != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, got, c.want)
		}
	}
	syn := pkt{src: world, dst: "10.0.0.1", proto: policy.ProtoTCP, sport: 5001, dport: 8080, syn: true}
	before := count(ReasonDropNoProxy)
	if got := runProg(t, d.objs.TcFromUplink, uplink, syn.build(t)); got != tcShot {
		t.Errorf("SYN to the L7 port with no proxy: verdict %d, want dropped", got)
	}
	if count(ReasonDropNoProxy) != before+1 {
		t.Errorf("SYN to the L7 port with no proxy: not counted as %q", ReasonDropNoProxy)
	}
	// A port but no listener on it (nothing listens on 127.0.0.1:1 here).
	if err := d.SetProxyPort(ParserHTTP, 1); err != nil {
		t.Fatal(err)
	}
	before = count(ReasonDropProxyDown)
	if got := runProg(t, d.objs.TcFromUplink, uplink, syn.build(t)); got != tcShot {
		t.Errorf("SYN to the L7 port with the proxy's listener down: verdict %d, want dropped", got)
	}
	if count(ReasonDropProxyDown) != before+1 {
		t.Errorf("SYN to the L7 port with the proxy's listener down: not counted as %q", ReasonDropProxyDown)
	}
}
