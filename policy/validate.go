package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/netpact/netpact/api/ciliumv2"
)

// pathErr is a validation problem at a field path of a policy.
type pathErr struct{ path, msg string }

type validator struct {
	errs []pathErr
	// warns are what is valid but will not be enforced as it reads.
	warns []pathErr
	// notes are what is enforced as written, but deserves saying (Kafka rules' semantics).
	notes []pathErr
	named map[netip.Prefix]bool // the distinct CIDRs the policy names so far
	// httpRules counts the policy's HTTP rules so far.
	httpRules int
}

// MaxHTTPRulesPerPolicy and MaxHTTPExpression bound what the L7 proxy matches each request
// against: a policy's HTTP rules, and the length of each method, path and host expression.
const (
	MaxHTTPRulesPerPolicy = 1024
	MaxHTTPExpression     = 4096
)

// MaxCIDRsPerPolicy bounds the distinct CIDRs (except CIDRs included) one policy may name. Each is
// an identity in the ipcache (65,536 entries) of every node where the policy is enforced, and at
// least one entry in the maps of each pod it selects, which hold 16,384 (Cilium's default
// bpf-policy-map-max): a policy with more could never be enforced whole.
const MaxCIDRsPerPolicy = 16384

// countCIDR notes a CIDR the policy names; the first one past MaxCIDRsPerPolicy is an error at
// its field.
func (v *validator) countCIDR(p netip.Prefix, path string) {
	if v.named == nil {
		v.named = map[netip.Prefix]bool{}
	}
	if v.named[p] {
		return
	}
	v.named[p] = true
	if len(v.named) == MaxCIDRsPerPolicy+1 {
		v.add(path, "the policy's CIDR number %d: a policy may name at most %d distinct CIDRs (each takes an entry in the ipcache of every node that enforces it, and in the policy map of each pod it selects); split the list, or use wider prefixes", MaxCIDRsPerPolicy+1, MaxCIDRsPerPolicy)
	}
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, pathErr{path: path, msg: fmt.Sprintf(format, args...)})
}

func (v *validator) warn(path, format string, args ...any) {
	v.warns = append(v.warns, pathErr{path: path, msg: fmt.Sprintf(format, args...)})
}

func (v *validator) note(path, format string, args ...any) {
	v.notes = append(v.notes, pathErr{path: path, msg: fmt.Sprintf(format, args...)})
}

// validatePolicy rejects what Cilium's agent and the Kubernetes API server reject, so that a
// bundle netpact accepts is one the cluster accepts too, and one that does not fail open. The
// warnings are what it accepts but does not enforce as written.
func validatePolicy(p *Policy) (errs, warns, notes []pathErr) {
	v := &validator{}
	if p.Name == "" {
		v.add("metadata.name", "missing name")
	} else {
		for _, m := range validation.IsDNS1123Subdomain(p.Name) {
			v.add("metadata.name", "invalid name %q: %s", p.Name, m)
		}
	}
	if p.Namespace != "" {
		for _, m := range validation.IsDNS1123Label(p.Namespace) {
			v.add("metadata.namespace", "invalid namespace %q: %s", p.Namespace, m)
		}
	}
	if p.KNP != nil {
		v.knp(p.KNP)
	} else {
		if len(p.Cilium) == 0 {
			v.add("spec", "the policy has neither spec nor specs")
		}
		for i := range p.Cilium {
			v.ciliumRule(&p.Cilium[i], p.rulePath(i), p.Kind)
		}
	}
	if p.Audit {
		v.warn("metadata.annotations", "%s", auditModeWarning)
	}
	p.CIDRs = len(v.named)
	return v.errs, v.warns, v.notes
}

// MaxCIDRsPerNamespace bounds the CIDRs the policies of one namespace name together (each
// policy's distinct CIDRs, summed; cluster-wide policies count as one namespace): half of a
// node's ipcache, so that one tenant cannot fill it for the others.
const MaxCIDRsPerNamespace = 32768

