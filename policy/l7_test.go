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

// TestMatchHTTPActions: a headerMatch with a mismatch action never denies; on a mismatch its
// action comes back for the proxy (every rule that matches on its other conditions contributes,
// no short cut); a secret netpact cannot read gives ADD and REPLACE no value, so their rule does
// not match.
func TestMatchHTTPActions(t *testing.T) {
	l7 := &L7Policy{HTTP: []ciliumv2.PortRuleHTTP{
		{Method: "GET", HeaderMatches: []ciliumv2.HeaderMatch{
			{Name: "X-Team", Value: "blue", Mismatch: "REPLACE"},
			{Name: "X-Debug", Mismatch: "DELETE", Value: "on"},
		}},
		{Path: "/.*", HeaderMatches: []ciliumv2.HeaderMatch{{Name: "X-Trace", Value: "1", Mismatch: "ADD"}, {Name: "X-Token", Value: "t", Mismatch: "LOG"}}},
		{Method: "POST", HeaderMatches: []ciliumv2.HeaderMatch{{Name: "X-Key", Secret: map[string]any{"name": "k"}, Mismatch: "ADD"}}},
	}}
	ok, idx, actions := l7.MatchHTTPActions(HTTPRequest{Method: "GET", Path: "/a", Header: map[string][]string{"X-Team": {"red"}, "X-Debug": {"off"}}})
	want := []HeaderAction{{"REPLACE", "X-Team", "blue"}, {"DELETE", "X-Debug", "on"}, {"ADD", "X-Trace", "1"}, {"LOG", "X-Token", "t"}}
	if !ok || idx != 0 || len(actions) != len(want) {
		t.Fatalf("GET with mismatching headers: ok %v idx %d actions %v, want ok, rule 0, %v", ok, idx, actions, want)
	}
	for i := range want {
		if actions[i] != want[i] {
			t.Errorf("action %d: %v, want %v", i, actions[i], want[i])
		}
	}
	ok, _, actions = l7.MatchHTTPActions(HTTPRequest{Method: "GET", Path: "/a", Header: map[string][]string{"X-Team": {"blue"}, "X-Debug": {"on"}, "X-Trace": {"1"}, "X-Token": {"t"}}})
	if !ok || len(actions) != 0 {
		t.Errorf("GET with every header matching: ok %v actions %v, want ok and none", ok, actions)
	}
	// POST /a: rule 1 matches (path), rule 2 cannot add a secret's value: only rule 1's actions.
	ok, idx, actions = l7.MatchHTTPActions(HTTPRequest{Method: "POST", Path: "/a"})
	if !ok || idx != 1 || len(actions) != 2 {
		t.Errorf("POST /a: ok %v idx %d actions %v, want rule 1 with its two actions", ok, idx, actions)
	}
	if ok, _, _ := l7.MatchHTTPActions(HTTPRequest{Method: "POST", Path: "x"}); ok {
		t.Error("POST x: allowed, but only the secret's rule could match it")
	}
}
