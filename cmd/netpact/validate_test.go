package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runStdin(t, "", args...)
}

// runStdin runs netpact with stdin as its standard input.
func runStdin(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	stdout, stderr, err := runErrStdin(stdin, args...)
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.code
	default:
		t.Fatalf("netpact %v: %v", args, err)
	}
	return stdout, stderr, code
}

// runErr runs netpact with args as main does, and returns its error as main would print it.
func runErr(args ...string) (stdout, stderr string, err error) {
	return runErrStdin("", args...)
}

// runErrStdin is runErr with stdin as the command's standard input.
func runErrStdin(stdin string, args ...string) (stdout, stderr string, err error) {
	cmd := newRootCommand()
	var out, errb bytes.Buffer
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errb.String(), err
}

// invalidFiles maps each broken file to the location and field its first error must name.
var invalidFiles = map[string]string{
	"bad-cidr.yaml":                          "10:7: CiliumNetworkPolicy prod/badcidr: spec.ingress[0].fromCIDR[0]: invalid CIDR",
	"bad-dns-pattern.yaml":                   "10:7: CiliumNetworkPolicy prod/badpattern: spec.egress[0].toFQDNs[0].matchPattern: invalid DNS pattern",
	"bad-http-path-regex.yaml":               "16:11: CiliumNetworkPolicy prod/badregex: spec.ingress[0].toPorts[0].rules.http[0].path: invalid regular expression",
	"bad-icmp-type.yaml":                     "11:9: CiliumNetworkPolicy prod/icmpname: spec.ingress[0].icmps[0].fields[0]: unknown IPv4 ICMP type",
	"bad-label-key.yaml":                     "9:7: CiliumNetworkPolicy prod/badkey: spec.endpointSelector.matchLabels.app/x/y: invalid label key",
	"bad-selector-operator.yaml":             "10:7: CiliumNetworkPolicy prod/badop: spec.endpointSelector.matchExpressions[0].operator: unknown operator",
	"bad-yaml-syntax.yaml":                   "8:1: invalid YAML",
	"both-selectors.yaml":                    "7:3: CiliumClusterwideNetworkPolicy both: spec.nodeSelector: a rule takes either",
	"ccnp-with-namespace.yaml":               "5:3: CiliumClusterwideNetworkPolicy scoped: metadata.namespace: ",
	"dns-rules-on-ingress.yaml":              "14:9: CiliumNetworkPolicy prod/dnsin: spec.ingress[0].toPorts[0].rules.dns: DNS rules are only allowed in egress",
	"dns-rules-without-port.yaml":            "12:9: CiliumNetworkPolicy prod/dnsport: spec.egress[0].toPorts[0].ports[0].port: L7 rules need an explicit port",
	"duplicate-policy.yaml":                  "10:1: CiliumNetworkPolicy prod/twice: metadata.name: CiliumNetworkPolicy prod/twice is defined twice",
	"endport-below-port.yaml":                "12:9: CiliumNetworkPolicy prod/range: spec.ingress[0].toPorts[0].ports[0].endPort: endPort 8000 is smaller than port 8080",
	"endport-with-named-port.yaml":           "12:9: CiliumNetworkPolicy prod/namedrange: spec.ingress[0].toPorts[0].ports[0].endPort: endPort cannot be used with the named port",
	"except-outside-cidr.yaml":               "12:9: CiliumNetworkPolicy prod/except: spec.egress[0].toCIDRSet[0].except[0]: except 192.168.0.0/16 is not inside cidr 10.0.0.0/8",
	"fqdn-in-deny-rule.yaml":                 "9:5: CiliumNetworkPolicy prod/fqdndeny: spec.egressDeny[0].toFQDNs: toFQDNs is not allowed in deny rules",
	"http-in-host-policy.yaml":               "13:9: CiliumClusterwideNetworkPolicy hosthttp: spec.ingress[0].toPorts[0].rules.http: HTTP rules are not allowed in host policies",
	"http-on-any.yaml":                       "11:9: CiliumNetworkPolicy prod/httpany: spec.ingress[0].toPorts[0].ports[0].protocol: HTTP rules need protocol TCP, not ANY",
	"http-on-udp.yaml":                       "12:9: CiliumNetworkPolicy prod/httpudp: spec.ingress[0].toPorts[0].ports[0].protocol: HTTP rules need protocol TCP, not UDP",
	"icmps-with-toports.yaml":                "11:5: CiliumNetworkPolicy prod/icmp-ports: spec.ingress[0].icmps: icmps cannot be combined with toPorts",
	"in-without-values.yaml":                 "11:9: CiliumNetworkPolicy prod/novalues: spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: operator In needs at least one value",
	"knp-bad-policy-type.yaml":               "9:5: NetworkPolicy prod/badtype: spec.policyTypes[0]: unknown policy type \"Inbound\"",
	"knp-empty-peer.yaml":                    "10:7: NetworkPolicy prod/emptypeer: spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock",
	"knp-except-equals-cidr.yaml":            "13:11: NetworkPolicy prod/except: spec.egress[0].to[0].ipBlock.except[0]: except 10.0.0.0/8 must be strictly smaller",
	"knp-icmp-protocol.yaml":                 "10:7: NetworkPolicy prod/icmp: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\"",
	"knp-ipblock-with-selector.yaml":         "11:7: NetworkPolicy prod/mixed: spec.ingress[0].from[0].ipBlock: ipBlock cannot be combined",
	"knp-port-zero.yaml":                     "10:7: NetworkPolicy prod/zero: spec.ingress[0].ports[0].port: port 0 is out of range",
	"knp-unknown-field.yaml":                 "9:5: NetworkPolicy prod/typo: spec.ingress[0].form: unknown field \"form\" (did you mean \"from\"?)",
	"l7-in-deny-rule.yaml":                   "13:7: CiliumNetworkPolicy prod/l7deny: spec.ingressDeny[0].toPorts[0].rules: L7 rules are not allowed in deny rules",
	"l7-with-port-range.yaml":                "12:9: CiliumNetworkPolicy prod/l7range: spec.ingress[0].toPorts[0].ports[0].endPort: L7 rules cannot be used with port ranges",
	"missing-name.yaml":                      "3:1: CiliumNetworkPolicy prod/: metadata.name: missing name",
	"no-rule-section.yaml":                   "6:1: CiliumNetworkPolicy prod/nothing: spec: the rule has no ingress, ingressDeny, egress or egressDeny section",
	"no-selector.yaml":                       "6:1: CiliumNetworkPolicy prod/nosel: spec: a rule needs endpointSelector (pods) or nodeSelector (nodes)",
	"nodeselector-in-namespaced-policy.yaml": "7:3: CiliumNetworkPolicy prod/nodesel: spec.nodeSelector: nodeSelector (a host policy) is only allowed in a CiliumClusterwideNetworkPolicy",
	"port-not-a-string.yaml":                 "11:15: CiliumNetworkPolicy prod/intport: spec.ingress[0].toPorts[0].ports[0].port: must be a string, not the number 80 (quote it: \"80\")",
	"port-out-of-range.yaml":                 "11:9: CiliumNetworkPolicy prod/bigport: spec.ingress[0].toPorts[0].ports[0].port: port 70000 is out of range",
	"two-l3-kinds.yaml":                      "11:5: CiliumNetworkPolicy prod/two-l3: spec.ingress[0].fromCIDR: fromCIDR cannot be combined with fromEndpoints",
	"two-l7-kinds.yaml":                      "16:9: CiliumNetworkPolicy prod/twol7: spec.ingress[0].toPorts[0].rules.kafka: a port rule takes one kind of L7 rules",
	"unknown-entity.yaml":                    "11:7: CiliumNetworkPolicy prod/entity: spec.ingress[0].fromEntities[1]: unknown entity \"internet\"",
	"unknown-field.yaml":                     "9:5: CiliumNetworkPolicy prod/typo: spec.ingress[0].fromEndpoint: unknown field \"fromEndpoint\" (did you mean \"fromEndpoints\"?)",
	"unknown-protocol.yaml":                  "12:9: CiliumNetworkPolicy prod/lowercase: spec.ingress[0].toPorts[0].ports[0].protocol: unknown protocol \"tcp\"",
	"unsupported-to-services.yaml":           "9:5: CiliumNetworkPolicy prod/services: spec.egress[0].toServices: toServices is not supported by netpact yet",
	"wrong-api-version.yaml":                 "1:1: CiliumNetworkPolicy default/old: apiVersion: apiVersion \"cilium.io/v1\" is not served",
}

