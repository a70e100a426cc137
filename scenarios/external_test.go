package scenarios

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// TestExternals runs testdata/externals.yaml on a local node: external hosts reached by name and
// by address, then cut off by an egress policy that keeps DNS, then by one that does not.
func TestExternals(t *testing.T) {
	requirePass(t, runFiles(t, "testdata/externals.yaml"))
}

// TestExternalHostIsWorld: an external host is outside the cluster. The engine and the
// datapath give its addresses world; a pod reaches it over IPv4 and IPv6 through the node's
// routing, with a certificate of the harness's CA for its name; the scenario's DNS answers the
// name with the scenario's TTL; and nothing of it stays after Stop: namespace, veth, rules.
func TestExternalHostIsWorld(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	sc, err := LoadFile("testdata/externals.yaml")
	if err != nil {
		t.Fatal(err)
	}
	n := NewLocal(LocalOptions{})
	t.Cleanup(func() { n.Stop() })
	cluster, err := n.Start(sc)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Enforce(cluster, nil); err != nil {
		t.Fatal(err)
	}
	v4, v6 := ExternalAddrs(0)
	state, err := policy.Compile(cluster, &policy.Bundle{}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if id := state.Resolve("local", v4); id != policy.IDWorldIPv4 {
		t.Errorf("the engine gives %s identity %d, want world-ipv4", v4, id)
	}
	if id := state.Resolve("local", v6); id != policy.IDWorldIPv6 {
		t.Errorf("the engine gives %s identity %d, want world-ipv6", v6, id)
	}

	backend := n.node.Pod("default/backend")
	a, err := n.resolve(backend, "lookup", "default/backend", "api.stripe.com")
	if err != nil || !slices.Equal(a.Addrs, []netip.Addr{v4}) || a.TTL != 2 {
		t.Errorf("api.stripe.com resolves to %v, TTL %d (%v); want [%s], TTL 2 (the file's dnsTTL)", a.Addrs, a.TTL, err, v4)
	}
	want := probeagent.ExternalBody("stripe")
	n.BeginStep()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, addr := range []netip.Addr{v4, v6} {
		if o := n.prober.tlsGet(ctx, backend, netip.AddrPortFrom(addr, 443), "api.stripe.com", want); o != Allow {
			t.Errorf("HTTPS to api.stripe.com at %s: %s, want allow", addr, o)
		}
	}
	if o := n.prober.tlsGet(ctx, backend, netip.AddrPortFrom(v4, 443), "www.stripe.com", want); o != "tls-error" {
		t.Errorf("HTTPS to %s as a name its certificate lacks: %s, want tls-error", v4, o)
	}
	flows := strings.Join(n.node.Flows(map[[2]netip.Addr]bool{{backend.IPv4, v4}: true}, 10), "\n")
	if !strings.Contains(flows, v4.String()+":443 [identity 9 (reserved:world-ipv4)]") {
		t.Errorf("the datapath's flows to %s do not show it as world:\n%s", v4, flows)
	}

	ext := n.node.External(ExternalKey("stripe"))
	var pods []netip.Addr
	for _, p := range sc.Pods {
		lp := n.node.Pod(p.Key())
		pods = append(pods, lp.IPv4, lp.IPv6)
	}
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + ext.Netns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s is still there after Stop (%v)", ext.Netns, err)
	}
	if _, err := netlink.LinkByName(ext.HostIfname); err == nil {
		t.Errorf("veth %s is still there after Stop", ext.HostIfname)
	}
	rules, err := netlink.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.Src != nil {
			if a, ok := netip.AddrFromSlice(r.Src.IP); ok && slices.Contains(pods, a.Unmap()) {
				t.Errorf("routing rule %s is still there after Stop", r)
			}
		}
	}
}

// TestEnforcementModeAlways runs testdata/enforcement-always.yaml: the scenario's
// enforcementMode makes the local node's enforcer (and the engine's prediction) deny every pod
// both ways without a policy, and then need a rule at each end.
func TestEnforcementModeAlways(t *testing.T) {
	requirePass(t, runFiles(t, "testdata/enforcement-always.yaml"))
}

// TestLoadRejectsBadExternals: externals, dnsTTL, enforcementMode and the probes that use them
// are checked when the file is read, each problem naming its field.
func TestLoadRejectsBadExternals(t *testing.T) {
	load := func(body string) error {
		f := filepath.Join(t.TempDir(), "bad.yaml")
		os.WriteFile(f, []byte(body), 0o644)
		_, err := Load([]string{f})
		return err
	}
	err := load(`name: x
dnsTTL: -1
namespaces: [{name: a}, {name: external}, {name: kube-system}]
pods:
  - {name: c, namespace: a}
  - {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}, workload: dns, ports: ["53/UDP"]}
services:
  - {name: kube-dns, namespace: kube-system, selector: {k8s-app: kube-dns}, ports: [{port: 53, protocol: UDP}]}
externals:
  - {name: stripe, names: [api.stripe.com], ports: ["443/TCP"]}
  - {name: Bad_Name, names: [api.stripe.com, "not a name", web.a.svc.cluster.local], workload: nginx, ports: ["53/UDP"]}
  - {name: stripe, ports: []}
steps:
- name: s
  expect:
    matrix: {ports: [80/TCP], default: dns-refused}
    probes:
      - {from: a/c, external: nope, port: 443, expect: allow}
      - {from: a/c, external: stripe, expect: allow}
      - {from: a/c, external: stripe, port: 443, path: /x, expect: allow}
      - {from: a/c, external: stripe, port: 443, expect: dns-refused}
      - {from: a/c, lookup: www.example.com, port: 443, expect: allow}
      - {from: a/c, lookup: api.stripe.com, port: 443, protocol: UDP, expect: allow}
      - {from: a/c, lookup: api.stripe.com, expect: dns-timeout}
      - {from: a/c, lookup: api.stripe.com, external: stripe, port: 443, expect: allow}
`)
	for _, want := range []string{
		"dnsTTL: -1: a TTL is from 0 to 86400 seconds",
		`namespace "external": the name is taken by the external hosts`,
		`externals[1] "Bad_Name": name must be a DNS label`,
		`externals[1] "Bad_Name": names: "api.stripe.com" is also a name of external stripe`,
		`externals[1] "Bad_Name": names: "not a name" is not a DNS name`,
		`externals[1] "Bad_Name": names: "web.a.svc.cluster.local" is inside the cluster's domain`,
		`externals[1] "Bad_Name": unknown workload "nginx"`,
		`externals[1] "Bad_Name": port 53/UDP: the tls workload serves TCP ports only`,
		`externals[2] "stripe": listed twice`,
		`externals[2] "stripe": no ports`,
		"matrix default: dns-refused is a lookup probe's outcome",
		`probe to unknown external "nope"`,
		"a probe to external stripe needs a port",
		"a probe to an external host connects over TCP (HTTPS): it takes no via",
		"expect dns-refused: only a lookup probe has a DNS answer",
		"lookup www.example.com with a port connects to the external host of that name, and no external has it",
		"a lookup probe with a port connects over TCP",
		"expect dns-timeout: a lookup without a port that gets no answer expects timeout",
		"a probe needs exactly one of to, service, lookup and external",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	err = load("name: x\nenforcementMode: sometimes\nsteps: [{name: s, pending: later}]\n")
	if err == nil || !strings.Contains(err.Error(), `line 2: enforcementMode: unknown policy enforcement mode "sometimes"`) {
		t.Errorf("a bad enforcementMode: %v", err)
	}
}