// checkNamespaceBudgets refuses, at the policy that crosses it, a namespace whose policies
// name more CIDRs than MaxCIDRsPerNamespace.
func (l *loader) checkNamespaceBudgets() {
	sum := map[string]int{}
	for _, p := range l.bundle.Policies {
		before := sum[p.Namespace]
		sum[p.Namespace] += p.CIDRs
		if before <= MaxCIDRsPerNamespace && sum[p.Namespace] > MaxCIDRsPerNamespace {
			at := p.position("spec")
			l.fail(p.Source.File, at.Line, at.Column, p.Key.String(), "spec", "%s", NamespaceBudgetError(p.Namespace, before, p.CIDRs))
		}
	}
}

// NamespaceBudgetError says why a policy naming n CIDRs does not fit beside the others of its
// namespace, which name before.
func NamespaceBudgetError(namespace string, before, n int) string {
	where := "namespace " + namespace
	if namespace == "" {
		where = "the cluster-wide policies"
	}
	return fmt.Sprintf("%s would name %d CIDRs with this policy's %d, more than the %d a namespace may (half a node's ipcache): move CIDR lists into fewer, wider prefixes", where, before+n, n, MaxCIDRsPerNamespace)
}

func (v *validator) ciliumRule(r *ciliumv2.Rule, path string, kind Kind) {
	host := r.NodeSelector != nil
	switch {
	case r.EndpointSelector != nil && r.NodeSelector != nil:
		v.add(path+".nodeSelector", "a rule takes either endpointSelector or nodeSelector, not both")
	case r.EndpointSelector == nil && r.NodeSelector == nil:
		v.add(path, "a rule needs endpointSelector (pods) or nodeSelector (nodes)")
	case host && kind == KindCNP:
		v.add(path+".nodeSelector", "nodeSelector (a host policy) is only allowed in a CiliumClusterwideNetworkPolicy")
	}
	if r.EndpointSelector != nil {
		v.selector(r.EndpointSelector, path+".endpointSelector")
	}
	if r.NodeSelector != nil {
		v.selector(r.NodeSelector, path+".nodeSelector")
	}
	if len(r.Ingress) == 0 && len(r.IngressDeny) == 0 && len(r.Egress) == 0 && len(r.EgressDeny) == 0 {
		v.add(path, "the rule has no ingress, ingressDeny, egress or egressDeny section, so it would do nothing")
	}
	for i, l := range r.Labels {
		if l.Key == "" {
			v.add(fmt.Sprintf("%s.labels[%d].key", path, i), "missing label key")
		}
	}
	if r.Log != nil {
		v.add(path+".log", "policy logging is not supported by netpact; remove log")
	}
	for i := range r.Ingress {
		v.ingressRule(&r.Ingress[i], fmt.Sprintf("%s.ingress[%d]", path, i), false, host)
	}
	for i := range r.IngressDeny {
		v.ingressRule(&r.IngressDeny[i], fmt.Sprintf("%s.ingressDeny[%d]", path, i), true, host)
	}
	for i := range r.Egress {
		v.egressRule(&r.Egress[i], fmt.Sprintf("%s.egress[%d]", path, i), false, host)
	}
	for i := range r.EgressDeny {
		v.egressRule(&r.EgressDeny[i], fmt.Sprintf("%s.egressDeny[%d]", path, i), true, host)
	}
}

// l3Kinds names the peer fields a rule sets; Cilium refuses rules that combine two of them.
func (v *validator) l3Kinds(path string, kinds []string) {
	if len(kinds) > 1 {
		v.add(path+"."+kinds[1], "%s cannot be combined with %s in one rule; write two rules", kinds[1], kinds[0])
	}
}

func (v *validator) unsupported(path, field, why string) {
	v.add(path+"."+field, "%s is not supported by netpact yet%s; the rule would not be enforced as written", field, why)
}

