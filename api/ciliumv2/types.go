// +groupName=cilium.io
// +versionName=v2

// Package ciliumv2 holds Go types for the cilium.io/v2 policy kinds netpact accepts:
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy. The field names and JSON shape follow
// Cilium's CRD schema so that policy YAML is read unchanged; the package does not import Cilium.
//
// A few fields Cilium knows but netpact does not implement yet (toServices, toGroups, toNodes,
// fromRequires, authentication, TLS interception, ...) are declared so that the strict loader
// recognises them and the validator can refuse them by name instead of failing open.
package ciliumv2

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// GroupVersion is the apiVersion of both kinds.
const GroupVersion = "cilium.io/v2"

const (
	KindCiliumNetworkPolicy            = "CiliumNetworkPolicy"
	KindCiliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy"
)

// CiliumNetworkPolicy is a namespaced Cilium policy: one rule in spec, more in specs.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Namespaced,shortName=cnp;ciliumnp,categories=cilium;ciliumpolicy,singular=ciliumnetworkpolicy
// +kubebuilder:subresource:status
// +kubebuilder:storageversion
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type CiliumNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *Rule  `json:"spec,omitempty"`
	Specs             []Rule `json:"specs,omitempty"`
	// Status is written by Cilium's agents; netpact ignores it when it is present in Git.
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Status map[string]any `json:"status,omitempty"`
}

// CiliumClusterwideNetworkPolicy has the same shape as CiliumNetworkPolicy without a namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ccnp,categories=cilium;ciliumpolicy,singular=ciliumclusterwidenetworkpolicy
// +kubebuilder:subresource:status
// +kubebuilder:storageversion
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=".metadata.creationTimestamp"
type CiliumClusterwideNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *Rule  `json:"spec,omitempty"`
	Specs             []Rule `json:"specs,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Status map[string]any `json:"status,omitempty"`
}

// Rule is one policy rule: a subject (endpointSelector or nodeSelector) and its sections.
type Rule struct {
	EndpointSelector  *EndpointSelector  `json:"endpointSelector,omitempty"`
	NodeSelector      *EndpointSelector  `json:"nodeSelector,omitempty"`
	Ingress           []IngressRule      `json:"ingress,omitempty"`
	IngressDeny       []IngressRule      `json:"ingressDeny,omitempty"`
	Egress            []EgressRule       `json:"egress,omitempty"`
	EgressDeny        []EgressRule       `json:"egressDeny,omitempty"`
	Labels            []Label            `json:"labels,omitempty"`
	EnableDefaultDeny *DefaultDenyConfig `json:"enableDefaultDeny,omitempty"`
	Description       string             `json:"description,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Log map[string]any `json:"log,omitempty"`
}

// EndpointSelector is a Kubernetes label selector whose keys may carry a Cilium source prefix
// ("k8s:", "reserved:", "any:").
type EndpointSelector struct {
	MatchLabels      map[string]string                 `json:"matchLabels,omitempty"`
	MatchExpressions []metav1.LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// Label is an entry of a rule's labels list.
type Label struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Source string `json:"source,omitempty"`
}

// DefaultDenyConfig says per direction whether a rule switches its subjects to default deny.
// Absent means true for a direction the rule has sections for.
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// IngressRule is used for both ingress and ingressDeny; the validator rejects the fields a deny
// rule may not carry (L7 rules) with a message naming them.
type IngressRule struct {
	FromEndpoints []EndpointSelector `json:"fromEndpoints,omitempty"`
	FromRequires  []EndpointSelector `json:"fromRequires,omitempty"`
	FromCIDR      []string           `json:"fromCIDR,omitempty"`
	FromCIDRSet   []CIDRRule         `json:"fromCIDRSet,omitempty"`
	FromEntities  []string           `json:"fromEntities,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	FromGroups []map[string]any   `json:"fromGroups,omitempty"`
	FromNodes  []EndpointSelector `json:"fromNodes,omitempty"`
	ToPorts    []PortRule         `json:"toPorts,omitempty"`
	ICMPs      []ICMPRule         `json:"icmps,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Authentication map[string]any `json:"authentication,omitempty"`
}

