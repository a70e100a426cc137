package policy

import "testing"

// The cases of Cilium's matchpattern semantics (pkg/fqdn/matchpattern, layer7.rst).
func TestFQDNSelector(t *testing.T) {
	cases := []struct {
		name, pattern, query string
		want                 bool
	}{
		{"api.stripe.com", "", "api.stripe.com", true},
		{"api.stripe.com", "", "API.Stripe.com.", true},
		{"api.stripe.com", "", "xapi.stripe.com", false},
		{"api.stripe.com", "", "api.stripe.com.evil.org", false},
		{"", "*.stripe.com", "api.stripe.com", true},
		{"", "*.stripe.com", "stripe.com", false},
		{"", "*.stripe.com", "a.b.stripe.com", false},
		{"", "part*ial.com", "partial.com", true},
		{"", "part*ial.com", "part-xx-ial.com", true},
		{"", "*", "a.b.c.d", true},
		{"", "*", ".", true},
		{"", "**.cilium.io", "app.cilium.io", true},
		{"", "**.cilium.io", "test.app.cilium.io", true},
		{"", "**.cilium.io", "cilium.io", false},
		{"", "a.**.io", "a.b.io", true},
		{"", "a.**.io", "a.b.c.io", false},
		{"", "api.stripe.com", "apixstripe.com", false},
	}
	for _, c := range cases {
		s, err := NewFQDNSelector(c.name, c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Matches(c.query); got != c.want {
			t.Errorf("%s matches %q = %v, want %v", s, c.query, got, c.want)
		}
	}
}