func (v *validator) ingressRule(r *ciliumv2.IngressRule, path string, deny, host bool) {
	var kinds []string
	if r.FromEndpoints != nil {
		kinds = append(kinds, "fromEndpoints")
	}
	if r.FromCIDR != nil {
		kinds = append(kinds, "fromCIDR")
	}
	if r.FromCIDRSet != nil {
		kinds = append(kinds, "fromCIDRSet")
	}
	if r.FromEntities != nil {
		kinds = append(kinds, "fromEntities")
	}
	if r.FromNodes != nil {
		kinds = append(kinds, "fromNodes")
	}
	if r.FromGroups != nil {
		kinds = append(kinds, "fromGroups")
	}
	v.l3Kinds(path, kinds)
	if r.FromRequires != nil {
		v.unsupported(path, "fromRequires", " (deprecated in Cilium)")
	}
	if r.FromNodes != nil {
		v.unsupported(path, "fromNodes", "; use fromEntities: [host, remote-node]")
	}
	if r.FromGroups != nil {
		v.unsupported(path, "fromGroups", "")
	}
	if r.Authentication != nil {
		v.unsupported(path, "authentication", "")
	}
	for i := range r.FromEndpoints {
		v.selector(&r.FromEndpoints[i], fmt.Sprintf("%s.fromEndpoints[%d]", path, i))
	}
	v.cidrs(r.FromCIDR, r.FromCIDRSet, path, "fromCIDR", "fromCIDRSet")
	v.entities(r.FromEntities, path+".fromEntities")
	v.ports(r.ToPorts, r.ICMPs, path, true, deny, host)
}

func (v *validator) egressRule(r *ciliumv2.EgressRule, path string, deny, host bool) {
	var kinds []string
	if r.ToEndpoints != nil {
		kinds = append(kinds, "toEndpoints")
	}
	if r.ToCIDR != nil {
		kinds = append(kinds, "toCIDR")
	}
	if r.ToCIDRSet != nil {
		kinds = append(kinds, "toCIDRSet")
	}
	if r.ToEntities != nil {
		kinds = append(kinds, "toEntities")
	}
	if r.ToServices != nil {
		kinds = append(kinds, "toServices")
	}
	if r.ToFQDNs != nil {
		kinds = append(kinds, "toFQDNs")
	}
	if r.ToNodes != nil {
		kinds = append(kinds, "toNodes")
	}
	if r.ToGroups != nil {
		kinds = append(kinds, "toGroups")
	}
	v.l3Kinds(path, kinds)
	if r.ToRequires != nil {
		v.unsupported(path, "toRequires", " (deprecated in Cilium)")
	}
	if r.ToServices != nil {
		v.unsupported(path, "toServices", "; select the service's pods with toEndpoints")
	}
	if r.ToNodes != nil {
		v.unsupported(path, "toNodes", "; use toEntities: [host, remote-node]")
	}
	if r.ToGroups != nil {
		v.unsupported(path, "toGroups", "")
	}
	if r.Authentication != nil {
		v.unsupported(path, "authentication", "")
	}
	for i := range r.ToEndpoints {
		v.selector(&r.ToEndpoints[i], fmt.Sprintf("%s.toEndpoints[%d]", path, i))
	}
	v.cidrs(r.ToCIDR, r.ToCIDRSet, path, "toCIDR", "toCIDRSet")
	v.entities(r.ToEntities, path+".toEntities")
	if r.ToFQDNs != nil && deny {
		v.add(path+".toFQDNs", "toFQDNs is not allowed in deny rules (Cilium cannot deny by DNS name)")
	}
	for i, f := range r.ToFQDNs {
		v.fqdn(f.MatchName, f.MatchPattern, fmt.Sprintf("%s.toFQDNs[%d]", path, i))
	}
	v.ports(r.ToPorts, r.ICMPs, path, false, deny, host)
}

// selector validates a Cilium endpoint selector; keys may carry a source prefix.
func (v *validator) selector(s *ciliumv2.EndpointSelector, path string) {
	for k, val := range s.MatchLabels {
		v.labelKey(k, path+".matchLabels."+k)
		for _, m := range validation.IsValidLabelValue(val) {
			v.add(path+".matchLabels."+k, "invalid label value %q: %s", val, m)
		}
	}
	v.requirements(s.MatchExpressions, path, true)
}

