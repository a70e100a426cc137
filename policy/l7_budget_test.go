package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// httpPolicy is a CNP letting app=client reach app=name on 80 with n HTTP rules, each a path of
// its own.
func httpPolicy(name string, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: %s, namespace: app}\nspec:\n  endpointSelector: {matchLabels: {app: %s}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules:\n        http:\n", name, name)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "        - {method: GET, path: \"/%s/%d/[a-z]+\"}\n", name, i)
	}
	return b.String()
}

// TestHTTPExpressionsCompiledOnce: five policies of 1,000 path expressions each (more than the
// 4,096 a process-wide cache held) are matched without compiling anything per request: each
// policy's expressions were compiled when it was loaded. Before, the cache thrashed and every
// request compiled expressions again, behind one lock for all pods.
func TestHTTPExpressionsCompiledOnce(t *testing.T) {
	c := &Cluster{Namespaces: []Namespace{{Name: "app"}}}
	var src []string
	for i := 0; i <= 5; i++ {
		name := fmt.Sprintf("s%d", i)
		if i == 5 {
			name = "client"
		} else {
			src = append(src, httpPolicy(name, 1000))
		}
		c.Endpoints = append(c.Endpoints, Endpoint{Namespace: "app", Name: name, Labels: map[string]string{"app": name},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})}})
	}
	b, err := LoadBytes("http.yaml", []byte(strings.Join(src, "---\n")), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := Compile(c, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	client := netip.AddrFrom4([4]byte{10, 0, 0, 6})
	match := func() {
		for i := 0; i < 5; i++ {
			d := st.Decide(client, netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), ProtoTCP, 80)
			if v := d.MatchHTTP(HTTPRequest{Method: "GET", Path: fmt.Sprintf("/s%d/999/abc", i)}); !v.Allowed || v.Index != 999 {
				t.Fatalf("GET /s%d/999/abc: %+v, want rule 999", i, v)
			}
		}
	}
	match()
	if allocs := testing.AllocsPerRun(3, match); allocs > 500 {
		t.Errorf("%.0f allocations for 5 requests: the expressions are compiled per request", allocs)
	}
}

// TestHTTPRuleBudget: a policy with more HTTP rules than the proxy matches per request, or an
// expression longer than it takes, is refused at the field.
func TestHTTPRuleBudget(t *testing.T) {
	if _, err := LoadBytes("ok.yaml", []byte(httpPolicy("ok", MaxHTTPRulesPerPolicy)), LoadOptions{}); err != nil {
		t.Fatalf("%d rules: %v", MaxHTTPRulesPerPolicy, err)
	}
	_, err := LoadBytes("many.yaml", []byte(httpPolicy("many", MaxHTTPRulesPerPolicy+5)), LoadOptions{})
	want := fmt.Sprintf("many.yaml:%d:", 12+MaxHTTPRulesPerPolicy)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "rules.http[1024]: the policy's HTTP rule number 1025") {
		t.Fatalf("%d rules: %v; want an error at %s ...rules.http[1024]", MaxHTTPRulesPerPolicy+5, err, want)
	}
	long := strings.Replace(httpPolicy("long", 1), "path: \"/long/0/[a-z]+\"", "path: \"/"+strings.Repeat("a", MaxHTTPExpression)+"\"", 1)
	if _, err := LoadBytes("long.yaml", []byte(long), LoadOptions{}); err == nil || !strings.Contains(err.Error(), "http[0].path: a 4097-byte expression") {
		t.Fatalf("a 4,097-byte path: %v", err)
	}
}
