// Package scenarios reads scenario files and runs them: for each step it compares the
// connectivity the file expects, the matrix the policy engine predicts and what real probes
// observe through a backend (a local node of network namespaces, or a cluster).
package scenarios

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/netpact/netpact/policy"
)

// Outcome is what a probe sees.
type Outcome string

const (
	Allow   Outcome = "allow"
	Timeout Outcome = "timeout"
	Refused Outcome = "refused"
	HTTP200 Outcome = "http-200"
	HTTP403 Outcome = "http-403"
	// GRPCOK and GRPCDenied are a gRPC call's outcomes (path: /package.Service/Method over h2c):
	// it answered, or it ended with PermissionDenied (a 403 from the L7 proxy).
	GRPCOK     Outcome = "grpc-ok"
	GRPCDenied Outcome = "grpc-denied"
)

func parseOutcome(s string) (Outcome, error) {
	switch o := Outcome(s); o {
	case Allow, Timeout, Refused, HTTP200, HTTP403, GRPCOK, GRPCDenied:
		return o, nil
	}
	// mixed(a,b): a service probe whose backends disagree (what a connection gets depends on the
	// backend translation picks).
	if inner, ok := strings.CutPrefix(s, "mixed("); ok && strings.HasSuffix(inner, ")") {
		var outs []Outcome
		for _, part := range strings.Split(strings.TrimSuffix(inner, ")"), ",") {
			o, err := parseOutcome(strings.TrimSpace(part))
			if err != nil || strings.HasPrefix(string(o), "mixed(") {
				return "", fmt.Errorf("unknown expectation %q: mixed(...) lists two or more of allow, timeout, refused, http-200, http-403", s)
			}
			outs = append(outs, o)
		}
		if m := combineSet(outs); strings.HasPrefix(string(m), "mixed(") {
			return m, nil
		}
	}
	return "", fmt.Errorf("unknown expectation %q: use allow, timeout, refused, http-200, http-403 or mixed(...) of them", s)
}

// Mark is the one-character form of an outcome in tables.
func (o Outcome) Mark() string {
	switch o {
	case Allow, HTTP200, GRPCOK:
		return "."
	case Timeout:
		return "X"
	case Refused:
		return "R"
	case HTTP403, GRPCDenied:
		return "4"
	}
	return "?"
}

// Scenario is one scenario file.
type Scenario struct {
	Name        string      `yaml:"name"`
	Description string      `yaml:"description"`
	Namespaces  []Namespace `yaml:"namespaces"`
	Pods        []Pod       `yaml:"pods"`
	Services    []Service   `yaml:"services"`
	Steps       []Step      `yaml:"steps"`

	file string
	dir  string
}

// File is where the scenario was read from.
func (s *Scenario) File() string { return s.file }

// Namespace is a namespace and its labels.
type Namespace struct {
	Name   string            `yaml:"name"`
	Labels map[string]string `yaml:"labels"`
}

// Pod is a pod: where it lives, its labels, what runs in it and the ports it serves.
type Pod struct {
	Name           string            `yaml:"name"`
	Namespace      string            `yaml:"namespace"`
	Labels         map[string]string `yaml:"labels"`
	ServiceAccount string            `yaml:"serviceAccount"`
	// Workload is what serves the pod's TCP ports: "probe" (the built-in echo server, the
	// default), "http" (a small HTTP app answering 200 on every path, like the seed's Flask app
	// with / and /metrics), "grpc" (a gRPC server over h2c with grpc.health.v1.Health: Check,
	// List and Watch), "nginx" or "postgres" (Debian's programs). UDP ports always get the
	// built-in echo server, SCTP ports a raw-socket listener.
	Workload string `yaml:"workload"`
	Ports    []Port `yaml:"ports"`
}

// Key is "namespace/name".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// Service is a Kubernetes Service over the scenario's pods. On a cluster, probes reach it through
// its ClusterIP (translated to a backend at the pod's socket by netpact), a NodePort of another
// node (kube-proxy), or its DNS name. On the local node a ClusterIP service gets a real virtual
// address, translated the same way; a NodePort probe goes to that address too (no kube-proxy
// there), and a DNS name is resolved by the pod's resolver when the scenario has kube-dns (a pod
// with the dns workload), else by the harness to the same address.
type Service struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Selector  map[string]string `yaml:"selector"`
	// Type is ClusterIP (the default), NodePort or Headless (clusterIP: None).
	Type  string        `yaml:"type"`
	Ports []ServicePort `yaml:"ports"`
}

// DNSService is the Service a pod's resolver asks: lookup probes go to it.
const DNSService = "kube-system/kube-dns"

// Key is "namespace/name".
func (s Service) Key() string { return s.Namespace + "/" + s.Name }

