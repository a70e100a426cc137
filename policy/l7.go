package policy

import (
	"fmt"
	"net/textproto"
	"regexp"
	"strings"
)

// L7Parser names an L7 proxy of the node: the one a flow whose entry has L7 rules goes to, by
// the kind of its rules.
type L7Parser string

const (
	ParserHTTP  L7Parser = "http"
	ParserDNS   L7Parser = "dns"
	ParserKafka L7Parser = "kafka"
)

// Parser is the proxy the rules' flows go to: Kafka and DNS rules each to their own, every other
// rule set (HTTP rules, or an empty list) to the HTTP proxy. The datapath routes by it too
// (datapath.ParserOf).
func (l *L7Policy) Parser() L7Parser {
	switch {
	case l != nil && len(l.Kafka) > 0:
		return ParserKafka
	case l != nil && len(l.DNS) > 0:
		return ParserDNS
	}
	return ParserHTTP
}

// Name is the parser as prose names it: HTTP, DNS, Kafka.
func (p L7Parser) Name() string {
	switch p {
	case ParserHTTP, ParserDNS:
		return strings.ToUpper(string(p))
	case ParserKafka:
		return "Kafka"
	}
	return string(p)
}

// outcome is the decision of a flow handed to the parser's proxy.
func (p L7Parser) outcome() Outcome {
	switch p {
	case ParserDNS:
		return OutcomeDNS
	case ParserKafka:
		return OutcomeKafka
	}
	return OutcomeL7
}

// HTTPRequest is what an HTTP rule is matched against: :method, :path (the request target,
// query included), :authority (the Host, with a port when the request has one) and headers.
type HTTPRequest struct {
	Method, Path, Host string
	// Header holds the request's headers by canonical name (net/http's http.Header has this shape).
	Header map[string][]string
}

// AllowsHTTP reports whether a request with this method and path, no Host and no headers, is
// allowed (what a scenario's HTTP probe predicts).
func (l *L7Policy) AllowsHTTP(method, path string) bool {
	ok, _ := l.MatchHTTP(HTTPRequest{Method: method, Path: path})
	return ok
}

// HeaderAction is what a headerMatch with a mismatch action does to a request whose header does
// not match: LOG (recorded with the request's L7 event), ADD (the value appended), DELETE (the
// header removed) or REPLACE (the header set to the value), as Cilium's
// CONTINUE/ADD/DELETE/REPLACE_ON_MISMATCH.
type HeaderAction struct {
	Action, Name, Value string
}

// MatchHTTP is Cilium's HTTP rule matching, the one function both the engine's prediction and
// the L7 proxy use: a request is allowed when at least one rule matches (rules of every policy on
// the port are ORed), and no rule at all allows everything. A rule matches when each field it
// sets does: method, path and host are RE2 expressions matched against the whole :method, :path
// and :authority; each of headers is "Name" (present) or "Name value" / "Name: value" (exact);
// each headerMatch with no mismatch action needs the header with that value (present when the
// value is empty), while one with LOG, ADD, DELETE or REPLACE does not decide: on a mismatch its
// action is returned for the proxy to apply. It returns the index of the first rule that matched,
// or -1.
func (l *L7Policy) MatchHTTP(r HTTPRequest) (bool, int) {
	ok, idx, _ := l.MatchHTTPActions(r)
	return ok, idx
}