func (v *validator) labelKey(k, path string) {
	_, key := splitSource(k)
	if key == "" {
		v.add(path, "empty label key")
		return
	}
	for _, m := range validation.IsQualifiedName(key) {
		v.add(path, "invalid label key %q: %s", k, m)
	}
}

func (v *validator) requirements(reqs []metav1.LabelSelectorRequirement, path string, sourcePrefix bool) {
	for i, r := range reqs {
		rp := fmt.Sprintf("%s.matchExpressions[%d]", path, i)
		if sourcePrefix {
			v.labelKey(r.Key, rp+".key")
		} else {
			for _, m := range validation.IsQualifiedName(r.Key) {
				v.add(rp+".key", "invalid label key %q: %s", r.Key, m)
			}
		}
		switch r.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(r.Values) == 0 {
				v.add(rp+".values", "operator %s needs at least one value", r.Operator)
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(r.Values) > 0 {
				v.add(rp+".values", "operator %s takes no values", r.Operator)
			}
		default:
			v.add(rp+".operator", "unknown operator %q: use In, NotIn, Exists or DoesNotExist", r.Operator)
		}
		for j, val := range r.Values {
			for _, m := range validation.IsValidLabelValue(val) {
				v.add(fmt.Sprintf("%s.values[%d]", rp, j), "invalid label value %q: %s", val, m)
			}
		}
	}
}

func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: write an address and a prefix length, like 10.0.0.0/8", s)
	}
	return p.Masked(), nil
}

func (v *validator) cidrs(plain []string, sets []ciliumv2.CIDRRule, path, plainField, setField string) {
	for i, c := range plain {
		p, err := parseCIDR(c)
		if err != nil {
			v.add(fmt.Sprintf("%s.%s[%d]", path, plainField, i), "%v", err)
			continue
		}
		v.countCIDR(p, fmt.Sprintf("%s.%s[%d]", path, plainField, i))
	}
	for i, s := range sets {
		sp := fmt.Sprintf("%s.%s[%d]", path, setField, i)
		if s.CIDRGroupRef != "" || s.CIDRGroupSelector != nil {
			v.add(sp, "CiliumCIDRGroup references are not supported by netpact yet; write the CIDRs inline")
			continue
		}
		if s.CIDR == "" {
			v.add(sp+".cidr", "missing cidr")
			continue
		}
		outer, err := parseCIDR(s.CIDR)
		if err != nil {
			v.add(sp+".cidr", "%v", err)
			continue
		}
		v.countCIDR(outer, sp+".cidr")
		v.excepts(outer, s.ExceptCIDRs, sp+".except", false)
	}
}

// excepts checks that each exception lies inside its CIDR (strictly inside, for Kubernetes).
func (v *validator) excepts(outer netip.Prefix, except []string, path string, strict bool) {
	for j, e := range except {
		ep := fmt.Sprintf("%s[%d]", path, j)
		in, err := parseCIDR(e)
		if err != nil {
			v.add(ep, "%v", err)
			continue
		}
		v.countCIDR(in, ep)
		if in.Addr().Is4() != outer.Addr().Is4() || in.Bits() < outer.Bits() || !outer.Contains(in.Addr()) {
			v.add(ep, "except %s is not inside cidr %s", e, outer)
		} else if strict && in.Bits() == outer.Bits() {
			v.add(ep, "except %s must be strictly smaller than cidr %s", e, outer)
		}
	}
}

// entities are the names Cilium accepts in from/toEntities.
var entities = map[string]bool{
	"all": true, "world": true, "world-ipv4": true, "world-ipv6": true, "cluster": true, "host": true,
	"remote-node": true, "kube-apiserver": true, "health": true, "init": true, "ingress": true,
	"unmanaged": true, "none": true,
}

func (v *validator) entities(es []string, path string) {
	for i, e := range es {
		if !entities[e] {
			v.add(fmt.Sprintf("%s[%d]", path, i), "unknown entity %q: use world, cluster, host, remote-node, kube-apiserver, health, init, ingress, unmanaged or all", e)
		}
	}
}

var (
	dnsNameRE    = regexp.MustCompile(`^[-a-zA-Z0-9_.]+$`)
	dnsPatternRE = regexp.MustCompile(`^[-a-zA-Z0-9_.*]+$`)
)

