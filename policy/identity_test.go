package policy

import (
	"net/netip"
	"testing"
)

// TestPreferredIdentitiesSurviveARestart: an engine that met pods in another order than a new
// one would (b's labels first, then a's) gave them other numbers than a fresh engine gives;
// told what the datapath holds, a new engine gives each label set its old number, and a pod
// it has not met gets a number nobody held.
func TestPreferredIdentitiesSurviveARestart(t *testing.T) {
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	ep := func(name string, ip netip.Addr) Endpoint {
		return Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name}, Node: "n", IPs: []netip.Addr{ip}}
	}
	cluster := func(eps ...Endpoint) *Cluster {
		return &Cluster{Nodes: []Node{{Name: "n"}}, Namespaces: []Namespace{{Name: "app"}}, Endpoints: eps}
	}
	old := NewEngine(Options{})
	if err := old.SetCluster(cluster(ep("b", b))); err != nil {
		t.Fatal(err)
	}
	if err := old.SetCluster(cluster(ep("b", b), ep("a", a))); err != nil {
		t.Fatal(err)
	}
	held := old.State().IPCache("n")
	idOf := func(st *State, name string) ID {
		ident, ok := st.Identity(EndpointKey{Namespace: "app", Name: name})
		if !ok {
			t.Fatalf("no identity for %s", name)
		}
		return ident.ID
	}
	oldA, oldB := idOf(old.State(), "a"), idOf(old.State(), "b")
	fresh := NewEngine(Options{})
	if err := fresh.SetCluster(cluster(ep("a", a), ep("b", b))); err != nil {
		t.Fatal(err)
	}
	if idOf(fresh.State(), "a") == oldA {
		t.Fatal("the test needs an order in which a fresh engine numbers differently")
	}
	restarted := NewEngine(Options{})
	restarted.PreferIdentities(held)
	if err := restarted.SetCluster(cluster(ep("c", c), ep("a", a), ep("b", b))); err != nil {
		t.Fatal(err)
	}
	st := restarted.State()
	if idOf(st, "a") != oldA || idOf(st, "b") != oldB {
		t.Errorf("after a restart a=%d b=%d, the datapath holds a=%d b=%d", idOf(st, "a"), idOf(st, "b"), oldA, oldB)
	}
	if id := idOf(st, "c"); id == oldA || id == oldB {
		t.Errorf("the new pod c got %d, a number the datapath holds for another pod", id)
	}
}
