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