// ServicePort maps a service port to the pods' target port.
type ServicePort struct {
	Port       uint16 `yaml:"port"`
	TargetPort uint16 `yaml:"targetPort"`
	NodePort   uint16 `yaml:"nodePort"`
	Protocol   string `yaml:"protocol"`
}

func (s *Scenario) service(key string) (*Service, bool) {
	for i := range s.Services {
		if s.Services[i].Key() == key {
			return &s.Services[i], true
		}
	}
	return nil, false
}

// backend is the first pod (in file order) the service selects that serves the target port.
func (s *Scenario) backend(svc *Service, port ServicePort) (*Pod, Port, bool) {
	pods, tp := s.backends(svc, port, nil)
	if len(pods) == 0 {
		return nil, tp, false
	}
	return pods[0], tp, true
}

// backends are the pods (in file order) the service selects that serve the target port, with
// the labels labels gives (the file's when nil: a step may have changed them), and the target.
func (s *Scenario) backends(svc *Service, port ServicePort, labels func(*Pod) map[string]string) ([]*Pod, Port) {
	target := port.TargetPort
	if target == 0 {
		target = port.Port
	}
	proto, _ := policy.ParseProto(port.Protocol)
	tp := Port{Port: target, Protocol: proto}
	var out []*Pod
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Namespace != svc.Namespace || len(svc.Selector) == 0 {
			continue
		}
		have := p.Labels
		if labels != nil {
			have = labels(p)
		}
		match := true
		for k, v := range svc.Selector {
			if have[k] != v {
				match = false
			}
		}
		if match && serves(*p, tp) {
			out = append(out, p)
		}
	}
	return out, tp
}

// Port is "80", "80/TCP" or "http:80/TCP" in a file.
type Port struct {
	Name     string
	Port     uint16
	Protocol policy.Proto
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// UnmarshalYAML reads "[name:]port[/protocol]".
func (p *Port) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: a port is written 80, 80/UDP or http:80/TCP", n.Line)
	}
	v, err := parsePort(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*p = v
	return nil
}

func parsePort(s string) (Port, error) {
	var p Port
	rest := s
	if name, r, ok := strings.Cut(s, ":"); ok {
		p.Name, rest = name, r
	}
	num, proto, _ := strings.Cut(rest, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return p, fmt.Errorf("invalid port %q: write 80, 80/UDP or http:80/TCP", s)
	}
	p.Port = uint16(n)
	p.Protocol, err = policy.ParseProto(proto)
	if err != nil {
		return p, fmt.Errorf("invalid port %q: %w", s, err)
	}
	return p, nil
}

// Step changes the cluster, then states what connectivity must be.
type Step struct {
	Name   string         `yaml:"name"`
	Apply  []PolicySource `yaml:"apply"`
	Delete []string       `yaml:"delete"`
	// SetPodLabels and SetNamespaceLabels replace labels.
	SetPodLabels       []PodLabels       `yaml:"setPodLabels"`
	SetNamespaceLabels []NamespaceLabels `yaml:"setNamespaceLabels"`
	Expect             Expectation       `yaml:"expect"`
	// Pending names why a step cannot be checked yet; it is reported, not run.
	Pending string `yaml:"pending"`
}

// PolicySource is a policy file (relative to the scenario file) or inline YAML.
type PolicySource struct {
	File   string `yaml:"file"`
	Inline string `yaml:"inline"`
}

// PodLabels sets a pod's labels.
type PodLabels struct {
	Pod    string            `yaml:"pod"`
	Labels map[string]string `yaml:"labels"`
}

