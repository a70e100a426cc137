package enforcer

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

const toStripe = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-stripe, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toFQDNs: [{matchName: api.stripe.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`

// echoOn serves TCP echo on addr:port in a pod's namespace until the test ends.
func echoOn(t *testing.T, p *podnet.Pod, addr netip.Addr, port uint16) {
	t.Helper()
	var ln net.Listener
	if err := p.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

// echoes says whether a connection carries a round trip.
func echoes(c net.Conn) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	_, err := io.ReadFull(c, buf)
	return err
}

// TestLearnedAddressesAreEnforced: toFQDNs lets a pod reach exactly the addresses learned for
// its name, from the moment Learn returns; past the TTL an address an open connection uses is
// kept, and the connection survives an enforcer restart (the learned state is restored before
// the first sync); once the connection is gone, the address is forgotten and new connections
// are dropped.
func TestLearnedAddressesAreEnforced(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	pid := os.Getpid() % 10000
	pin := filepath.Join(datapath.DefaultPinPath+"-test", fmt.Sprintf("fqdn-%d", pid))
	t.Cleanup(func() { os.RemoveAll(pin); os.Remove(datapath.DefaultPinPath + "-test") })
	statePath := filepath.Join(t.TempDir(), "fqdn.json")
	// a is the cluster's pod; stripe and other are hosts outside the cluster (no endpoint, no
	// programs: world to the policy).
	hosts := map[string]*podnet.Pod{}
	addrs := map[string]netip.Addr{}
	for i, name := range []string{"a", "stripe", "other"} {
		v4 := netip.AddrFrom4([4]byte{10, 203, byte(pid % 200), byte(i + 1)})
		p, err := podnet.CreatePod(name, fmt.Sprintf("npf-%d-%s", pid, name), fmt.Sprintf("npf%d%s", pid, name), v4, netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Delete() })
		hosts[name], addrs[name] = p, v4
	}
	echoOn(t, hosts["stripe"], addrs["stripe"], 443)
	echoOn(t, hosts["other"], addrs["other"], 443)
	b, err := policy.LoadBytes("to-stripe.yaml", []byte(toStripe), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ep := policy.Endpoint{Namespace: "app", Name: "a", Labels: map[string]string{"app": "a"}, Node: "n", IPs: []netip.Addr{addrs["a"]}}
	cluster := &policy.Cluster{Nodes: []policy.Node{{Name: "n"}}, Namespaces: []policy.Namespace{{Name: "app"}}, Endpoints: []policy.Endpoint{ep}}
	local := []LocalPod{{Key: ep.Key(), Ifindex: hosts["a"].Ifindex, HostIfname: hosts["a"].HostIfname}}
	start := func() (*datapath.Datapath, *Enforcer) {
		t.Helper()
		dp, err := datapath.Open(datapath.Options{PinPath: pin})
		if err != nil {
			t.Fatal(err)
		}
		e := New("n", dp, policy.Options{})
		e.SetFQDNOptions(FQDNOptions{StatePath: statePath})
		if _, err := e.RestoreLearned(); err != nil {
			t.Fatal(err)
		}
		if err := e.Sync(cluster, b.Policies, local); err != nil {
			t.Fatal(err)
		}
		return dp, e
	}
	dial := func(to string) (net.Conn, error) {
		var c net.Conn
		err := hosts["a"].Do(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addrs[to], 443).String(), time.Second)
			return err
		})
		return c, err
	}
	mustReach := func(step, to string) net.Conn {
		t.Helper()
		c, err := dial(to)
		if err == nil {
			err = echoes(c)
		}
		if err != nil {
			t.Fatalf("%s: a cannot reach %s on 443: %v", step, to, err)
		}
		return c
	}
	mustNotReach := func(step, to string) {
		t.Helper()
		if c, err := dial(to); err == nil {
			c.Close()
			t.Fatalf("%s: a reaches %s on 443", step, to)
		}
	}

	dp1, e1 := start()
	mustNotReach("nothing learned", "stripe")
	if err := e1.Learn("API.stripe.com", []netip.Addr{addrs["stripe"]}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	open := mustReach("learned", "stripe")
	defer open.Close()
	mustNotReach("learned, another address", "other")

	// Past the TTL, the open connection keeps the address.
	if err := e1.ExpireLearned(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := echoes(open); err != nil {
		t.Fatalf("past the TTL, the open connection to stripe broke: %v", err)
	}
	if err := e1.SaveLearned(); err != nil {
		t.Fatal(err)
	}
	dp1.Close() // the enforcer stops; the pins keep enforcing

	dp2, e2 := start()
	defer func() {
		if err := dp2.Teardown(); err != nil {
			t.Error(err)
		}
	}()
	if got := e2.LearnedNames()["api.stripe.com."]; len(got) != 1 || got[0] != addrs["stripe"] {
		t.Fatalf("after the restart the node holds %v for api.stripe.com, want [%s]", got, addrs["stripe"])
	}
	if err := echoes(open); err != nil {
		t.Fatalf("after the restart, the open connection to stripe broke: %v", err)
	}
	mustReach("after the restart", "stripe").Close()

	// Once no connection uses it (closing ones last 10 s in conntrack), the address goes.
	open.Close()
	deadline := time.Now().Add(40 * time.Second)
	for len(e2.LearnedNames()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the address is still learned 40 s after its connections closed: %v", e2.LearnedNames())
		}
		time.Sleep(time.Second)
		if err := e2.ExpireLearned(time.Now().Add(2 * time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	mustNotReach("forgotten", "stripe")
}

// TestLearnedNamesPerAddressBounded: one address answered for ever more names (a CDN's, or a
// pod asking for random subdomains of a pattern) keeps at most MaxNamesPerAddr of them: those
// expiring last (Cilium #48359).
func TestLearnedNamesPerAddressBounded(t *testing.T) {
	c := newFQDNCache(FQDNOptions{MaxNamesPerAddr: 3})
	a := netip.MustParseAddr("192.0.2.1")
	for i := range 10 {
		name := fmt.Sprintf("n%d.example.", i)
		c.names[name] = map[netip.Addr]time.Time{a: time.Unix(int64(i), 0)}
		c.capAddrNames(name, []netip.Addr{a})
	}
	got := c.learned()[a]
	slices.Sort(got)
	if want := []string{"n7.example.", "n8.example.", "n9.example."}; !slices.Equal(got, want) {
		t.Errorf("the address keeps %v, want %v", got, want)
	}
}
