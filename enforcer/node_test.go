package enforcer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/netpact/netpact/enforcer/proxy"
	"github.com/netpact/netpact/policy"
)

// TestL7FlowRedactsQuery: a request's flow event has its path without the query, which carries
// tokens; the judged target keeps it.
func TestL7FlowRedactsQuery(t *testing.T) {
	r := proxy.Request{Method: "GET", Path: "/login?token=s3cret&user=me", Verdict: policy.HTTPVerdict{Allowed: true, Index: 0}}
	f := L7Flow(r, nil)
	if f.L7 == nil || f.L7.Path != "/login" || strings.Contains(fmt.Sprintf("%+v", *f.L7), "s3cret") {
		t.Fatalf("flow path %q (%+v), want /login with no query", f.L7.Path, f)
	}
}
