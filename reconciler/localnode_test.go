package reconciler

import (
	"errors"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/localnode"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// outcome is what a TCP probe saw.
type outcome string

const (
	allowed  outcome = "allowed"
	timedOut outcome = "timed out"
	refused  outcome = "refused"
)

// localNode starts three pods of namespace app (a accepts TCP on 8080) on a local node and
// returns a target for it and a probe from a pod to a:8080.
func localNode(t testing.TB) (*NodeTarget, func(from string) outcome) {
	testenv.RequireBPF(t)
	node := localnode.NewNode(localnode.Options{})
	t.Cleanup(func() {
		if err := node.Stop(); err != nil {
			t.Errorf("stop local node: %v", err)
		}
	})
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	c := &policy.Cluster{Namespaces: []policy.Namespace{{Name: "app"}}}
	for _, name := range []string{"a", "b", "c"} {
		ep := policy.Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name}}
		if name == "a" {
			ep.Ports = []policy.NamedPort{{Port: 8080, Protocol: policy.ProtoTCP}}
		}
		c.Endpoints = append(c.Endpoints, ep)
	}
	cluster, err := node.AddCluster(c)
	if err != nil {
		t.Fatal(err)
	}
	a := node.Pod("app/a")
	var ln net.Listener
	if err := a.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	target := &NodeTarget{NodeName: "local", Node: node, Cluster: func() *policy.Cluster { return cluster }}
	to := net.JoinHostPort(a.IPv4.String(), strconv.Itoa(8080))
	once := func(from string) outcome {
		var o outcome
		err := node.Pod("app/" + from).Do(func() error {
			conn, err := net.DialTimeout("tcp", to, 400*time.Millisecond)
			switch {
			case err == nil:
				conn.Close()
				o = allowed
			case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
				o = timedOut
			default:
				o = refused
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	// A probe that does not connect is retried once before it counts.
	probe := func(from string) outcome {
		if o := once(from); o == allowed {
			return o
		}
		return once(from)
	}
	return target, probe
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
