package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// predictOnlyNote is the line that heads a predict-only report (scenarios.predictOnlyNote).
const predictOnlyNote = "predict-only: each step's expectations are compared with the policy engine's prediction; nothing was probed or observed\n"

// TestPredictOnlySeeds: `netpact test --predict-only` needs no root and no cluster: every seed
// scenario's expectations agree with the engine, and the report says plainly, at its head, on
// every step and in its totals, that nothing was probed.
func TestPredictOnlySeeds(t *testing.T) {
	stdout, stderr, code := run(t, "test", "--predict-only", filepath.Join("..", "..", "scenarios", "seeds"))
	if code != 0 {
		t.Fatalf("the seeds predicted: exit %d\n%s%s", code, stdout, stderr)
	}
	if !strings.HasPrefix(stdout, predictOnlyNote) {
		t.Errorf("the report does not begin by saying nothing was probed:\n%s", stdout)
	}
	lines := strings.Split(strings.TrimSuffix(strings.TrimPrefix(stdout, predictOnlyNote), "\n"), "\n")
	totals := lines[len(lines)-1]
	if !regexp.MustCompile(` 0 failed; [1-9][0-9]* cells predicted, none probed, 0 wrong$`).MatchString(totals) {
		t.Errorf("totals %q, want every cell predicted as expected and none probed", totals)
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "  ok       ") && !strings.HasSuffix(l, " cells predicted as expected, not probed") {
			t.Errorf("a step line does not say it was only predicted: %q", l)
		}
		if strings.Contains(l, "observed") || strings.HasSuffix(l, " probes") {
			t.Errorf("a predict-only report speaks of observations: %q", l)
		}
	}
}

// TestPredictOnlyWrongExpectation: a cell the file expects otherwise than the engine predicts
// fails the step and the run, named with both answers and "not probed"; -o json and the JUnit
// report carry the mode.
func TestPredictOnlyWrongExpectation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "wrong.yaml")
	scenario := `name: says galaxy reaches echo
namespaces: [{name: echo}, {name: universe}, {name: galaxy}]
pods:
  - {name: echo, namespace: echo, labels: {app: echo}, ports: ["80/TCP"]}
  - {name: curl, namespace: universe}
  - {name: curl, namespace: galaxy}
steps:
  - name: only universe
    apply:
      - inline: |
          apiVersion: networking.k8s.io/v1
          kind: NetworkPolicy
          metadata: {name: from-universe, namespace: echo}
          spec:
            podSelector: {matchLabels: {app: echo}}
            ingress:
              - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: universe}}}]
    expect:
      matrix:
        ports: [80/TCP]
        default: timeout
        exceptions: [{from: "*/curl", to: echo/echo, expect: allow}]
`
	if err := os.WriteFile(file, []byte(scenario), 0o644); err != nil {
		t.Fatal(err)
	}
	junit := filepath.Join(dir, "junit.xml")
	stdout, stderr, code := run(t, "test", "--predict-only", "--junit", junit, file)
	if code != 1 {
		t.Fatalf("a wrong expectation: exit %d, want 1\n%s%s", code, stdout, stderr)
	}
	wrong := "wrong: galaxy/curl -> echo/echo 80/TCP: expected allow, predicted timeout (not probed)"
	for _, want := range []string{
		predictOnlyNote,
		"  FAIL     only universe: 1 of 3 cells predicted otherwise than expected (not probed)\n",
		"  from \\ to      expected  predicted\n",
		wrong,
		"1 failed; 3 cells predicted, none probed, 1 wrong\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the report lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(strings.TrimPrefix(stdout, predictOnlyNote), "observed") {
		t.Errorf("a predict-only report speaks of observations:\n%s", stdout)
	}
	data, err := os.ReadFile(junit)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `<property name="netpact.mode" value="predict-only">`) ||
		!strings.Contains(string(data), "galaxy/curl -&gt; echo/echo 80/TCP: expected allow, predicted timeout (not probed)") {
		t.Errorf("the JUnit report lacks the mode or the wrong cell:\n%s", data)
	}
	stdout, _, code = run(t, "test", "--predict-only", "-o", "json", file)
	var results []struct {
		Mode  string `json:"mode"`
		Steps []struct {
			Failed bool              `json:"failed"`
			Cells  []json.RawMessage `json:"cells"`
		} `json:"steps"`
	}
	if err := json.Unmarshal([]byte(stdout), &results); err != nil {
		t.Fatalf("-o json: %v\n%s", err, stdout)
	}
	if code != 1 || len(results) != 1 || results[0].Mode != "predict-only" || !results[0].Steps[0].Failed ||
		strings.Contains(stdout, `"observed"`) {
		t.Errorf("-o json: exit %d, want 1, mode predict-only, the step failed and no observation:\n%s", code, stdout)
	}
}

// TestPredictOnlyPending: a pending step is pending when predicting too, and --fail-on-pending
// fails the run.
func TestPredictOnlyPending(t *testing.T) {
	file := filepath.Join("..", "..", "scenarios", "testdata", "pending-step.yaml")
	stdout, stderr, code := run(t, "test", "--predict-only", "--fail-on-pending=false", file)
	if code != 0 || !strings.Contains(stdout, "pending (not checked): a step that is not checked yet / not yet: waits for a feature\n") {
		t.Fatalf("exit %d, want 0 and the step listed\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = run(t, "test", "--predict-only", "--fail-on-pending", file)
	if code != 1 || !strings.Contains(stderr, "1 pending steps were not checked") {
		t.Fatalf("--fail-on-pending: exit %d, want 1 naming the pending step\n%s%s", code, stdout, stderr)
	}
}

// TestPredictOnlyRefusesProbeFlags: the flags about where and how to probe cannot go with
// --predict-only, which probes nothing: each is refused by name before anything runs.
func TestPredictOnlyRefusesProbeFlags(t *testing.T) {
	file := filepath.Join("..", "..", "scenarios", "seeds", "003-knp-universe-to-echo.yaml")
	for _, flags := range [][]string{
		{"--kubeconfig", "/nonexistent"}, {"--context", "kind-x"}, {"--retain"}, {"--probe-timeout", "1s"},
	} {
		args := append(append([]string{"test", "--predict-only"}, flags...), file)
		stdout, _, err := runErr(args...)
		if err == nil || !strings.Contains(err.Error(), "--predict-only runs and probes nothing") || !strings.Contains(err.Error(), flags[0]) {
			t.Errorf("netpact %s: error %v, want %s refused\n%s", strings.Join(args, " "), err, flags[0], stdout)
		}
	}
}

// TestPredictOnlyPodAddresses: a policy naming a pod's address ({{ cidr "ns/pod" }} in an
// ipBlock) is predicted with the address the run gave the pod: that pod in, the other out.
func TestPredictOnlyPodAddresses(t *testing.T) {
	stdout, stderr, code := run(t, "test", "--predict-only", filepath.Join("..", "..", "scenarios", "testdata", "ipblock-pod-address.yaml"))
	if code != 0 || !strings.HasSuffix(stdout, "2 ok, 0 pending, 0 failed; 6 cells predicted, none probed, 0 wrong\n") {
		t.Fatalf("exit %d, want 0 with both steps as expected\n%s%s", code, stdout, stderr)
	}
}
