package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

var (
	seed000  = filepath.Join("..", "..", "policies", "000-l7-dns-and-namespace-default-deny")
	warnData = filepath.Join("..", "..", "policy", "testdata", "warn")
)

// TestValidateWarnings: seed 000 is valid (exit 0), warned of once (its toFQDNs rule has no dns
// rule to learn from), and noticed once (its Kafka rules follow Cilium 1.19's semantics, and
// Cilium 1.20 removed them). Text and JSON say the same.
func TestValidateWarnings(t *testing.T) {
	stdout, stderr, code := run(t, "validate", seed000)
	if code != 0 || stdout != "4 policies valid, 1 warning\n" {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{
		filepath.Join(seed000, "allow-external-api.yaml") + ":12:7: warning: CiliumNetworkPolicy default/allow-external-api: spec.egress[0].toFQDNs: toFQDNs selects addresses learned from DNS answers, but no egress rule with rules.dns on port 53 applies to these pods",
		"notice: " + filepath.Join(seed000, "kafka-produce-consume.yaml") + ":22:13: CiliumNetworkPolicy production/kafka-produce-consume: spec.ingress[0].toPorts[0].rules.kafka: kafka rules follow Cilium 1.19's semantics",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}

	stdout, _, code = run(t, "validate", "-o", "json", seed000)
	var res validateResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || code != 0 || !res.Valid {
		t.Fatalf("exit %d, %v:\n%s", code, err, stdout)
	}
	if len(res.Notices) != 2 {
		t.Fatalf("notices %+v, want the warning and the notice", res.Notices)
	}
	n := res.Notices[0]
	if !n.Warning || n.Line != 12 || n.Column != 7 || n.Object != "CiliumNetworkPolicy default/allow-external-api" || n.Field != "spec.egress[0].toFQDNs" {
		t.Errorf("first warning %+v", n)
	}
	if n := res.Notices[1]; n.Warning || n.Line != 22 || n.Field != "spec.ingress[0].toPorts[0].rules.kafka" || !strings.Contains(n.Message, "Cilium 1.20 removed Kafka rules") {
		t.Errorf("the Kafka notice %+v", n)
	}

	// With the dns rule the seed forgot, the toFQDNs warning goes.
	_, stderr, code = run(t, "validate", filepath.Join(seed000, "allow-external-api.yaml"), filepath.Join(warnData, "dns-for-backend.yaml"))
	if code != 0 || strings.Contains(stderr, "warning") {
		t.Errorf("exit %d, want no warning:\n%s", code, stderr)
	}
}

// TestValidateWarnsOfNetworkPolicyAPIKinds: an AdminNetworkPolicy is no longer "not a network
// policy": it is warned of as one netpact does not enforce.
func TestValidateWarnsOfNetworkPolicyAPIKinds(t *testing.T) {
	stdout, stderr, code := run(t, "validate", "--allow-empty", filepath.Join(warnData, "network-policy-api.yaml"))
	if code != 0 || stdout != "0 policies valid, 3 warnings\n" || strings.Contains(stderr, "not a network policy") ||
		!strings.Contains(stderr, "network-policy-api.yaml:3:1: warning: AdminNetworkPolicy deny-sensitive: kind: not enforced by netpact: AdminNetworkPolicy changes connectivity on clusters that implement it") {
		t.Errorf("exit %d, stdout %q, stderr:\n%s", code, stdout, stderr)
	}
}
