package scenarios

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// External is a host outside the cluster, as an API on the Internet is to a cluster's pods:
// not a pod, not known to the policy engine (its addresses are world), reached through the
// node's routing. The scenario's DNS server answers its Names with its addresses, so that
// toFQDNs rules can name it; probes reach it by name (lookup with a port) or by the external's
// own name (external:). The i-th external of a file has the addresses ExternalAddrs(i).
type External struct {
	Name string `yaml:"name"`
	// Names are the DNS names that resolve to it (none: it is reached only by its addresses).
	Names []string `yaml:"names"`
	// Workload is what serves its ports: tls (the default, and the only one for now), an HTTPS
	// server whose certificate, for its names and addresses, comes from a CA the harness makes
	// at start and the probes trust; GET / answers 200 with a body naming the host.
	Workload string `yaml:"workload"`
	Ports    []Port `yaml:"ports"`
}

// The external hosts' addresses: documentation ranges (RFC 5737, RFC 3849) apart from the
// pods' (10.250.0.0/16, fd00:250::/32) and the services' (10.251.0.0/16, fd00:251::/32), and
// from 192.0.2.0/24, which test machines use for their own network. They are world to the
// engine: no pod, node or service has them.
var (
	ExternalPrefixV4 = netip.MustParsePrefix("198.51.100.0/24")
	ExternalPrefixV6 = netip.MustParsePrefix("2001:db8::/64")
)

// maxExternals is how many externals a file may have: one address each in ExternalPrefixV4.
const maxExternals = 254

// ExternalAddrs are the addresses of the i-th external host of a scenario: 198.51.100.<i+1> and
// 2001:db8::<i+1>, in every run and on every backend, so that a policy may name them.
func ExternalAddrs(i int) (netip.Addr, netip.Addr) {
	v4 := ExternalPrefixV4.Addr().As4()
	v4[3] = byte(i + 1)
	v6 := ExternalPrefixV6.Addr().As16()
	v6[15] = byte(i + 1)
	return netip.AddrFrom4(v4), netip.AddrFrom16(v6)
}

// ExternalKey is how a cell names an external host in tables and reports ("external/NAME").
func ExternalKey(name string) string { return "external/" + name }

func (s *Scenario) external(name string) (*External, int, bool) {
	for i := range s.Externals {
		if s.Externals[i].Name == name {
			return &s.Externals[i], i, true
		}
	}
	return nil, 0, false
}

// externalNamed is the external host a DNS name resolves to.
func (s *Scenario) externalNamed(name string) (*External, bool) {
	name = policy.FQDN(name)
	for i := range s.Externals {
		for _, n := range s.Externals[i].Names {
			if policy.FQDN(n) == name {
				return &s.Externals[i], true
			}
		}
	}
	return nil, false
}

// serves says whether the external host answers on a port.
func (e *External) serves(port Port) bool {
	for _, q := range e.Ports {
		if q.Port == port.Port && q.Protocol == port.Protocol {
			return true
		}
	}
	return false
}

// names are the DNS names the scenario's DNS server knows: the services' names and the
// external hosts', fully qualified (the engine's prediction of a lookup's answer needs them).
func (s *Scenario) names() map[string]bool {
	out := map[string]bool{}
	for _, svc := range s.Services {
		out[serviceName(svc)] = true
	}
	for _, e := range s.Externals {
		for _, n := range e.Names {
			out[policy.FQDN(n)] = true
		}
	}
	return out
}

// serviceName is a Service's DNS name, fully qualified.
func serviceName(svc Service) string { return svc.Name + "." + svc.Namespace + ".svc.cluster.local." }

// resolves says whether a pod of namespace ns resolves name to addresses with the scenario's
// DNS server: one of the names its resolv.conf's search list makes of it is known.
func (s *Scenario) resolves(ns, name string) bool {
	known := s.names()
	for _, c := range probeagent.PodResolvConf(netip.Addr{}, ns).Candidates(name) {
		if known[strings.ToLower(c)] {
			return true
		}
	}
	return false
}

// externalCell is the cell of a probe to an external host: by its name in the file, or by a DNS
// name (lookup with a port), the probe's first leg then being that lookup's cell.
func externalCell(sc *Scenario, p ProbeSpec, labels func(*Pod) map[string]string) (Cell, error) {
	proto, _ := policy.ParseProto(p.Protocol)
	c := Cell{From: p.From, External: p.External, Port: Port{Port: p.Port, Protocol: proto}, Explicit: true}
	if p.Lookup != "" {
		e, ok := sc.externalNamed(p.Lookup)
		if !ok {
			return Cell{}, fmt.Errorf("no external host has the name %s", p.Lookup)
		}
		leg, err := probeCell(sc, ProbeSpec{From: p.From, Lookup: p.Lookup}, Allow, labels)
		if err != nil {
			return Cell{}, err
		}
		c.External, c.Resolve = e.Name, &leg
	}
	c.To = ExternalKey(c.External)
	return c, nil
}