func (v *validator) fqdn(name, pattern, path string) {
	switch {
	case name == "" && pattern == "":
		v.add(path, "needs matchName or matchPattern")
	case name != "" && pattern != "":
		v.add(path+".matchPattern", "matchName and matchPattern cannot both be set")
	case name != "" && !dnsNameRE.MatchString(name):
		v.add(path+".matchName", "invalid DNS name %q: only letters, digits, '-', '_' and '.' are allowed", name)
	case pattern != "" && !dnsPatternRE.MatchString(pattern):
		v.add(path+".matchPattern", "invalid DNS pattern %q: only letters, digits, '-', '_', '.' and '*' are allowed", pattern)
	}
}

// protocols Cilium accepts in toPorts.
var ciliumProtocols = map[string]Proto{
	"": ProtoAny, "ANY": ProtoAny, "TCP": ProtoTCP, "UDP": ProtoUDP, "SCTP": ProtoSCTP,
	"ICMP": ProtoICMP, "ICMPV6": ProtoICMPv6,
}

func (v *validator) ports(prs []ciliumv2.PortRule, icmps []ciliumv2.ICMPRule, path string, ingress, deny, host bool) {
	if len(prs) > 0 && len(icmps) > 0 {
		v.add(path+".icmps", "icmps cannot be combined with toPorts in one rule; write two rules")
	}
	for i, pr := range prs {
		pp := fmt.Sprintf("%s.toPorts[%d]", path, i)
		if pr.TerminatingTLS != nil || pr.OriginatingTLS != nil {
			v.add(pp, "TLS interception is not supported by netpact yet")
		}
		if pr.ServerNames != nil {
			v.unsupported(pp, "serverNames", "")
		}
		if pr.Listener != nil {
			v.unsupported(pp, "listener", "")
		}
		for j, port := range pr.Ports {
			v.portProtocol(port, fmt.Sprintf("%s.ports[%d]", pp, j))
		}
		if pr.Rules != nil {
			v.l7(pr, pp, ingress, deny, host)
		}
	}
	for i, ir := range icmps {
		for j, f := range ir.Fields {
			fp := fmt.Sprintf("%s.icmps[%d].fields[%d]", path, i, j)
			if _, _, err := icmpType(f); err != nil {
				v.add(fp, "%v", err)
			}
		}
	}
}

func (v *validator) portProtocol(p ciliumv2.PortProtocol, path string) {
	if _, ok := ciliumProtocols[p.Protocol]; !ok {
		v.add(path+".protocol", "unknown protocol %q: use TCP, UDP, SCTP, ICMP, ICMPV6 or ANY (upper case)", p.Protocol)
	}
	num, named, err := parsePortString(p.Port)
	if err != nil {
		v.add(path+".port", "%v", err)
		return
	}
	if p.EndPort != 0 {
		switch {
		case named:
			v.add(path+".endPort", "endPort cannot be used with the named port %q", p.Port)
		case p.EndPort < 0 || p.EndPort > 65535:
			v.add(path+".endPort", "endPort %d is out of range 1-65535", p.EndPort)
		case num == 0:
			v.add(path+".endPort", "endPort needs a port to start the range")
		case int(p.EndPort) < num:
			v.add(path+".endPort", "endPort %d is smaller than port %d", p.EndPort, num)
		}
	}
}

// parsePortString reads a Cilium port: empty or "0" for all ports, a number, or a port name.
func parsePortString(s string) (num int, named bool, err error) {
	if s == "" {
		return 0, false, nil
	}
	if n, convErr := strconv.Atoi(s); convErr == nil {
		if n < 0 || n > 65535 {
			return 0, false, fmt.Errorf("port %d is out of range 0-65535", n)
		}
		return n, false, nil
	}
	if msgs := validation.IsValidPortName(s); len(msgs) > 0 {
		return 0, false, fmt.Errorf("port %q is neither a number nor a valid port name: %s", s, msgs[0])
	}
	return 0, true, nil
}

