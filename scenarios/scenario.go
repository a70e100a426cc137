// Package scenarios reads scenario files and runs them: for each step it compares the
// connectivity the file expects, the matrix the policy engine predicts and what real probes
// observe through a backend (a local node of network namespaces, or a cluster).
package scenarios

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
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
	// DNSRefused and DNSNXDomain are a lookup's answers without addresses: the resolver (or a DNS
	// proxy on the way) answered REFUSED or NXDOMAIN. DNSTimeout is a lookup-then-connect probe
	// whose lookup got no answer: it never connected.
	DNSRefused  Outcome = probeagent.DNSRefused
	DNSNXDomain Outcome = probeagent.DNSNXDomain
	DNSTimeout  Outcome = probeagent.DNSTimeout
	// Audit is a connection that got through, and that the datapath reported as AUDIT: a policy
	// in audit mode would have dropped it.
	Audit Outcome = "audit"
	// The Kafka probes' outcomes (a probe with a topic, to a pod of the kafka workload): the
	// record was acked or read, or the answer was TOPIC_AUTHORIZATION_FAILED (a Kafka proxy's
	// denial). KafkaUnsupported: the proxy's ApiVersions answer left out a request the client
	// needs.
	KafkaProduceOK     Outcome = probeagent.KafkaProduceOK
	KafkaProduceDenied Outcome = probeagent.KafkaProduceDenied
	KafkaConsumeOK     Outcome = probeagent.KafkaConsumeOK
	KafkaConsumeDenied Outcome = probeagent.KafkaConsumeDenied
	KafkaUnsupported   Outcome = probeagent.KafkaUnsupported
)

// isDNS says whether an outcome is a lookup's answer rather than a connection's.
func (o Outcome) isDNS() bool { return strings.HasPrefix(string(o), "dns-") }

// kafkaRole is the role of the Kafka probe that expects o (produce or consume), "" for another
// outcome.
func (o Outcome) kafkaRole() string {
	switch o {
	case KafkaProduceOK, KafkaProduceDenied:
		return probeagent.KafkaProduce
	case KafkaConsumeOK, KafkaConsumeDenied:
		return probeagent.KafkaConsume
	}
	return ""
}

func parseOutcome(s string) (Outcome, error) {
	switch o := Outcome(s); o {
	case Allow, Timeout, Refused, HTTP200, HTTP403, GRPCOK, GRPCDenied, DNSRefused, DNSNXDomain, DNSTimeout, Audit,
		KafkaProduceOK, KafkaProduceDenied, KafkaConsumeOK, KafkaConsumeDenied, KafkaUnsupported:
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
	return "", fmt.Errorf("unknown expectation %q: use allow, audit, timeout, refused, http-200, http-403, grpc-ok, grpc-denied, mixed(...) of them, for lookups dns-refused, dns-nxdomain and dns-timeout, or for Kafka probes kafka-produce-ok, kafka-produce-denied, kafka-consume-ok, kafka-consume-denied and kafka-unsupported", s)
}

// Mark is the one-character form of an outcome in tables.
func (o Outcome) Mark() string {
	switch o {
	case Allow, HTTP200, GRPCOK, KafkaProduceOK, KafkaConsumeOK:
		return "."
	case Timeout:
		return "X"
	case Audit:
		return "A"
	case Refused:
		return "R"
	case HTTP403, GRPCDenied, KafkaProduceDenied, KafkaConsumeDenied:
		// An L7 proxy's denial, whatever the protocol.
		return "4"
	}
	return "?"
}

// Scenario is one scenario file.
type Scenario struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	// EnforcementMode is the node's policy enforcement mode while the scenario runs (Cilium's
	// policy-enforcement-mode): default when empty, always or never.
	EnforcementMode EnforcementMode `yaml:"enforcementMode"`
	Namespaces      []Namespace     `yaml:"namespaces"`
	Pods            []Pod           `yaml:"pods"`
	Services        []Service       `yaml:"services"`
	// Externals are hosts outside the cluster (external.go).
	Externals []External `yaml:"externals"`
	// DNSTTL is the TTL in seconds of the answers of the scenario's DNS server (the dns
	// workload): DefaultDNSTTL when not set.
	DNSTTL *int   `yaml:"dnsTTL"`
	Steps  []Step `yaml:"steps"`

	file string
	dir  string
}

// File is where the scenario was read from.
func (s *Scenario) File() string { return s.file }