// predictExternal is the engine's answer for a connection to an external host: the answer of
// the lookup the probe makes first, if any; then the source's egress to the host's address
// (world to the engine: no ingress policy governs the far end).
func predictExternal(sc *Scenario, state *policy.State, c Cell) (Outcome, string) {
	if c.Resolve != nil {
		switch o, rule := predict(sc, state, *c.Resolve); o {
		case Allow:
		case Timeout:
			return DNSTimeout, rule
		case Refused:
			return probeagent.DNSUnreachable, rule
		default:
			return o, rule
		}
	}
	e, i, ok := sc.external(c.External)
	from, okFrom := sc.pod(c.From)
	if !ok || !okFrom {
		return "error", "unknown pod or external host"
	}
	src, ok := state.Addr(policy.EndpointKey{Namespace: from.Namespace, Name: from.Name}, false)
	if !ok {
		return Timeout, "no address"
	}
	dst, _ := ExternalAddrs(i)
	// Looked up first: the DNS proxy, when a dns rule of the source governs its lookups, learned
	// the answer, and toFQDNs rules select the address.
	var names []string
	if c.Resolve != nil {
		names = []string{c.Resolve.Lookup}
	}
	d := state.DecideResolved(src, dst, names, c.Port.Protocol, c.Port.Port)
	rule := ""
	if d.Rule != nil {
		rule = d.Rule.String()
	}
	switch d.Outcome {
	case policy.OutcomeDenied, policy.OutcomeDefaultDenied:
		return Timeout, d.Reason()
	case policy.OutcomeL7:
		return "error", "an L7 rule on a TLS connection, which the proxy cannot read: " + d.Reason()
	case policy.OutcomeKafka:
		return "error", "kafka rules on a TLS connection, which the Kafka proxy cannot read: " + d.Reason()
	}
	if !e.serves(c.Port) {
		return Refused, rule
	}
	return Allow, rule
}

// checkExternals checks the externals list: names, DNS names, workloads and ports.
func (s *Scenario) checkExternals() []string {
	var problems []string
	if len(s.Externals) > maxExternals {
		problems = append(problems, fmt.Sprintf("externals: %d hosts, at most %d", len(s.Externals), maxExternals))
	}
	seen, dnsNames := map[string]bool{}, map[string]string{}
	for i, e := range s.Externals {
		where := fmt.Sprintf("externals[%d] %q", i, e.Name)
		if !isDNSLabel(e.Name) {
			problems = append(problems, where+": name must be a DNS label (lower-case letters, digits and -)")
		}
		if seen[e.Name] {
			problems = append(problems, where+": listed twice")
		}
		seen[e.Name] = true
		for _, n := range e.Names {
			fq := policy.FQDN(n)
			switch {
			case !isDNSName(n):
				problems = append(problems, fmt.Sprintf("%s: names: %q is not a DNS name", where, n))
			case strings.HasSuffix(fq, ".cluster.local."):
				problems = append(problems, fmt.Sprintf("%s: names: %q is inside the cluster's domain cluster.local", where, n))
			case dnsNames[fq] != "":
				problems = append(problems, fmt.Sprintf("%s: names: %q is also a name of external %s", where, n, dnsNames[fq]))
			}
			if dnsNames[fq] == "" {
				dnsNames[fq] = e.Name
			}
		}
		switch e.Workload {
		case "", "tls":
		default:
			problems = append(problems, fmt.Sprintf("%s: unknown workload %q: externals serve tls (the default)", where, e.Workload))
		}
		if len(e.Ports) == 0 {
			problems = append(problems, where+": no ports")
		}
		for _, p := range e.Ports {
			if p.Protocol != policy.ProtoTCP {
				problems = append(problems, fmt.Sprintf("%s: port %s: the tls workload serves TCP ports only", where, p))
			}
		}
	}
	return problems
}

func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// isDNSName says whether s is a host name of two labels or more (a trailing dot allowed).
func isDNSName(s string) bool {
	labels := strings.Split(strings.TrimSuffix(strings.ToLower(s), "."), ".")
	if len(labels) < 2 || len(s) > 253 {
		return false
	}
	for _, l := range labels {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}