// MatchHTTPActions is MatchHTTP with the header actions of every rule whose other conditions
// matched (once a rule has actions, evaluation does not stop at the first match, as Cilium's
// does not: the actions are side effects). A headerMatch whose value is a secret netpact cannot
// read never matches, and with ADD or REPLACE its rule does not match either: there is no value
// to write (fail closed).
func (l *L7Policy) MatchHTTPActions(r HTTPRequest) (bool, int, []HeaderAction) {
	if l == nil || (len(l.HTTP) == 0 && len(l.Kafka) == 0 && len(l.DNS) == 0) {
		return true, -1, nil // no rule (an empty http list): every request
	}
	first := -1
	var actions []HeaderAction
	rx := l.regexps()
	for i, h := range l.HTTP {
		if !rx[i].method.match(r.Method) || !rx[i].path.match(r.Path) || !rx[i].host.match(r.Host) {
			continue
		}
		ok := true
		for _, hdr := range h.Headers {
			name, value, hasValue := strings.Cut(strings.TrimSpace(hdr), " ")
			name = strings.TrimSuffix(name, ":")
			if !headerHas(r.Header, name, strings.TrimSpace(value), hasValue) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		var mine []HeaderAction
		for _, hm := range h.HeaderMatches {
			secret := len(hm.Secret) > 0
			matched := !secret && headerHas(r.Header, hm.Name, hm.Value, hm.Value != "")
			switch {
			case matched:
			case hm.Mismatch == "":
				ok = false // a secret netpact cannot read never matches, as Cilium's does not
			case secret && (hm.Mismatch == "ADD" || hm.Mismatch == "REPLACE"):
				ok = false
			default:
				mine = append(mine, HeaderAction{Action: hm.Mismatch, Name: hm.Name, Value: hm.Value})
			}
		}
		if !ok {
			continue
		}
		actions = append(actions, mine...)
		if first < 0 {
			first = i
		}
		if len(actions) == 0 && !l.hasActions() {
			break
		}
	}
	return first >= 0, first, actions
}

// ApplyHeaderActions does to an allowed request's headers (canonical names, as net/http's
// http.Header) what its rules' mismatch actions say: the one place the proxy and the prediction
// of what a destination receives both use.
func ApplyHeaderActions(h map[string][]string, actions []HeaderAction) {
	for _, a := range actions {
		name := textproto.CanonicalMIMEHeaderKey(a.Name)
		switch a.Action {
		case "ADD":
			h[name] = append(h[name], a.Value)
		case "DELETE":
			delete(h, name)
		case "REPLACE":
			h[name] = []string{a.Value}
		}
	}
}

// hasActions says whether any rule has a headerMatch with a mismatch action.
func (l *L7Policy) hasActions() bool {
	for _, h := range l.HTTP {
		for _, hm := range h.HeaderMatches {
			if hm.Mismatch != "" {
				return true
			}
		}
	}
	return false
}

// headerHas says whether the header is present, and with exactly value when exact. A header
// sent more than once is matched as its values joined with ",", as Envoy does (CVE-2020-25017):
// matching any one of them would let a second instance, which the destination may read
// instead, ride on a first that matches.
func headerHas(h map[string][]string, name, value string, exact bool) bool {
	vs, ok := h[textproto.CanonicalMIMEHeaderKey(name)]
	if !ok {
		return false
	}
	return !exact || strings.Join(vs, ",") == value
}

// httpRegexps are one HTTP rule's method, path and host expressions, compiled.
type httpRegexps struct{ method, path, host regex }

// regex is an expression anchored to match a whole value: nil matches anything (an empty
// expression), and one that did not compile matches nothing (validation refuses those).
type regex struct {
	rx  *regexp.Regexp
	bad bool
}

func anchored(re string) regex {
	if re == "" {
		return regex{}
	}
	rx, err := regexp.Compile("^(?:" + re + ")$")
	if err != nil {
		return regex{bad: true}
	}
	return regex{rx: rx}
}

func (r regex) match(s string) bool {
	return !r.bad && (r.rx == nil || r.rx.MatchString(s))
}

// regexps are the HTTP rules' compiled expressions; an L7Policy written as a literal (not
// loaded) has its compiled now.
func (l *L7Policy) regexps() []httpRegexps {
	if len(l.rx) == len(l.HTTP) {
		return l.rx
	}
	return newL7Policy(l.HTTP, nil, nil).rx
}

// HTTPVerdict is the judgement of one request on a flow: allowed or not, the side whose rules
// decided, the rule (its policy section) and the index of the HTTP rule that matched (-1: none
// did, or no L7 rule applies).
type HTTPVerdict struct {
	Allowed   bool
	Direction Direction
	Rule      *RuleInfo
	Index     int
	// Reason says why, when no rule of a side matched or L3/L4 refuses the flow.
	Reason string
	// Actions are the header actions the proxy applies to an allowed request, in order.
	Actions []HeaderAction
	// Unreachable, for a request the source's egress rules allow, says why the destination's
	// ingress policy drops the connection the proxy makes for it: the client gets the proxy's
	// 503 once the connect times out.
	Unreachable string
}

// MatchHTTP judges a request on the decided flow: every side whose entry carries L7 rules (the
// source's egress, the destination's ingress) must allow it, as two proxies in a row would; a
// flow L3/L4 refuses allows no request, and one without L7 rules allows every request. The L7
// proxy and the scenario runner's prediction both judge with this.
func (d Decision) MatchHTTP(r HTTPRequest) HTTPVerdict {
	switch d.Outcome {
	case OutcomeDenied, OutcomeDefaultDenied:
		if egress, ok := d.egressProxied(ParserHTTP); ok {
			// A request the source's rules deny gets the 403; one they allow is forwarded, and
			// the destination's policy drops the proxy's connection (Unreachable).
			v := egress.MatchHTTP(r)
			if v.Allowed {
				v.Unreachable = d.Reason()
			}
			return v
		}
		return HTTPVerdict{Direction: d.Direction, Rule: d.Rule, Index: -1, Reason: d.Reason()}
	}
	v := HTTPVerdict{Allowed: true, Direction: d.Direction, Rule: d.Rule, Index: -1}
	first := true
	for _, side := range []struct {
		dir Direction
		dd  *DirectionDecision
	}{{Egress, d.Egress}, {Ingress, d.Ingress}} {
		if side.dd.Proxy() != ParserHTTP {
			continue
		}
		e := side.dd.Match.Entry
		ok, idx, actions := e.L7.MatchHTTPActions(r)
		rule := d.rules[e.Rules[0]]
		if !ok {
			return HTTPVerdict{Direction: side.dir, Rule: rule, Index: -1,
				Reason: fmt.Sprintf("no HTTP rule of %s on %s matches", rule, side.dir)}
		}
		if first || side.dir == Ingress {
			v.Direction, v.Rule, v.Index = side.dir, rule, idx
		}
		v.Actions = append(v.Actions, actions...)
		first = false
	}
	return v
}