func TestValidateInvalidFiles(t *testing.T) {
	dir := filepath.Join("..", "..", "policy", "testdata", "invalid")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 30 {
		t.Fatalf("want at least 30 broken files, have %d", len(entries))
	}
	for _, e := range entries {
		want, ok := invalidFiles[e.Name()]
		if !ok {
			t.Errorf("%s has no expectation in invalidFiles", e.Name())
			continue
		}
		t.Run(e.Name(), func(t *testing.T) {
			path := filepath.Join(dir, e.Name())
			_, stderr, code := run(t, "validate", path)
			if code != 1 {
				t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr)
			}
			first, _, _ := strings.Cut(stderr, "\n")
			if !strings.HasPrefix(first, path+":"+want) {
				t.Errorf("first error\n  %s\nwant prefix\n  %s:%s", first, path, want)
			}
		})
	}
}

func TestValidateReportsEveryErrorTogether(t *testing.T) {
	dir := filepath.Join("..", "..", "policy", "testdata", "invalid")
	stdout, _, code := run(t, "validate", "-o", "json", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	var res validateResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("json output: %v\n%s", err, stdout)
	}
	files := map[string]bool{}
	for _, e := range res.Errors {
		files[filepath.Base(e.File)] = true
		if e.Line == 0 || e.Message == "" {
			t.Errorf("error without line or message: %+v", e)
		}
	}
	if len(files) != len(invalidFiles) || res.Valid {
		t.Errorf("errors name %d files, want all %d", len(files), len(invalidFiles))
	}
}

