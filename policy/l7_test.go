package policy

import (
	"testing"

	"github.com/netpact/netpact/api/ciliumv2"
)

func TestAllowsHTTP(t *testing.T) {
	l7 := &L7Policy{HTTP: []ciliumv2.PortRuleHTTP{
		{Method: "GET", Path: "/"},
		{Method: "GET", Path: "/api/v1/.*"},
		{Method: "POST|PUT", Path: "/api/health"},
	}}
	for _, c := range []struct {
		method, path string
		want         bool
	}{
		{"GET", "/", true},
		{"GET", "/metrics", false},         // the path matches whole or not at all
		{"GET", "/api/v1/users", true},     // a regular expression
		{"GET", "/x/api/v1/users", false},  // anchored at the start
		{"POST", "/api/health", true},      // alternation inside the anchors
		{"GETX", "/", false},               // anchored at the end
		{"DELETE", "/api/health", false},   // method and path of the same rule
		{"PUT", "/api/healthcheck", false}, // no prefix match
	} {
		if got := l7.AllowsHTTP(c.method, c.path); got != c.want {
			t.Errorf("%s %s: allowed %v, want %v", c.method, c.path, got, c.want)
		}
	}
	if !(*L7Policy)(nil).AllowsHTTP("DELETE", "/anything") {
		t.Error("no L7 policy must allow every request")
	}
	if (&L7Policy{HTTP: []ciliumv2.PortRuleHTTP{{Path: "("}}}).AllowsHTTP("GET", "(") {
		t.Error("an invalid expression must match nothing")
	}
	if !(&L7Policy{HTTP: []ciliumv2.PortRuleHTTP{{Path: "/a"}}}).AllowsHTTP("PATCH", "/a") {
		t.Error("an empty method must match any method")
	}
}

// TestMatchHTTP: host, headers and headerMatches as Cilium matches them, ORed rules, the index
// of the rule that allowed.
func TestMatchHTTP(t *testing.T) {
	l7 := &L7Policy{HTTP: []ciliumv2.PortRuleHTTP{
		{Method: "GET", Path: "/public/.*", Host: "api\\.example\\.com(:443)?"},
		{Method: "POST", Path: "/upload", Headers: []string{"X-Token", "X-Tenant: blue"}},
		{Path: "/admin", HeaderMatches: []ciliumv2.HeaderMatch{{Name: "X-Role", Value: "admin"}, {Name: "X-Trace", Mismatch: "ADD", Value: "1"}}},
	}}
	hdr := func(kv ...string) map[string][]string {
		m := map[string][]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = append(m[kv[i]], kv[i+1])
		}
		return m
	}
	for _, c := range []struct {
		name string
		req  HTTPRequest
		want int // rule index, -1 denied
	}{
		{"host matches whole, port optional", HTTPRequest{Method: "GET", Path: "/public/a", Host: "api.example.com:443"}, 0},
		{"other host", HTTPRequest{Method: "GET", Path: "/public/a", Host: "evil.example.com"}, -1},
		{"host is anchored", HTTPRequest{Method: "GET", Path: "/public/a", Host: "api.example.com.evil"}, -1},
		{"query string is part of the path", HTTPRequest{Method: "GET", Path: "/upload?x=1", Header: hdr("X-Token", "t", "X-Tenant", "blue")}, -1},
		{"present and exact headers", HTTPRequest{Method: "POST", Path: "/upload", Header: hdr("X-Token", "", "X-Tenant", "blue")}, 1},
		{"exact header value differs", HTTPRequest{Method: "POST", Path: "/upload", Header: hdr("X-Token", "t", "X-Tenant", "red")}, -1},
		{"a header missing", HTTPRequest{Method: "POST", Path: "/upload", Header: hdr("X-Tenant", "blue")}, -1},
		{"headerMatch value, mismatch action does not decide", HTTPRequest{Method: "DELETE", Path: "/admin", Header: hdr("X-Role", "admin")}, 2},
		{"headerMatch value differs", HTTPRequest{Method: "DELETE", Path: "/admin", Header: hdr("X-Role", "user")}, -1},
	} {
		ok, idx := l7.MatchHTTP(c.req)
		if idx != c.want || ok != (c.want >= 0) {
			t.Errorf("%s: allowed %v by rule %d, want rule %d", c.name, ok, idx, c.want)
		}
	}
	if ok, _ := (&L7Policy{}).MatchHTTP(HTTPRequest{Method: "DELETE", Path: "/x"}); !ok {
		t.Error("an empty http rule list must allow every request")
	}
	secret := &L7Policy{HTTP: []ciliumv2.PortRuleHTTP{{HeaderMatches: []ciliumv2.HeaderMatch{{Name: "X-Key", Secret: map[string]any{"name": "s"}}}}}}
	if ok, _ := secret.MatchHTTP(HTTPRequest{Method: "GET", Path: "/", Header: hdr("X-Key", "anything")}); ok {
		t.Error("a header match on a secret netpact cannot read must never match")
	}
}