// NamespaceLabels sets a namespace's labels.
type NamespaceLabels struct {
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

// Expectation is a whole matrix (a default plus exceptions) and explicit probes.
type Expectation struct {
	Matrix *Matrix     `yaml:"matrix"`
	Probes []ProbeSpec `yaml:"probes"`
}

// Matrix expects every pod to every pod serving each of Ports to have Default, except where an
// exception (from and to are namespace/name patterns with * wildcards) says otherwise.
type Matrix struct {
	Ports      []Port      `yaml:"ports"`
	Default    string      `yaml:"default"`
	Exceptions []Exception `yaml:"exceptions"`
}

// Exception overrides the matrix default for matching cells.
type Exception struct {
	From   string `yaml:"from"`
	To     string `yaml:"to"`
	Port   string `yaml:"port"`
	Expect string `yaml:"expect"`
}

// ProbeSpec is one explicit probe, to a pod or to a service.
type ProbeSpec struct {
	From string `yaml:"from"`
	To   string `yaml:"to"`
	// Service (namespace/name) is probed instead of a pod, on the service port Port, through Via:
	// clusterIP (the default), nodePort (another node's address) or dns (the service's name).
	Service string `yaml:"service"`
	Via     string `yaml:"via"`
	// Lookup resolves a DNS name with the source pod's resolver instead (its resolv.conf on a
	// cluster: kube-dns's ClusterIP; on the local node the scenario's kube-system/kube-dns
	// service, served by a pod with the dns workload). allow: the resolver answered.
	Lookup   string `yaml:"lookup"`
	Port     uint16 `yaml:"port"`
	Protocol string `yaml:"protocol"`
	// Method and Path make an HTTP request (default GET /) for http-* expectations; Host sets
	// its Host header (the address when empty) and Headers its other headers. Seen names
	// headers the destination must have received, after every proxy on the way, with their
	// values ("" for absent): only a pod of the http workload says what it received.
	Method  string            `yaml:"method"`
	Path    string            `yaml:"path"`
	Host    string            `yaml:"host"`
	Headers map[string]string `yaml:"headers"`
	Seen    map[string]string `yaml:"seen"`
	Expect  string            `yaml:"expect"`
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

func (svc *Service) port(port uint16) (ServicePort, bool) {
	for _, sp := range svc.Ports {
		if sp.Port == port {
			return sp, true
		}
	}
	return ServicePort{}, false
}

// Load reads scenario files and folders (*.yaml, recursively, in name order).
func Load(paths []string) ([]*Scenario, error) {
	var files []string
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("read scenarios: %w", err)
		}
		if !info.IsDir() {
			files = append(files, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && path != p && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read scenarios: %w", err)
		}
	}
	sort.Strings(files)
	var out []*Scenario
	var errs []error
	for _, f := range files {
		sc, err := LoadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, sc)
	}
	return out, errors.Join(errs...)
}

// LoadFile reads one scenario strictly: unknown fields are errors with their line.
func LoadFile(file string) (*Scenario, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read scenario: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var sc Scenario
	if err := dec.Decode(&sc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	sc.file, sc.dir = file, filepath.Dir(file)
	if err := sc.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return &sc, nil
}

func (s *Scenario) pod(key string) (*Pod, bool) {
	for i := range s.Pods {
		if s.Pods[i].Key() == key {
			return &s.Pods[i], true
		}
	}
	return nil, false
}

func (s *Scenario) validate() error {
	var problems []string
	if s.Name == "" {
		problems = append(problems, "missing name")
	}
	nss := map[string]bool{}
	for _, ns := range s.Namespaces {
		nss[ns.Name] = true
	}
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
		default:
			problems = append(problems, fmt.Sprintf("pod %s: unknown workload %q: use probe, http, grpc, nginx, postgres or dns", p.Key(), p.Workload))
		}
	}
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
	if len(s.Steps) == 0 {
		problems = append(problems, "no steps")
	}
	for i, st := range s.Steps {
		where := fmt.Sprintf("steps[%d] %q", i, st.Name)
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
			if len(m.Ports) == 0 {
				problems = append(problems, where+": matrix needs ports")
			}
			if _, err := parseOutcome(m.Default); err != nil {
				problems = append(problems, where+": matrix default: "+err.Error())
			}
			for _, ex := range m.Exceptions {
				if _, err := parseOutcome(ex.Expect); err != nil {
					problems = append(problems, where+": exception: "+err.Error())
				}
			}
		}
		for _, p := range st.Expect.Probes {
			if _, ok := s.pod(p.From); !ok {
				problems = append(problems, fmt.Sprintf("%s: probe from unknown pod %q", where, p.From))
			}
			targets := 0
			for _, t := range []string{p.To, p.Service, p.Lookup} {
				if t != "" {
					targets++
				}
			}
			switch {
			case targets != 1:
				problems = append(problems, where+": a probe needs exactly one of to, service and lookup")
			case p.Lookup != "":
				if _, ok := s.service(DNSService); !ok {
					problems = append(problems, fmt.Sprintf("%s: lookup probes need the resolver's service %s in the scenario's services", where, DNSService))
				}
				if p.Via != "" || p.Port != 0 || p.Protocol != "" || p.Path != "" || p.Method != "" || p.Host != "" || len(p.Headers) > 0 || len(p.Seen) > 0 {
					problems = append(problems, where+": a lookup probe takes no via, port, protocol, method, path, host, headers or seen")
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
			want, err := parseOutcome(p.Expect)
			if err != nil {
				problems = append(problems, where+": probe: "+err.Error())
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
		}
		if st.Expect.Matrix == nil && len(st.Expect.Probes) == 0 && st.Pending == "" {
			problems = append(problems, where+": expects nothing: give a matrix or probes")
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}
