package policy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

// The warnings: policies netpact accepts that would not do what they read as. Each names the
// file, line, column, object and field, and none makes a bundle invalid.

const (
	seed000     = "../policies/000-l7-dns-and-namespace-default-deny"
	externalAPI = seed000 + "/allow-external-api.yaml"
	kafkaSeed   = seed000 + "/kafka-produce-consume.yaml"
	warnData    = "testdata/warn"
)

const noDNSRule = "allow-external-api.yaml:12:7: warning: CiliumNetworkPolicy default/allow-external-api: spec.egress[0].toFQDNs: " +
	"toFQDNs selects addresses learned from DNS answers, but no egress rule with rules.dns on port 53 applies to "

func load(t *testing.T, paths ...string) *policy.Bundle {
	t.Helper()
	b, err := policy.Load(paths, policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// warnings are the notices of a bundle that are warnings, as a terminal shows them.
func warnings(ns []policy.Notice) []string {
	var out []string
	for _, n := range ns {
		if n.Warning {
			out = append(out, n.String())
		}
	}
	return out
}

func cluster(t *testing.T) *policy.Cluster {
	t.Helper()
	name := filepath.Join(warnData, "cluster.yaml")
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := policy.LoadClusterFile(name, data)
	if err != nil {
		t.Fatal(err)
	}
	return &cf.Cluster
}

// TestWarnFQDNWithoutDNSRule: a toFQDNs rule warns unless a dns rule on port 53 can apply to its
// pods, by the rule of thumb when no cluster is known (FQDNWarnings with a nil state).
func TestWarnFQDNWithoutDNSRule(t *testing.T) {
	for _, tc := range []struct {
		name  string
		with  []string
		warns string // a substring of the only warning; empty: no warning
	}{
		{"the seed alone", nil, noDNSRule + "these pods: nothing will be learned and the traffic is dropped"},
		{"with the seed's namespace default deny, which allows port 53 without a dns rule", []string{seed000 + "/default-deny.yaml"}, noDNSRule + "these pods"},
		{"with a dns rule for backend pods", []string{"dns-for-backend.yaml"}, ""},
		{"with a dns rule for every pod of the cluster", []string{"dns-everywhere.yaml"}, ""},
		{"with a dns rule for frontend pods only", []string{"dns-for-frontend.yaml"}, noDNSRule + "these pods"},
		{"with a dns rule for backend pods of another namespace", []string{"dns-in-production.yaml"}, noDNSRule + "these pods"},
		{"with a dns rule that allows other names", []string{"dns-other-names.yaml"},
			"spec.egress[0].toFQDNs: the dns rules on port 53 that apply to these pods do not allow api.stripe.com: the DNS proxy REFUSES the query"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths := []string{externalAPI}
			for _, w := range tc.with {
				if !strings.HasPrefix(w, seed000) {
					w = filepath.Join(warnData, w)
				}
				paths = append(paths, w)
			}
			got := warnings(load(t, paths...).AllNotices(nil))
			switch {
			case tc.warns == "" && len(got) != 0:
				t.Errorf("want no warning, got %q", got)
			case tc.warns != "" && (len(got) != 1 || !strings.Contains(got[0], tc.warns)):
				t.Errorf("want one warning with %q, got %q", tc.warns, got)
			}
		})
	}
}

// TestWarnFQDNNamesThePods: with a cluster, the pods are known: a cluster-wide toFQDNs rule for
// every backend pod, with a dns rule for those of one namespace, warns of the others by name.
func TestWarnFQDNNamesThePods(t *testing.T) {
	b := load(t, filepath.Join(warnData, "fqdn-all-backends.yaml"), filepath.Join(warnData, "dns-for-backend.yaml"))
	if got := warnings(b.AllNotices(nil)); len(got) != 0 {
		t.Errorf("without a cluster the rule of thumb says a dns rule may apply, want no warning, got %q", got)
	}
	st, err := policy.Compile(cluster(t), b, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := warnings(b.AllNotices(st))
	want := "fqdn-all-backends.yaml:11:7: warning: CiliumClusterwideNetworkPolicy fqdn-all-backends: spec.egress[0].toFQDNs: " +
		"toFQDNs selects addresses learned from DNS answers, but no egress rule with rules.dns on port 53 applies to production/backend: " +
		"nothing will be learned for it and its traffic is dropped"
	if len(got) != 1 || !strings.Contains(got[0], want) {
		t.Errorf("want one warning with %q, got %q", want, got)
	}
	// Every backend pod covered: no warning.
	b = load(t, filepath.Join(warnData, "fqdn-all-backends.yaml"), filepath.Join(warnData, "dns-everywhere.yaml"))
	if st, err = policy.Compile(cluster(t), b, policy.Options{}); err != nil {
		t.Fatal(err)
	}
	if got := warnings(b.AllNotices(st)); len(got) != 0 {
		t.Errorf("want no warning, got %q", got)
	}
}

// TestNoticeKafkaRules: a Kafka rule is valid, not warned of, and noticed: it follows Cilium
// 1.19's semantics, and Cilium 1.20 removed Kafka rules.
func TestNoticeKafkaRules(t *testing.T) {
	b := load(t, kafkaSeed)
	if got := warnings(b.Notices); len(got) != 0 {
		t.Errorf("want no warning, got %q", got)
	}
	var notes []string
	for _, n := range b.Notices {
		notes = append(notes, n.String())
	}
	want := "kafka-produce-consume.yaml:22:13: CiliumNetworkPolicy production/kafka-produce-consume: spec.ingress[0].toPorts[0].rules.kafka: " +
		"kafka rules follow Cilium 1.19's semantics"
	if len(notes) != 1 || !strings.HasPrefix(notes[0], "notice: ") || !strings.Contains(notes[0], want) || !strings.Contains(notes[0], "Cilium 1.20 removed Kafka rules") {
		t.Fatalf("want one notice with %q, got %q", want, notes)
	}
}

// TestWarnNetworkPolicyAPIKinds: AdminNetworkPolicy, BaselineAdminNetworkPolicy and
// ClusterNetworkPolicy decide traffic on clusters that implement them: warned of, not skipped
// in silence.
func TestWarnNetworkPolicyAPIKinds(t *testing.T) {
	b := load(t, filepath.Join(warnData, "network-policy-api.yaml"))
	got := warnings(b.Notices)
	want := []string{
		"network-policy-api.yaml:3:1: warning: AdminNetworkPolicy deny-sensitive: kind: not enforced by netpact: AdminNetworkPolicy changes connectivity on clusters that implement it",
		"network-policy-api.yaml:18:1: warning: BaselineAdminNetworkPolicy default: kind: not enforced by netpact: BaselineAdminNetworkPolicy changes connectivity",
		"network-policy-api.yaml:30:1: warning: ClusterNetworkPolicy admin-deny: kind: not enforced by netpact: ClusterNetworkPolicy changes connectivity",
	}
	if len(b.Policies) != 0 || len(got) != len(want) {
		t.Fatalf("policies %d, warnings %q", len(b.Policies), got)
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("warning %q, want %q", got[i], w)
		}
	}
}
