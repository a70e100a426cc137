package scenarios

import (
	"fmt"
	"net/netip"

	"github.com/netpact/netpact/policy"
)

// predictionNode is the one node of a Prediction's cluster.
const predictionNode = "prediction"

// Prediction is a Backend that makes nothing, enforces nothing and probes nothing: the scenario's
// pods exist only as the engine's cluster, with the addresses a cluster file's pods get
// (policy.Cluster.AddressPods). On it the runner holds each step's expectations to the engine's
// predictions alone (PredictOnly) and never calls Probe: `netpact test --predict-only`, which
// needs neither root nor a cluster.
type Prediction struct{}

// NewPrediction returns the backend of a predict-only run.
func NewPrediction() *Prediction { return &Prediction{} }

func (*Prediction) predictsOnly() {}

// Start returns the scenario's namespaces and pods on one node, each pod with an IPv4 and an
// IPv6 address apart from the external hosts' (ExternalAddrs).
func (*Prediction) Start(sc *Scenario) (*policy.Cluster, error) {
	c := &policy.Cluster{Nodes: []policy.Node{{Name: predictionNode}}, Namespaces: sc.namespaces()}
	for _, p := range sc.Pods {
		c.Endpoints = append(c.Endpoints, p.endpoint(predictionNode, nil))
	}
	var taken []netip.Addr
	for i := range sc.Externals {
		v4, v6 := ExternalAddrs(i)
		taken = append(taken, v4, v6)
	}
	if err := c.AddressPods(taken...); err != nil {
		return nil, fmt.Errorf("pod addresses: %w", err)
	}
	return c, nil
}

// Enforce enforces nothing: there is no datapath. The runner compiles the step's policies for
// its predictions itself.
func (*Prediction) Enforce(*policy.Cluster, []*policy.Policy) error { return nil }

// Probe is never called (the runner probes nothing on a Prediction): it answers nothing, the
// empty outcome, never a made-up observation.
func (*Prediction) Probe(Cell) Outcome { return "" }

// Flows has none: nothing ran.
func (*Prediction) Flows([]Cell) []string { return nil }

// BeginStep has nothing to mark.
func (*Prediction) BeginStep() {}

// Stop has nothing to tear down.
func (*Prediction) Stop() error { return nil }
