package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Proto is an IP protocol number; ProtoAny in a map-state key means every protocol, ICMP included.
type Proto uint8

const (
	ProtoAny    Proto = 0
	ProtoICMP   Proto = 1
	ProtoTCP    Proto = 6
	ProtoUDP    Proto = 17
	ProtoICMPv6 Proto = 58
	ProtoSCTP   Proto = 132
)

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "ANY"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMPv6:
		return "ICMPv6"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// MarshalText writes the protocol's name.
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a protocol name.
func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParseProto reads a protocol name as Kubernetes and Cilium write it.
func ParseProto(s string) (Proto, error) {
	switch strings.ToUpper(s) {
	case "TCP", "":
		return ProtoTCP, nil
	case "UDP":
		return ProtoUDP, nil
	case "SCTP":
		return ProtoSCTP, nil
	case "ICMP":
		return ProtoICMP, nil
	case "ICMPV6":
		return ProtoICMPv6, nil
	}
	return 0, fmt.Errorf("unknown protocol %q", s)
}

// Cluster is what the engine needs to know about a cluster: namespaces, nodes and pods.
type Cluster struct {
	// Name is the Cilium cluster name, "default" when empty.
	Name       string      `json:"name,omitempty"`
	Namespaces []Namespace `json:"namespaces,omitempty"`
	Nodes      []Node      `json:"nodes,omitempty"`
	Endpoints  []Endpoint  `json:"pods,omitempty"`
}

// Namespace is a namespace and its labels. The API server's kubernetes.io/metadata.name label is
// implied.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Node is a cluster node. Its addresses carry the host identity on the node itself and the
// remote-node identity everywhere else.
type Node struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	IPs    []netip.Addr      `json:"ips,omitempty"`
}

// Endpoint is a pod.
type Endpoint struct {
	Namespace      string            `json:"namespace"`
	Name           string            `json:"name"`
	Labels         map[string]string `json:"labels,omitempty"`
	ServiceAccount string            `json:"serviceAccount,omitempty"`
	IPs            []netip.Addr      `json:"ips,omitempty"`
	Ports          []NamedPort       `json:"ports,omitempty"`
	Node           string            `json:"node,omitempty"`
}

// NamedPort is a container port of a pod; Name may be empty.
type NamedPort struct {
	Name     string `json:"name,omitempty"`
	Port     uint16 `json:"port"`
	Protocol Proto  `json:"protocol"`
}

// EndpointKey identifies a pod.
type EndpointKey struct{ Namespace, Name string }

func (k EndpointKey) String() string { return k.Namespace + "/" + k.Name }

func (ep *Endpoint) Key() EndpointKey { return EndpointKey{ep.Namespace, ep.Name} }

// portsSignature is a canonical form of an endpoint's named ports.
func portsSignature(ports []NamedPort) string {
	parts := make([]string, 0, len(ports))
	for _, p := range ports {
		if p.Name != "" {
			parts = append(parts, fmt.Sprintf("%s/%d/%d", p.Name, p.Protocol, p.Port))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// Validate checks that names are unique and that every pod's namespace and node exist.
func (c *Cluster) Validate() error {
	var problems []string
	nss := map[string]bool{}
	for _, ns := range c.Namespaces {
		if ns.Name == "" {
			problems = append(problems, "a namespace has no name")
		}
		if nss[ns.Name] {
			problems = append(problems, fmt.Sprintf("namespace %q is listed twice", ns.Name))
		}
		nss[ns.Name] = true
	}
	nodes := map[string]bool{}
	for _, n := range c.Nodes {
		if nodes[n.Name] {
			problems = append(problems, fmt.Sprintf("node %q is listed twice", n.Name))
		}
		nodes[n.Name] = true
	}
	ips := map[netip.Addr]string{}
	claim := func(ip netip.Addr, owner string) {
		if prev, ok := ips[ip]; ok {
			problems = append(problems, fmt.Sprintf("address %s is used by both %s and %s", ip, prev, owner))
		}
		ips[ip] = owner
	}
	for _, n := range c.Nodes {
		for _, ip := range n.IPs {
			claim(ip, "node "+n.Name)
		}
	}
	eps := map[EndpointKey]bool{}
	for _, ep := range c.Endpoints {
		k := ep.Key()
		if ep.Name == "" {
			problems = append(problems, fmt.Sprintf("a pod in namespace %q has no name", ep.Namespace))
		}
		if eps[k] {
			problems = append(problems, fmt.Sprintf("pod %s is listed twice", k))
		}
		eps[k] = true
		if !nss[ep.Namespace] {
			problems = append(problems, fmt.Sprintf("pod %s is in namespace %q, which is not listed", k, ep.Namespace))
		}
		if ep.Node != "" && !nodes[ep.Node] {
			problems = append(problems, fmt.Sprintf("pod %s is on node %q, which is not listed", k, ep.Node))
		}
		for _, ip := range ep.IPs {
			claim(ip, "pod "+k.String())
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid cluster: %s", strings.Join(problems, "; "))
	}
	return nil
}
