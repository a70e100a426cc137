package policy

import "fmt"

// DNSVerdict is the judgement of one DNS query on a flow to a DNS server: allowed or not, the
// side whose rules decided (the source's egress: DNS rules exist only there), the rule (its
// policy section) and the index of the DNS rule that matched (-1: none did, or no DNS rule
// applies).
type DNSVerdict struct {
	Allowed   bool
	Direction Direction
	Rule      *RuleInfo
	Index     int
	// Reason says why, when no DNS rule matched or L3/L4 refuses the flow.
	Reason string
	// Unreachable, for a query the source's egress rules allow, says why the server's ingress
	// policy drops what the proxy forwards: the query then goes unanswered (upstream timeout).
	Unreachable string
}

// MatchDNS judges a query name (any case, with or without its trailing dot) on the decided flow
// from a pod to a DNS server, as Cilium's DNS proxy does: a flow the source's egress hands to the
// proxy allows the names its DNS rules match (the rule's L3 peer selecting the server is already
// part of the decision); a flow allowed without an L7 rule allows every name, as a port rule
// without dns rules does; a flow L3/L4 refuses allows no name.
func (d Decision) MatchDNS(qname string) DNSVerdict {
	switch d.Outcome {
	case OutcomeDenied, OutcomeDefaultDenied:
		if egress, ok := d.egressProxied(ParserDNS); ok {
			v := egress.MatchDNS(qname)
			if v.Allowed {
				v.Unreachable = d.Reason()
			}
			return v
		}
		return DNSVerdict{Direction: d.Direction, Rule: d.Rule, Index: -1, Reason: d.Reason()}
	}
	eg := d.Egress
	if eg == nil || eg.Outcome != OutcomeL7 || eg.Match.Entry == nil {
		return DNSVerdict{Allowed: true, Direction: d.Direction, Rule: d.Rule, Index: -1}
	}
	rule := d.rules[eg.Match.Entry.Rules[0]]
	ok, idx := eg.Match.Entry.L7.MatchDNS(qname)
	if !ok {
		return DNSVerdict{Direction: Egress, Rule: rule, Index: -1,
			Reason: fmt.Sprintf("no DNS rule of %s on %s matches %s", rule, Egress, FQDN(qname))}
	}
	return DNSVerdict{Allowed: true, Direction: Egress, Rule: rule, Index: idx}
}

// egressProxied is, for a flow the destination's ingress refuses though the source's egress
// hands it to its node's proxy, the decision as the source's egress alone makes it: the proxy
// judges by the source's rules (as Cilium's egress proxy does), and the destination's datapath
// drops what it forwards. parser is the proxy asking.
func (d Decision) egressProxied(parser L7Parser) (Decision, bool) {
	if d.Direction != Ingress || d.Egress.Proxy() != parser {
		return d, false
	}
	egress := d
	egress.Outcome, egress.Direction, egress.Ingress = OutcomeL7, Egress, nil
	return egress, true
}