func TestValidateExamplePolicies(t *testing.T) {
	stdout, stderr, code := run(t, "validate", filepath.Join("..", "..", "policies"))
	if code != 0 {
		t.Fatalf("netpact validate policies/: exit %d\n%s", code, stderr)
	}
	if !strings.Contains(stdout, "9 policies valid") {
		t.Errorf("unexpected output %q", stdout)
	}
}

func TestPredictSeedCluster(t *testing.T) {
	stdout, stderr, code := run(t, "predict", "-o", "json", "--cluster", filepath.Join("..", "..", "docs", "examples", "cluster.yaml"), filepath.Join("..", "..", "policies"))
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	var results []probeResult
	if err := json.Unmarshal([]byte(stdout), &results); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		// seed 001: only frontend reaches backend on 80
		"default/frontend -> default/backend 80/TCP": "allowed",
		"default/database -> default/backend 80/TCP": "default-denied",
		// seed 002: only flask-app reaches postgres; /-only L7 rule on 5000
		"db/flask-app-1 -> db/postgres-0 5432/TCP": "allowed",
		"db/debug -> db/postgres-0 5432/TCP":       "default-denied",
		"dummy/debug -> db/postgres-0 5432/TCP":    "default-denied",
		"dummy/debug -> db/flask-app-1 5000/TCP":   "l7",
		// seed 003: only universe reaches echo
		"universe/curl -> echo/echo 80/TCP": "allowed",
		"galaxy/curl -> echo/echo 80/TCP":   "default-denied",
		// seed 000: namespace default deny with DNS to kube-system
		"production/frontend -> kube-system/coredns 53/UDP":     "allowed",
		"production/frontend -> production/api-server 8080/TCP": "default-denied",
		"production/backend -> internet 443/TCP":                "default-denied",
	}
	got := map[string]probeResult{}
	for _, r := range results {
		got[r.From+" -> "+r.To+" "+strconv.Itoa(int(r.Port))+"/"+r.Protocol] = r
	}
	for k, v := range want {
		r, ok := got[k]
		if !ok {
			t.Errorf("%s: not probed", k)
			continue
		}
		if r.Verdict != v {
			t.Errorf("%s: %s (%s), want %s", k, r.Verdict, r.Reason, v)
		}
		if v == "allowed" && r.Rule == nil {
			t.Errorf("%s: allowed without a rule", k)
		}
	}
}

// TestPredictNamesIgnoredPodLabels: a pod label Cilium derives itself is a notice, not an error.
func TestPredictNamesIgnoredPodLabels(t *testing.T) {
	dir := t.TempDir()
	cluster := filepath.Join(dir, "cluster.yaml")
	os.WriteFile(cluster, []byte(`namespaces: [{name: a}]
pods:
- {name: attacker, namespace: a, ips: [10.2.0.1], labels: {io.cilium.k8s.namespace.labels.team: backend}}
`), 0o644)
	policies := filepath.Join(dir, "none.yaml")
	os.WriteFile(policies, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: a}
spec: {podSelector: {}}
`), 0o644)
	_, stderr, code := run(t, "predict", "--cluster", cluster, policies)
	want := `notice: ` + cluster + `:3: pod a/attacker: label "io.cilium.k8s.namespace.labels.team" is ignored for policy`
	if code != 0 || !strings.Contains(stderr, want) {
		t.Errorf("exit %d, stderr %q, want %q", code, stderr, want)
	}
}
