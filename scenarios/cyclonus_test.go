package scenarios

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/connectivity/probe"
	"github.com/mattfenwick/cyclonus/pkg/matcher"

	"github.com/netpact/netpact/internal/cyclonus"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// cyclonusPod is one of cyclonus' pods as a scenario pod: ports 80 and 81 over TCP, UDP and SCTP,
// named as cyclonus names them (serve-80-tcp, ...).
func cyclonusPod(ns, name string, labels map[string]string) Pod {
	p := Pod{Name: name, Namespace: ns, Labels: labels}
	for _, port := range []uint16{80, 81} {
		for _, proto := range []policy.Proto{policy.ProtoTCP, policy.ProtoUDP, policy.ProtoSCTP} {
			p.Ports = append(p.Ports, Port{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(proto.String())), Port: port, Protocol: proto})
		}
	}
	return p
}

// TestCyclonusOnDatapath runs every cyclonus case on a local node: real TCP, UDP and raw SCTP
// probes through the eBPF datapath must equal cyclonus' expected tables, loopback ignored.
func TestCyclonusOnDatapath(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	start := time.Now()
	sc := &Scenario{Name: "cyclonus"}
	// Host bytes spread so that cyclonus' ipBlock cases (z/c's /24 except its /28) split pods.
	index := map[string]int{"x/a": 20, "x/b": 40, "x/c": 2, "y/a": 5, "y/b": 60, "y/c": 9, "z/a": 13, "z/b": 99, "z/c": 8}
	for _, ns := range []string{"x", "y", "z"} {
		sc.Namespaces = append(sc.Namespaces, Namespace{Name: ns})
	}
	node := NewLocal(LocalOptions{})
	if _, err := node.Start(sc); err != nil {
		t.Fatal(err)
	}
	defer node.Stop()
	ips := map[string]string{}
	for _, ns := range []string{"x", "y", "z"} {
		for _, name := range []string{"a", "b", "c"} {
			key := ns + "/" + name
			p := cyclonusPod(ns, name, map[string]string{"pod": name})
			ep, err := node.AddPod(p, index[key]-1)
			if err != nil {
				t.Fatal(err)
			}
			ips[key] = ep.IPs[0].String()
		}
	}
	cases := cyclonus.TestCases(ips["z/c"])
	if len(cases) == 0 {
		t.Fatal("cyclonus generated no case")
	}
	wantSteps := 0
	for _, tc := range cases {
		wantSteps += len(tc.Steps)
	}
	jobs := &probe.JobBuilder{TimeoutSeconds: 1}
	nextIndex := 150
	var probes, steps, failedCases int
	for ci, tc := range cases {
		var created []string
		st := &cyclonus.State{Res: cyclonus.Resources(ips), NewPod: func(ns, name string) (string, error) {
			ep, err := node.AddPod(cyclonusPod(ns, name, nil), nextIndex)
			nextIndex++
			if err != nil {
				return "", err
			}
			created = append(created, ns+"/"+name)
			return ep.IPs[0].String(), nil
		}}
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
				t.Fatalf("case %d step %d: %v", ci+1, si+1, err)
			}
			cluster := st.Cluster()
			for i := range cluster.Endpoints {
				cluster.Endpoints[i].Node = "local"
			}
			cluster.Nodes = []policy.Node{{Name: "local"}}
			node.BeginStep() // each step's flows and notes alone, for its failures
			if err := node.Enforce(cluster, b.Policies); err != nil {
				t.Fatalf("case %d step %d: enforce: %v", ci+1, si+1, err)
			}
			truth := matcher.BuildNetworkPolicies(true, st.Policies)
			var mu sync.Mutex
			var wrong []string
			var wg sync.WaitGroup
			sem := make(chan struct{}, 96)
			valid := jobs.GetJobsForProbeConfig(st.Res, step.Probe).Valid
			wantProbes, stepProbes := 0, 0
			for _, job := range valid {
				if job.FromKey != job.ToKey {
					wantProbes++
				}
			}
			for _, job := range valid {
				if job.FromKey == job.ToKey {
					continue // loopback never leaves the pod: ignored, as cyclonus' --ignore-loopback
				}
				probes++
				stepProbes++
				want := truth.IsTrafficAllowed(job.Traffic()).IsAllowed()
				proto, _ := policy.ParseProto(string(job.Protocol))
				cell := Cell{From: job.FromKey, To: job.ToKey, Port: Port{Port: uint16(job.ResolvedPort), Protocol: proto}}
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					// Every probed port is served: allowed is a connection, blocked a timeout; a
					// refusal is neither (something answered for a port that policy blocks, or
					// the server is missing). Each cell is probed once: a blocked probe ends on
					// the datapath's drop, an allowed one on its answer, whatever the CPU load.
					expect := Timeout
					if want {
						expect = Allow
					}
					got := node.Probe(cell)
					if got != expect {
						mu.Lock()
						wrong = append(wrong, fmt.Sprintf("%s: cyclonus expects %s, observed %s\n    %s", cell, expect, got,
							strings.Join(node.Flows([]Cell{cell}), "\n    ")))
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if stepProbes != wantProbes || wantProbes == 0 {
				t.Errorf("case %d step %d: %d probes run, cyclonus has %d", ci+1, si+1, stepProbes, wantProbes)
			}
			if len(wrong) > 0 {
				failed = true
				t.Errorf("case %d %q step %d: %d probes disagree:\n  %s", ci+1, tc.Description, si+1, len(wrong), strings.Join(wrong[:min(len(wrong), 10)], "\n  "))
			}
		}
		for _, key := range created {
			if err := node.RemovePod(key); err != nil {
				t.Fatal(err)
			}
		}
		if failed {
			failedCases++
		}
	}
	fmt.Printf("cyclonus on the datapath: %d cases, %d steps, %d probes (loopback ignored), %d cases failed, %s\n",
		len(cases), steps, probes, failedCases, time.Since(start).Round(time.Second))
	if steps != wantSteps {
		t.Errorf("%d steps run, cyclonus' %d cases have %d", steps, len(cases), wantSteps)
	}
}
