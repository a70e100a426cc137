package policy

import "regexp"

// AllowsHTTP applies the HTTP rules of an L7 policy to a request as Cilium does: the request
// passes when some rule's method and path, RE2 expressions, each match it whole (an empty field
// matches anything). A nil policy has no L7 rules and allows every request. The scenario
// runner's prediction uses it, and the L7 proxy will.
func (l *L7Policy) AllowsHTTP(method, path string) bool {
	if l == nil {
		return true
	}
	for _, h := range l.HTTP {
		if fullMatch(h.Method, method) && fullMatch(h.Path, path) {
			return true
		}
	}
	return false
}

// fullMatch reports whether the RE2 expression re matches all of s; an empty expression
// matches anything and an invalid one nothing (validation refuses those before compilation).
func fullMatch(re, s string) bool {
	if re == "" {
		return true
	}
	m, err := regexp.MatchString("^(?:"+re+")$", s)
	return err == nil && m
}