func (v *validator) l7(pr ciliumv2.PortRule, path string, ingress, deny, host bool) {
	r := pr.Rules
	rp := path + ".rules"
	kinds := l7Kinds(r)
	if len(kinds) > 1 {
		v.add(rp+"."+kinds[1], "a port rule takes one kind of L7 rules, not both %s and %s", kinds[0], kinds[1])
	}
	if deny {
		v.add(rp, "L7 rules are not allowed in deny rules (deny rules work at L3/L4 only)")
		return
	}
	if len(kinds) == 0 {
		return
	}
	kind := kinds[0]
	if kind == "l7proto" {
		v.add(rp+".l7proto", "generic L7 parsers (l7proto) are not supported by netpact")
		return
	}
	if host && (kind == "http" || kind == "kafka") {
		v.add(rp+"."+kind, "%s rules are not allowed in host policies (nodeSelector)", strings.ToUpper(kind))
	}
	if kind == "dns" && ingress {
		v.add(rp+".dns", "DNS rules are only allowed in egress rules")
	}
	v.l7Ports(pr.Ports, path, kind)
	for i, h := range r.HTTP {
		v.httpRule(h, fmt.Sprintf("%s.http[%d]", rp, i))
	}
	for i, k := range r.Kafka {
		v.kafkaRule(k, fmt.Sprintf("%s.kafka[%d]", rp, i))
	}
	if kind == "kafka" {
		v.note(rp+".kafka", "%s", kafkaSemantics)
	}
	for i, d := range r.DNS {
		v.fqdn(d.MatchName, d.MatchPattern, fmt.Sprintf("%s.dns[%d]", rp, i))
	}
}

// l7Kinds are the kinds of L7 rules a port rule has, in the order they are reported.
func l7Kinds(r *ciliumv2.L7Rules) []string {
	var kinds []string
	if r.HTTP != nil {
		kinds = append(kinds, "http")
	}
	if r.Kafka != nil {
		kinds = append(kinds, "kafka")
	}
	if r.DNS != nil {
		kinds = append(kinds, "dns")
	}
	if r.L7Proto != "" || r.L7 != nil {
		kinds = append(kinds, "l7proto")
	}
	return kinds
}

// l7Ports checks the ports of a port rule with L7 rules of kind: each one explicit port of a
// protocol the kind's proxy speaks.
func (v *validator) l7Ports(ports []ciliumv2.PortProtocol, path, kind string) {
	if len(ports) == 0 {
		v.add(path+".ports", "L7 rules need an explicit port")
	}
	for j, port := range ports {
		pp := fmt.Sprintf("%s.ports[%d]", path, j)
		if n, named, err := parsePortString(port.Port); err == nil && n == 0 && !named {
			v.add(pp+".port", "L7 rules need an explicit port, not all ports")
		}
		if port.EndPort != 0 {
			v.add(pp+".endPort", "L7 rules cannot be used with port ranges")
		}
		switch {
		case kind == "dns":
			if port.Protocol == "SCTP" || port.Protocol == "ICMP" || port.Protocol == "ICMPV6" {
				v.add(pp+".protocol", "DNS rules need protocol UDP, TCP or ANY, not %s", port.Protocol)
			}
		case port.Protocol != "TCP":
			proto := port.Protocol
			if proto == "" {
				proto = "ANY (the default)"
			}
			v.add(pp+".protocol", "%s rules need protocol TCP, not %s", strings.ToUpper(kind), proto)
		}
	}
}

