package scenarios

import (
	"errors"
	"fmt"
	"strings"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// validate reports every problem of the file at once, so that one run fixes them all.
func (s *Scenario) validate() error {
	var problems []string
	if s.Name == "" {
		problems = append(problems, "missing name")
	}
	nss := map[string]bool{}
	for _, ns := range s.Namespaces {
		nss[ns.Name] = true
	}
	problems = append(problems, s.checkPods(nss)...)
	problems = append(problems, s.checkServices(nss)...)
	problems = append(problems, s.checkExternals()...)
	if len(s.Externals) > 0 && nss["external"] {
		problems = append(problems, `namespace "external": the name is taken by the external hosts (external/NAME) when a scenario has externals`)
	}
	if s.DNSTTL != nil && (*s.DNSTTL < 0 || *s.DNSTTL > maxDNSTTL) {
		problems = append(problems, fmt.Sprintf("dnsTTL: %d: a TTL is from 0 to %d seconds", *s.DNSTTL, maxDNSTTL))
	}
	if len(s.Steps) == 0 {
		problems = append(problems, "no steps")
	}
	for i, st := range s.Steps {
		problems = append(problems, s.checkStep(fmt.Sprintf("steps[%d] %q", i, st.Name), st, nss)...)
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// maxDNSTTL bounds a scenario's dnsTTL: a day, far more than a run lasts.
const maxDNSTTL = 86400

func (s *Scenario) checkPods(nss map[string]bool) []string {
	var problems []string
	seen := map[string]bool{}
	for _, p := range s.Pods {
		if !nss[p.Namespace] {
			problems = append(problems, fmt.Sprintf("pod %s: namespace %q is not listed", p.Key(), p.Namespace))
		}
		if seen[p.Key()] {
			problems = append(problems, fmt.Sprintf("pod %s is listed twice", p.Key()))
		}
		seen[p.Key()] = true
		switch p.Workload {
		case "", "probe", "http", "grpc", "nginx", "postgres", "dns":
		case "kafka":
			if len(p.Ports) != 1 || p.Ports[0].Protocol != policy.ProtoTCP {
				problems = append(problems, fmt.Sprintf("pod %s: the kafka workload is one broker on one TCP port (ports: [\"kafka:9092/TCP\"]), not %v", p.Key(), p.Ports))
			}
		default:
			problems = append(problems, fmt.Sprintf("pod %s: unknown workload %q: use probe, http, grpc, nginx, postgres, dns or kafka", p.Key(), p.Workload))
		}
	}
	return problems
}

func (s *Scenario) checkServices(nss map[string]bool) []string {
	var problems []string
	for _, svc := range s.Services {
		if !nss[svc.Namespace] {
			problems = append(problems, fmt.Sprintf("service %s: namespace %q is not listed", svc.Key(), svc.Namespace))
		}
		switch svc.Type {
		case "", "ClusterIP", "NodePort", "Headless":
		default:
			problems = append(problems, fmt.Sprintf("service %s: unknown type %q: use ClusterIP, NodePort or Headless", svc.Key(), svc.Type))
		}
		if len(svc.Ports) == 0 {
			problems = append(problems, fmt.Sprintf("service %s: no ports", svc.Key()))
		}
		for _, sp := range svc.Ports {
			if _, err := policy.ParseProto(sp.Protocol); err != nil {
				problems = append(problems, fmt.Sprintf("service %s: %v", svc.Key(), err))
			}
			if sp.NodePort != 0 && svc.Type != "NodePort" {
				problems = append(problems, fmt.Sprintf("service %s: nodePort on a %s service", svc.Key(), svc.Type))
			}
			if _, _, ok := s.backend(&svc, sp); !ok {
				problems = append(problems, fmt.Sprintf("service %s: no pod it selects serves port %d", svc.Key(), sp.Port))
			}
		}
	}
	return problems
}

// checkStep checks one step; where names it in each problem.
func (s *Scenario) checkStep(where string, st Step, nss map[string]bool) []string {
	var problems []string
	for _, a := range st.Apply {
		if (a.File == "") == (a.Inline == "") {
			problems = append(problems, where+": each apply entry needs exactly one of file and inline")
		}
	}
	for _, pl := range st.SetPodLabels {
		if _, ok := s.pod(pl.Pod); !ok {
			problems = append(problems, fmt.Sprintf("%s: setPodLabels: unknown pod %q", where, pl.Pod))
		}
	}
	for _, nl := range st.SetNamespaceLabels {
		if !nss[nl.Namespace] {
			problems = append(problems, fmt.Sprintf("%s: setNamespaceLabels: unknown namespace %q", where, nl.Namespace))
		}
	}
	if m := st.Expect.Matrix; m != nil {
		problems = append(problems, checkMatrix(where, m)...)
	}
	for _, p := range st.Expect.Probes {
		problems = append(problems, s.checkProbe(where, p)...)
	}
	if st.Expect.Matrix == nil && len(st.Expect.Probes) == 0 && st.Pending == "" {
		problems = append(problems, where+": expects nothing: give a matrix or probes")
	}
	return problems
}

func checkMatrix(where string, m *Matrix) []string {
	var problems []string
	if len(m.Ports) == 0 {
		problems = append(problems, where+": matrix needs ports")
	}
	if o, err := parseOutcome(m.Default); err != nil {
		problems = append(problems, where+": matrix default: "+err.Error())
	} else if kind := probeKind(o); kind != "" {
		problems = append(problems, fmt.Sprintf("%s: matrix default: %s is %s outcome", where, o, kind))
	}
	for _, ex := range m.Exceptions {
		if o, err := parseOutcome(ex.Expect); err != nil {
			problems = append(problems, where+": exception: "+err.Error())
		} else if kind := probeKind(o); kind != "" {
			problems = append(problems, fmt.Sprintf("%s: exception: %s is %s outcome", where, o, kind))
		}
	}
	return problems
}

// probeKind names the probes an outcome belongs to when a matrix cannot have it ("" when it can).
func probeKind(o Outcome) string {
	switch {
	case o.isDNS():
		return "a lookup probe's"
	case o.kafkaRole() != "" || o == KafkaUnsupported:
		return "a Kafka probe's (a probe with a topic)"
	}
	return ""
}

func (s *Scenario) checkProbe(where string, p ProbeSpec) []string {
	var problems []string
	if _, ok := s.pod(p.From); !ok {
		problems = append(problems, fmt.Sprintf("%s: probe from unknown pod %q", where, p.From))
	}
	problems = append(problems, s.checkProbeTarget(where, p)...)
	want, err := parseOutcome(p.Expect)
	if err != nil {
		problems = append(problems, where+": probe: "+err.Error())
	}
	problems = append(problems, checkDNSOutcome(where, p, want)...)
	if err == nil {
		problems = append(problems, s.checkKafkaProbe(where, p, want)...)
	}
	if (p.Host != "" || len(p.Headers) > 0 || len(p.Seen) > 0) && want != HTTP200 && want != HTTP403 && p.Method == "" && p.Path == "" {
		problems = append(problems, where+": host, headers and seen are for HTTP probes (expect http-200 or http-403, or give a method or path)")
	}
	if len(p.Seen) > 0 {
		if pod, ok := s.pod(p.To); !ok || pod.Workload != "http" {
			problems = append(problems, where+": seen needs a destination pod of workload http, which says what headers it received")
		}
	}
	if _, err := policy.ParseProto(p.Protocol); err != nil {
		problems = append(problems, where+": probe: "+err.Error())
	}
	return problems
}

// checkKafkaProbe checks that a topic and a Kafka outcome (or timeout, refused, with a role) go
// together, to the port of a pod of the kafka workload, without what other probes take.
func (s *Scenario) checkKafkaProbe(where string, p ProbeSpec, want Outcome) []string {
	role := want.kafkaRole()
	switch {
	case p.Topic == "" && (role != "" || want == KafkaUnsupported):
		return []string{fmt.Sprintf("%s: expect %s: a Kafka probe needs a topic", where, want)}
	case p.Topic == "" && (p.Role != "" || p.ClientID != ""):
		return []string{where + ": role and clientID are for Kafka probes, which need a topic"}
	case p.Topic == "":
		return nil
	case role == "" && want != Timeout && want != Refused && want != KafkaUnsupported:
		return []string{fmt.Sprintf("%s: expect %s: a Kafka probe (a probe with a topic) expects kafka-produce-ok, kafka-produce-denied, kafka-consume-ok, kafka-consume-denied, or with a role timeout, refused or kafka-unsupported", where, want)}
	case p.Role != "" && p.Role != probeagent.KafkaProduce && p.Role != probeagent.KafkaConsume:
		return []string{fmt.Sprintf("%s: unknown role %q: a Kafka probe's role is produce or consume", where, p.Role)}
	case role == "" && p.Role == "":
		return []string{fmt.Sprintf("%s: expect %s: a Kafka probe that expects %s needs a role, produce or consume", where, want, want)}
	case role != "" && p.Role != "" && p.Role != role:
		return []string{fmt.Sprintf("%s: role %s: the probe expects %s, which is a %s probe's", where, p.Role, want, role)}
	}
	var problems []string
	to, ok := s.pod(p.To)
	switch {
	case p.To == "":
		problems = append(problems, where+": a Kafka probe goes to a pod of the kafka workload (to), not to a service, a lookup or an external host")
	case !ok:
		// checkProbeTarget reports the unknown pod.
	case to.Workload != "kafka":
		problems = append(problems, fmt.Sprintf("%s: a Kafka probe goes to a pod of the kafka workload, and %s is not one", where, p.To))
	case len(to.Ports) == 1 && p.Port != to.Ports[0].Port:
		problems = append(problems, fmt.Sprintf("%s: port %d: the broker in %s listens on %d", where, p.Port, p.To, to.Ports[0].Port))
	}
	if proto, err := policy.ParseProto(p.Protocol); err == nil && proto != policy.ProtoTCP {
		problems = append(problems, fmt.Sprintf("%s: a Kafka probe is over TCP, not %s", where, proto))
	}
	if p.Via != "" || p.Method != "" || p.Path != "" || p.Host != "" || len(p.Headers) > 0 || len(p.Seen) > 0 {
		problems = append(problems, where+": a Kafka probe takes no via, method, path, host, headers or seen")
	}
	return problems
}

// checkDNSOutcome checks that the dns- outcomes go to lookups: dns-refused and dns-nxdomain to
// any, dns-timeout to a lookup with a port (a plain lookup without an answer times out).
func checkDNSOutcome(where string, p ProbeSpec, want Outcome) []string {
	switch {
	case want.isDNS() && p.Lookup == "":
		return []string{fmt.Sprintf("%s: expect %s: only a lookup probe has a DNS answer", where, want)}
	case want == DNSTimeout && p.Port == 0:
		return []string{fmt.Sprintf("%s: expect dns-timeout: a lookup without a port that gets no answer expects timeout", where)}
	}
	return nil
}

// checkProbeTarget checks the one target a probe has: a pod, a service, a name to look up (and
// connect to, with a port) or an external host.
func (s *Scenario) checkProbeTarget(where string, p ProbeSpec) []string {
	targets := 0
	for _, t := range []string{p.To, p.Service, p.Lookup, p.External} {
		if t != "" {
			targets++
		}
	}
	notHTTP := p.Via == "" && p.Path == "" && p.Method == "" && p.Host == "" && len(p.Headers) == 0 && len(p.Seen) == 0
	proto, _ := policy.ParseProto(p.Protocol)
	var problems []string
	if _, ok := s.service(DNSService); p.Lookup != "" && !ok {
		problems = append(problems, fmt.Sprintf("%s: lookup probes need the resolver's service %s in the scenario's services", where, DNSService))
	}
	switch {
	case targets != 1:
		problems = append(problems, where+": a probe needs exactly one of to, service, lookup and external")
	case p.Lookup != "" && p.Port != 0:
		if _, ok := s.externalNamed(p.Lookup); !ok {
			problems = append(problems, fmt.Sprintf("%s: lookup %s with a port connects to the external host of that name, and no external has it in its names", where, p.Lookup))
		}
		if !notHTTP || proto != policy.ProtoTCP {
			problems = append(problems, where+": a lookup probe with a port connects over TCP (HTTPS to an external host): it takes no via, protocol other than TCP, method, path, host, headers or seen")
		}
	case p.Lookup != "":
		if !notHTTP || p.Protocol != "" {
			problems = append(problems, where+": a lookup probe takes no via, protocol, method, path, host, headers or seen (and a port only to connect to an external host)")
		}
	case p.External != "":
		if _, _, ok := s.external(p.External); !ok {
			problems = append(problems, fmt.Sprintf("%s: probe to unknown external %q", where, p.External))
		}
		if p.Port == 0 {
			problems = append(problems, fmt.Sprintf("%s: a probe to external %s needs a port", where, p.External))
		}
		if !notHTTP || proto != policy.ProtoTCP {
			problems = append(problems, where+": a probe to an external host connects over TCP (HTTPS): it takes no via, protocol other than TCP, method, path, host, headers or seen")
		}
	case p.To != "":
		if _, ok := s.pod(p.To); !ok {
			problems = append(problems, fmt.Sprintf("%s: probe to unknown pod %q", where, p.To))
		}
		if p.Via != "" {
			problems = append(problems, where+": via is for service probes")
		}
	default:
		problems = append(problems, s.checkServiceProbe(where, p)...)
	}
	return problems
}

func (s *Scenario) checkServiceProbe(where string, p ProbeSpec) []string {
	svc, ok := s.service(p.Service)
	if !ok {
		return []string{fmt.Sprintf("%s: probe to unknown service %q", where, p.Service)}
	}
	var problems []string
	if _, ok := svc.port(p.Port); !ok {
		problems = append(problems, fmt.Sprintf("%s: service %s has no port %d", where, p.Service, p.Port))
	}
	switch p.Via {
	case "", "clusterIP":
		if svc.Type == "Headless" {
			problems = append(problems, fmt.Sprintf("%s: service %s is headless: probe it via dns", where, p.Service))
		}
	case "nodePort":
		if svc.Type != "NodePort" {
			problems = append(problems, fmt.Sprintf("%s: service %s is not a NodePort service", where, p.Service))
		}
	case "dns":
	default:
		problems = append(problems, fmt.Sprintf("%s: unknown via %q: use clusterIP, nodePort or dns", where, p.Via))
	}
	return problems
}
