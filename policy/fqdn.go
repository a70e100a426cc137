package policy

import (
	"fmt"
	"regexp"
	"strings"
)

// Cilium's DNS name characters (pkg/fqdn/matchpattern): a `*` inside a pattern is any run of
// them, never crossing a dot; a `**.` prefix is one label or more; a bare `*` is every name.
const (
	dnsChars       = "[-a-zA-Z0-9_]"
	dnsLabelsGroup = "(" + dnsChars + "+([.]" + dnsChars + "+)*)[.]"
	dnsAnyName     = "(^(" + dnsChars + "+[.])+$)|(^[.]$)"
)

// FQDNSelector is a toFQDNs entry or a DNS rule: matchName (exact) or matchPattern.
type FQDNSelector struct {
	MatchName    string
	MatchPattern string
	re           *regexp.Regexp
}

// NewFQDNSelector compiles a matchName or matchPattern as Cilium does: both lower-cased with a
// trailing dot, `*` alone matching every name, `*` inside a pattern matching within one label,
// and `**.` as a prefix matching one label or more (Cilium >= 1.19; `**` elsewhere is `*`).
func NewFQDNSelector(matchName, matchPattern string) (FQDNSelector, error) {
	s := FQDNSelector{MatchName: matchName, MatchPattern: matchPattern}
	var expr string
	switch {
	case matchName != "":
		expr = "^" + regexp.QuoteMeta(FQDN(matchName)) + "$"
	case matchPattern != "":
		expr = patternRegexp(matchPattern)
	default:
		return s, fmt.Errorf("neither matchName nor matchPattern is set")
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return s, fmt.Errorf("compile %s: %w", s, err)
	}
	s.re = re
	return s, nil
}

func patternRegexp(pattern string) string {
	p := FQDN(pattern)
	if p == "*." {
		return dnsAnyName
	}
	prefix := ""
	if strings.HasPrefix(p, "**.") {
		prefix, p = dnsLabelsGroup, p[3:]
	}
	p = strings.ReplaceAll(p, "**", "*")
	var b strings.Builder
	for _, r := range p {
		switch r {
		case '*':
			b.WriteString(dnsChars + "*")
		case '.':
			b.WriteString("[.]")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	return "^" + prefix + b.String() + "$"
}

// FQDN is a name as DNS rules match it: lower case, with a trailing dot.
func FQDN(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// Matches says whether a name (any case, with or without its trailing dot) is selected.
func (s FQDNSelector) Matches(name string) bool {
	return s.re != nil && s.re.MatchString(FQDN(name))
}

// String is the selector as the labels of its identity name it: "matchName:api.stripe.com" or
// "matchPattern:*.stripe.com".
func (s FQDNSelector) String() string {
	if s.MatchName != "" {
		return "matchName:" + strings.ToLower(strings.TrimSuffix(s.MatchName, "."))
	}
	return "matchPattern:" + strings.ToLower(strings.TrimSuffix(s.MatchPattern, "."))
}

// MatchDNS judges a DNS query name against a port's DNS rules (rules of every policy on the port
// are ORed): it returns whether one matches and the index of the first that does. A port whose
// L7 rules have no DNS rule allows every name, as Cilium's does.
func (l *L7Policy) MatchDNS(name string) (bool, int) {
	if l == nil || len(l.DNS) == 0 {
		return true, -1
	}
	for i, s := range l.dnsSelectors() {
		if s.Matches(name) {
			return true, i
		}
	}
	return false, -1
}