func (v *validator) httpRule(h ciliumv2.PortRuleHTTP, hp string) {
	if v.httpRules++; v.httpRules == MaxHTTPRulesPerPolicy+1 {
		v.add(hp, "the policy's HTTP rule number %d: a policy may have at most %d (the proxy matches each request against every rule on its port)", MaxHTTPRulesPerPolicy+1, MaxHTTPRulesPerPolicy)
	}
	for _, field := range []string{"method", "path", "host"} {
		re := map[string]string{"path": h.Path, "method": h.Method, "host": h.Host}[field]
		if len(re) > MaxHTTPExpression {
			v.add(hp+"."+field, "a %d-byte expression: at most %d bytes", len(re), MaxHTTPExpression)
		} else if _, err := regexp.Compile(re); err != nil {
			v.add(hp+"."+field, "invalid regular expression %q: %v", re, err)
		}
	}
	for j, hm := range h.HeaderMatches {
		if hm.Name == "" {
			v.add(fmt.Sprintf("%s.headerMatches[%d].name", hp, j), "missing header name")
		}
		if hm.Secret != nil {
			v.add(fmt.Sprintf("%s.headerMatches[%d].secret", hp, j), "header secrets are not supported by netpact yet")
		}
		switch hm.Mismatch {
		case "", "LOG", "ADD", "DELETE", "REPLACE":
		default:
			v.add(fmt.Sprintf("%s.headerMatches[%d].mismatch", hp, j), "unknown mismatch action %q: use LOG, ADD, DELETE or REPLACE", hm.Mismatch)
		}
	}
}

func (v *validator) kafkaRule(k ciliumv2.PortRuleKafka, kp string) {
	switch role := strings.ToLower(k.Role); {
	case k.Role != "" && k.APIKey != "":
		v.add(kp+".apiKey", "role and apiKey cannot both be set")
	case k.Role != "" && role != "produce" && role != "consume":
		v.add(kp+".role", "unknown role %q: use produce or consume", k.Role)
	}
	if _, ok := KafkaAPIKeys[strings.ToLower(k.APIKey)]; k.APIKey != "" && !ok {
		v.add(kp+".apiKey", "unknown Kafka API key %q: use a name of Cilium's list, such as produce, fetch, metadata, apiversions or createtopics", k.APIKey)
	}
	if k.APIVersion != "" {
		if n, err := strconv.ParseInt(k.APIVersion, 10, 16); err != nil || n < 0 {
			v.add(kp+".apiVersion", "invalid Kafka API version %q: a decimal number from 0 to 32767", k.APIVersion)
		}
	}
	if len(k.Topic) > 255 || (k.Topic != "" && !kafkaTopicRE.MatchString(k.Topic)) {
		v.add(kp+".topic", "invalid Kafka topic %q: up to 255 letters, digits, '.', '_' and '-'", k.Topic)
	}
}

var kafkaTopicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

// auditModeWarning: netpact honours the audit annotations, which Cilium ignores: the same
// policy enforces on Cilium and does not on netpact, which must be said.
const auditModeWarning = "audit mode (" + AnnotationCiliumAudit + " or " + AnnotationAudit + " \"true\"): netpact reports this policy's denies, and the default deny only it switches on, as AUDIT and lets the traffic pass (netpact observe --verdict AUDIT); Cilium ignores the annotation and enforces the policy"

// kafkaSemantics is said of every Kafka rule: netpact enforces it as Cilium 1.19 did, and the
// Cilium that reads the same policy today does not have it.
const kafkaSemantics = "kafka rules follow Cilium 1.19's semantics (netpact's Kafka proxy judges each request; a denied one gets TOPIC_AUTHORIZATION_FAILED); Cilium 1.20 removed Kafka rules, and a Cilium 1.20 cluster refuses this field"

// knp applies the Kubernetes API server's NetworkPolicy validation.
func (v *validator) knp(np *networkingv1.NetworkPolicy) {
	v.k8sSelector(&np.Spec.PodSelector, "spec.podSelector")
	seen := map[networkingv1.PolicyType]bool{}
	for i, t := range np.Spec.PolicyTypes {
		p := fmt.Sprintf("spec.policyTypes[%d]", i)
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			v.add(p, "unknown policy type %q: use Ingress or Egress", t)
		}
		if seen[t] {
			v.add(p, "policy type %s is listed twice", t)
		}
		seen[t] = true
	}
	for i, r := range np.Spec.Ingress {
		p := fmt.Sprintf("spec.ingress[%d]", i)
		v.knpPorts(r.Ports, p)
		v.knpPeers(r.From, p+".from")
	}
	for i, r := range np.Spec.Egress {
		p := fmt.Sprintf("spec.egress[%d]", i)
		v.knpPorts(r.Ports, p)
		v.knpPeers(r.To, p+".to")
	}
}