// EgressRule is used for both egress and egressDeny.
type EgressRule struct {
	ToEndpoints []EndpointSelector `json:"toEndpoints,omitempty"`
	ToRequires  []EndpointSelector `json:"toRequires,omitempty"`
	ToCIDR      []string           `json:"toCIDR,omitempty"`
	ToCIDRSet   []CIDRRule         `json:"toCIDRSet,omitempty"`
	ToEntities  []string           `json:"toEntities,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	ToServices []map[string]any `json:"toServices,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	ToGroups []map[string]any   `json:"toGroups,omitempty"`
	ToNodes  []EndpointSelector `json:"toNodes,omitempty"`
	ToFQDNs  []FQDNSelector     `json:"toFQDNs,omitempty"`
	ToPorts  []PortRule         `json:"toPorts,omitempty"`
	ICMPs    []ICMPRule         `json:"icmps,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Authentication map[string]any `json:"authentication,omitempty"`
}

// CIDRRule is a CIDR with exceptions.
type CIDRRule struct {
	CIDR              string            `json:"cidr,omitempty"`
	CIDRGroupRef      string            `json:"cidrGroupRef,omitempty"`
	CIDRGroupSelector *EndpointSelector `json:"cidrGroupSelector,omitempty"`
	ExceptCIDRs       []string          `json:"except,omitempty"`
}

// PortRule lists L4 ports and, optionally, L7 rules for them.
type PortRule struct {
	Ports []PortProtocol `json:"ports,omitempty"`
	Rules *L7Rules       `json:"rules,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	TerminatingTLS map[string]any `json:"terminatingTLS,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	OriginatingTLS map[string]any `json:"originatingTLS,omitempty"`
	ServerNames    []string       `json:"serverNames,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Listener map[string]any `json:"listener,omitempty"`
}

// PortProtocol is a port (number or name; "0" or empty for all), an optional inclusive end
// port, and a protocol (TCP, UDP, SCTP, ICMP, ICMPV6 or ANY; empty means ANY).
type PortProtocol struct {
	Port     string `json:"port,omitempty"`
	EndPort  int32  `json:"endPort,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// L7Rules holds the application-level rules of a port rule; at most one kind may be set.
type L7Rules struct {
	HTTP    []PortRuleHTTP  `json:"http,omitempty"`
	Kafka   []PortRuleKafka `json:"kafka,omitempty"`
	DNS     []PortRuleDNS   `json:"dns,omitempty"`
	L7Proto string          `json:"l7proto,omitempty"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	L7 []map[string]any `json:"l7,omitempty"`
}

// PortRuleHTTP matches HTTP requests; Path, Method and Host are extended POSIX regular expressions.
type PortRuleHTTP struct {
	Path          string        `json:"path,omitempty"`
	Method        string        `json:"method,omitempty"`
	Host          string        `json:"host,omitempty"`
	Headers       []string      `json:"headers,omitempty"`
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch requires an HTTP header to have a value.
type HeaderMatch struct {
	Mismatch string `json:"mismatch,omitempty"`
	Name     string `json:"name"`
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	Secret map[string]any `json:"secret,omitempty"`
	Value  string         `json:"value,omitempty"`
}

// PortRuleKafka matches Kafka requests.
type PortRuleKafka struct {
	Role       string `json:"role,omitempty"`
	APIKey     string `json:"apiKey,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
	ClientID   string `json:"clientID,omitempty"`
	Topic      string `json:"topic,omitempty"`
}

// PortRuleDNS matches DNS queries by name or pattern ("*" matches within a label).
type PortRuleDNS struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// FQDNSelector selects destinations by DNS name learned from DNS answers.
type FQDNSelector struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// ICMPRule lists ICMP types.
type ICMPRule struct {
	Fields []ICMPField `json:"fields,omitempty"`
}

// ICMPField is one ICMP type; Type is a number or a name such as EchoRequest.
type ICMPField struct {
	Family string   `json:"family,omitempty"`
	Type   ICMPType `json:"type"`
}

// ICMPType is an ICMP type given as a number or as a name (EchoRequest, ...).
type ICMPType = intstr.IntOrString
