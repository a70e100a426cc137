package proxy

import (
	"bufio"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/policy"
)

// TestHeaderMatchRepeated: a header sent more than once is matched as its values joined with
// "," (Envoy's rule for repeated headers), so a second X-Token cannot ride on a first that
// matches; REPLACE then leaves exactly one X-Token, the rule's, for the destination.
func TestHeaderMatchRepeated(t *testing.T) {
	l7 := &policy.L7Policy{HTTP: []ciliumv2.PortRuleHTTP{{Path: "/.*", HeaderMatches: []ciliumv2.HeaderMatch{
		{Name: "X-Token", Value: "good", Mismatch: "REPLACE"}}}}}
	strict := &policy.L7Policy{HTTP: []ciliumv2.PortRuleHTTP{{Path: "/.*", HeaderMatches: []ciliumv2.HeaderMatch{
		{Name: "X-Token", Value: "good"}}}}}
	for _, tc := range []struct {
		name, header string
		want         []string // X-Token towards the destination; nil: denied
		strictAllows bool
	}{
		{"one, matching", "X-Token: good\r\n", []string{"good"}, true},
		{"one, other", "X-Token: evil\r\n", []string{"good"}, false},
		{"matching then other", "X-Token: good\r\nX-Token: evil\r\n", []string{"good"}, false},
		{"other then matching", "X-Token: evil\r\nx-token: good\r\n", []string{"good"}, false},
		{"matching twice", "X-Token: good\r\nX-Token: good\r\n", []string{"good"}, false},
		{"one line, two values", "X-Token: good,evil\r\n", []string{"good"}, false},
		{"absent", "", []string{"good"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /x HTTP/1.1\r\nHost: a\r\n" + tc.header + "\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			hr := policy.HTTPRequest{Method: req.Method, Path: req.RequestURI, Host: req.Host, Header: req.Header}
			if ok, _ := strict.MatchHTTP(hr); ok != tc.strictAllows {
				t.Errorf("without a mismatch action: allowed %v, want %v", ok, tc.strictAllows)
			}
			ok, _, actions := l7.MatchHTTPActions(hr)
			if !ok {
				t.Fatal("REPLACE denied the request")
			}
			policy.ApplyHeaderActions(req.Header, actions)
			if got := req.Header.Values("X-Token"); !slices.Equal(got, tc.want) {
				t.Errorf("X-Token to the destination %q, want %q (actions %v)", got, tc.want, actions)
			}
		})
	}
}