func (v *validator) k8sSelector(s *metav1.LabelSelector, path string) {
	if s == nil {
		return
	}
	for k, val := range s.MatchLabels {
		for _, m := range validation.IsQualifiedName(k) {
			v.add(path+".matchLabels."+k, "invalid label key %q: %s", k, m)
		}
		for _, m := range validation.IsValidLabelValue(val) {
			v.add(path+".matchLabels."+k, "invalid label value %q: %s", val, m)
		}
	}
	v.requirements(s.MatchExpressions, path, false)
}

func (v *validator) knpPorts(ports []networkingv1.NetworkPolicyPort, path string) {
	for j, port := range ports {
		pp := fmt.Sprintf("%s.ports[%d]", path, j)
		if port.Protocol != nil {
			switch *port.Protocol {
			case "TCP", "UDP", "SCTP":
			default:
				v.add(pp+".protocol", "unknown protocol %q: use TCP, UDP or SCTP", *port.Protocol)
			}
		}
		if port.Port == nil {
			if port.EndPort != nil {
				v.add(pp+".endPort", "endPort needs port to start the range")
			}
			continue
		}
		if port.Port.Type == intstr.Int {
			if port.Port.IntVal < 1 || port.Port.IntVal > 65535 {
				v.add(pp+".port", "port %d is out of range 1-65535", port.Port.IntVal)
			}
		} else {
			for _, m := range validation.IsValidPortName(port.Port.StrVal) {
				v.add(pp+".port", "invalid port name %q: %s", port.Port.StrVal, m)
			}
		}
		if port.EndPort != nil {
			switch {
			case port.Port.Type == intstr.String:
				v.add(pp+".endPort", "endPort cannot be used with the named port %q", port.Port.StrVal)
			case *port.EndPort < 1 || *port.EndPort > 65535:
				v.add(pp+".endPort", "endPort %d is out of range 1-65535", *port.EndPort)
			case *port.EndPort < port.Port.IntVal:
				v.add(pp+".endPort", "endPort %d is smaller than port %d", *port.EndPort, port.Port.IntVal)
			}
		}
	}
}

func (v *validator) knpPeers(peers []networkingv1.NetworkPolicyPeer, path string) {
	for j, peer := range peers {
		pp := fmt.Sprintf("%s[%d]", path, j)
		hasSel := peer.PodSelector != nil || peer.NamespaceSelector != nil
		switch {
		case peer.IPBlock != nil && hasSel:
			v.add(pp+".ipBlock", "ipBlock cannot be combined with podSelector or namespaceSelector in one peer; write two peers")
		case peer.IPBlock == nil && !hasSel:
			v.add(pp, "a peer needs podSelector, namespaceSelector or ipBlock")
		}
		v.k8sSelector(peer.PodSelector, pp+".podSelector")
		v.k8sSelector(peer.NamespaceSelector, pp+".namespaceSelector")
		if peer.IPBlock != nil {
			outer, err := parseCIDR(peer.IPBlock.CIDR)
			if err != nil {
				v.add(pp+".ipBlock.cidr", "%v", err)
				continue
			}
			v.countCIDR(outer, pp+".ipBlock.cidr")
			v.excepts(outer, peer.IPBlock.Except, pp+".ipBlock.except", true)
		}
	}
}

// defaultPolicy applies the defaults the API server would have applied to a NetworkPolicy read
// straight from Git: policyTypes from the sections present, and protocol TCP.
func defaultPolicy(p *Policy) {
	np := p.KNP
	if np == nil {
		return
	}
	if len(np.Spec.PolicyTypes) == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
	defaultPorts := func(ports []networkingv1.NetworkPolicyPort) {
		for i := range ports {
			if ports[i].Protocol == nil {
				proto := corev1.ProtocolTCP
				ports[i].Protocol = &proto
			}
		}
	}
	for i := range np.Spec.Ingress {
		defaultPorts(np.Spec.Ingress[i].Ports)
	}
	for i := range np.Spec.Egress {
		defaultPorts(np.Spec.Egress[i].Ports)
	}
}