// DefaultDNSTTL is the TTL of the dns workload's answers when the scenario sets none.
const DefaultDNSTTL = 5

func (s *Scenario) dnsTTL() uint32 {
	if s.DNSTTL == nil {
		return DefaultDNSTTL
	}
	return uint32(*s.DNSTTL)
}

// EnforcementMode is a policy enforcement mode, read from a file with policy.ParseMode.
type EnforcementMode policy.EnforcementMode

// UnmarshalYAML reads default, always or never.
func (m *EnforcementMode) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: enforcementMode is default, always or never", n.Line)
	}
	mode, err := policy.ParseMode(s)
	if err != nil {
		return fmt.Errorf("line %d: enforcementMode: %w", n.Line, err)
	}
	*m = EnforcementMode(mode)
	return nil
}

// engineOptions are opts with the scenario's enforcement mode, when it sets one.
func (s *Scenario) engineOptions(opts policy.Options) policy.Options {
	if s.EnforcementMode != "" {
		opts.Mode = policy.EnforcementMode(s.EnforcementMode)
	}
	return opts
}

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
	// List and Watch), "nginx" or "postgres" (Debian's programs), or "kafka" (a Kafka broker,
	// franz-go's kfake, on its one TCP port, with the topics KafkaSeedTopics and those the
	// scenario's Kafka probes to it name, one record in each). UDP ports always get the built-in
	// echo server, SCTP ports a raw-socket listener.
	Workload string `yaml:"workload"`
	Ports    []Port `yaml:"ports"`
}

// Key is "namespace/name".
func (p Pod) Key() string { return p.Namespace + "/" + p.Name }

// endpoint is the pod as the engine sees it, on node with addresses ips: what every backend's
// Start returns for it.
func (p Pod) endpoint(node string, ips []netip.Addr) policy.Endpoint {
	ep := policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, ServiceAccount: p.ServiceAccount,
		Node: node, IPs: ips}
	for _, port := range p.Ports {
		ep.Ports = append(ep.Ports, policy.NamedPort{Name: port.Name, Port: port.Port, Protocol: port.Protocol})
	}
	return ep
}

// namespaces are the scenario's namespaces as the engine sees them.
func (s *Scenario) namespaces() []policy.Namespace {
	out := make([]policy.Namespace, 0, len(s.Namespaces))
	for _, ns := range s.Namespaces {
		out = append(out, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	return out
}

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
	// service, served by a pod with the dns workload). allow: the resolver answered (addresses
	// or NXDOMAIN); dns-refused, dns-nxdomain: that answer. With a Port, the name is an external
	// host's and the probe then connects to the address it got (allow, timeout, refused; or
	// dns-timeout, dns-refused, dns-nxdomain when the lookup failed).
	Lookup string `yaml:"lookup"`
	// External names an external host (Scenario.Externals) to connect to on Port.
	External string `yaml:"external"`
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
	// Topic makes the probe a Kafka client's to a pod of the kafka workload: produce one record
	// to the topic, or read one from its start (no consumer group), as franz-go's client with
	// client ID ClientID ("" when empty). The role (produce or consume) is the expectation's
	// (kafka-produce-ok), or Role's when the probe expects timeout, refused or kafka-unsupported.
	Topic    KafkaTopic `yaml:"topic"`
	Role     string     `yaml:"role"`
	ClientID string     `yaml:"clientID"`
	Expect   string     `yaml:"expect"`
}

// kafkaRole is the role of a Kafka probe: its expectation's, or else its Role ("" for a probe
// that is no Kafka probe).
func (p ProbeSpec) kafkaRole(want Outcome) string {
	if p.Topic == "" {
		return ""
	}
	if r := want.kafkaRole(); r != "" {
		return r
	}
	return p.Role
}

// KafkaTopic is a Kafka topic name, read from a file as Kafka allows it.
type KafkaTopic string

// UnmarshalYAML reads a topic: up to 249 letters, digits, '.', '_' and '-' (Kafka's rule).
func (t *KafkaTopic) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: topic: a Kafka topic is a string, such as orders", n.Line)
	}
	if !kafkaTopicRE.MatchString(s) || len(s) > 249 || s == "." || s == ".." {
		return fmt.Errorf("line %d: topic: invalid Kafka topic %q: up to 249 letters, digits, '.', '_' and '-'", n.Line, s)
	}
	*t = KafkaTopic(s)
	return nil
}

var kafkaTopicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

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
