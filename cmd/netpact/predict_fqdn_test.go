package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestPredictToFQDNs: seed 000's toFQDNs cell is dropped, saying nothing is learned, until a dns
// rule lets backend resolve the name; then it is "N", allowed once resolved, and another address
// on 443 stays dropped.
func TestPredictToFQDNs(t *testing.T) {
	cluster := filepath.Join(warnData, "cluster.yaml")
	fqdn := filepath.Join(seed000, "allow-external-api.yaml")
	stdout, stderr, code := run(t, "predict", "-v", "--port", "443/TCP", "--cluster", cluster, fqdn)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	if want := "default/backend -> stripe 443/TCP: default deny on egress"; !strings.Contains(stdout, want) ||
		!strings.Contains(stdout, "no dns rule lets the source resolve it through the DNS proxy") {
		t.Errorf("without a dns rule, output lacks %q and why nothing is learned:\n%s", want, stdout)
	}
	stdout, stderr, code = run(t, "predict", "-v", "--port", "443/TCP", "--cluster", cluster, fqdn, filepath.Join(warnData, "dns-for-backend.yaml"))
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	for _, want := range []string{
		`"N" allowed once its name is resolved through an allowed DNS rule (toFQDNs)`,
		"default/backend -> stripe 443/TCP: allowed on egress by CiliumNetworkPolicy default/allow-external-api spec.egress[0]",
		"once api.stripe.com is resolved through an allowed DNS rule (CiliumNetworkPolicy default/dns-for-backend",
		"default/backend -> other 443/TCP: default deny on egress",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}
