package scenarios

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy/matrix"
)

// cellResult is a matrix cell as the runner makes it: OK when expected, predicted and observed
// agree, loopback (never compared) from a pod to itself.
func cellResult(from, to, port string, expected, predicted, observed Outcome) CellResult {
	p, err := parsePort(port)
	if err != nil {
		panic(err)
	}
	c := CellResult{
		Cell: Cell{From: from, To: to, Port: p}, From: from, To: to, Port: port,
		Expected: expected, Predicted: predicted, Observed: observed, Loopback: from == to,
	}
	c.OK = c.matrixCell().Agrees(matrix.All)
	return c
}

// echoStep is seed 003's second step: echo/echo serves 80 and 8080, universe/curl reaches 80.
// wrong makes the file expect galaxy/curl to reach 80 as well, which the engine and the probes
// deny.
func echoStep(wrong bool) StepResult {
	pods := []string{"echo/echo", "universe/curl", "galaxy/curl"}
	var cells []CellResult
	for _, port := range []string{"80/TCP", "8080/TCP"} {
		for _, from := range pods {
			expected, observed := Timeout, Timeout
			if from == "universe/curl" && port == "80/TCP" {
				expected, observed = Allow, Allow
			}
			if from == "echo/echo" {
				observed = Allow
			}
			predicted := expected
			if wrong && from == "galaxy/curl" && port == "80/TCP" {
				expected = Allow
			}
			cells = append(cells, cellResult(from, "echo/echo", port, expected, predicted, observed))
		}
	}
	probe := cellResult("galaxy/curl", "echo/echo", "80/TCP", Timeout, Timeout, Timeout)
	probe.Cell.Explicit = true
	sr := StepResult{Name: "allow-universe-to-echo", Cells: append(cells, probe)}
	if wrong {
		sr.Failed = true
		sr.Flows = []string{"ingress TCP galaxy/curl:40232 -> echo/echo:80 dropped: default deny, no rule (no rule)"}
	}
	return sr
}

func echoResults(wrong bool) []*Result {
	return []*Result{{
		Scenario: "seed 003", File: "003.yaml",
		Steps: []StepResult{echoStep(false), echoStep(wrong), {Name: "later", Pending: "needs the L7 proxy"}},
	}}
}

func wantLines(t *testing.T, what, out string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(out, l) {
			t.Errorf("%s lacks %q:\n%s", what, l, out)
		}
	}
}

// A passing step gets one table of observed outcomes: a row per pod, a column group per port
// with only the pods that serve it, and a count line for its explicit probes.
func TestCompactMatrixOfAPassingStep(t *testing.T) {
	var b bytes.Buffer
	Print(&b, echoResults(false), false)
	out := b.String()
	wantLines(t, "compact output", out,
		"ok    seed 003 (003.yaml)\n"+
			"  ok       allow-universe-to-echo: 7 probes\n"+
			"    from \\ to        80/TCP  8080/TCP\n"+
			"                     0       0\n"+
			"    0 echo/echo      .~      .~\n"+
			"    1 universe/curl  .       X\n"+
			"    2 galaxy/curl    X       X\n"+
			"    probes: 1 timeout; all agree\n",
		"  pending  later: needs the L7 proxy\n",
		`"~" loopback, not compared`,
	)
	if strings.Contains(out, "expected  predicted") || strings.Count(out, "matrices show what probes observed") != 1 {
		t.Errorf("a passing run shows more than its compact matrices and one legend:\n%s", out)
	}
}

// Compact marks a cell where expected, predicted and observed disagree, and a step too wide for
// the terminal gets a count line.
func TestCompactMarksDisagreementsAndFallsBack(t *testing.T) {
	sr := echoStep(true)
	var b bytes.Buffer
	if !Compact(&b, &sr) {
		t.Error("Compact printed no table")
	}
	wantLines(t, "compact failing step", b.String(), "    2 galaxy/curl    X!      X\n")

	var wide StepResult
	for port := range 30 {
		wide.Cells = append(wide.Cells, cellResult("a/client", "a/server", fmt.Sprintf("%d/TCP", 8000+port), Allow, Allow, Allow))
	}
	b.Reset()
	if Compact(&b, &wide) {
		t.Error("Compact printed a table 30 ports wide")
	}
	if want := "    matrix: 30 cells over 2 pods and 30 ports, 0 wrong (too large to show here: -v prints it)\n"; b.String() != want {
		t.Errorf("count line %q, want %q", b.String(), want)
	}
}

// A failing step's three tables, wrong cells and flows appear where it ran and again in the
// failures section, which Summary writes between the step lines and the totals.
func TestFailuresSitWithTheSummary(t *testing.T) {
	results := echoResults(true)
	detail := []string{
		"  FAIL     allow-universe-to-echo: 1 of 7 probes wrong\n" +
			"  80/TCP\n" +
			"  from \\ to      expected  predicted  observed\n",
		"  galaxy/curl    . - -    X - -    X!- -   2\n",
		"  wrong: galaxy/curl -> echo/echo 80/TCP: expected allow, predicted timeout, observed timeout\n",
		"  flow: ingress TCP galaxy/curl:40232 -> echo/echo:80 dropped",
	}
	var b bytes.Buffer
	Print(&b, results, false)
	wantLines(t, "the run's output", b.String(), detail...)

	b.Reset()
	Summary(&b, results)
	out := b.String()
	steps, failures, ok := strings.Cut(out, "== failures\n")
	if !ok {
		t.Fatalf("summary has no failures section:\n%s", out)
	}
	wantLines(t, "summary's step lines", steps,
		"FAIL  seed 003 (003.yaml)\n  ok       allow-universe-to-echo: 7 probes\n  FAIL     allow-universe-to-echo: 1 of 7 probes wrong\n  pending  later")
	if strings.Contains(steps, "expected  predicted") {
		t.Errorf("summary's step lines hold tables:\n%s", steps)
	}
	wantLines(t, "failures section", failures, append(detail, "FAIL  seed 003 (003.yaml)\n")...)
	if !strings.HasSuffix(failures, "  flow: ingress TCP galaxy/curl:40232 -> echo/echo:80 dropped: default deny, no rule (no rule)\n"+
		"pending (not checked): seed 003 / later: needs the L7 proxy\n"+
		"1 scenarios, 3 steps: 1 ok, 1 pending, 1 failed; 14 probes, 1 wrong\n") {
		t.Errorf("summary does not end with the totals:\n%s", out)
	}

	b.Reset()
	Failures(&b, echoResults(false))
	if b.Len() != 0 {
		t.Errorf("failures section of a passing run:\n%s", b.String())
	}
}

// -v gives every step, passing or not, its three tables and its flow events.
func TestVerboseReportKeepsTheThreeTables(t *testing.T) {
	results := echoResults(false)
	results[0].Steps[1].Flows = []string{"ingress TCP universe/curl:57662 -> echo/echo:80 forwarded"}
	var b bytes.Buffer
	Print(&b, results, true)
	out := b.String()
	wantLines(t, "verbose output", out,
		"  ok       allow-universe-to-echo: 7 probes\n"+
			"  80/TCP\n"+
			"  from \\ to      expected  predicted  observed\n"+
			"                 0 1 2    0 1 2    0 1 2 \n"+
			"  echo/echo      X - -    X - -    .~- -   0\n"+
			"  universe/curl  . - -    . - -    . - -   1\n"+
			"  galaxy/curl    X - -    X - -    X - -   2\n"+
			"  8080/TCP\n",
		"  probe ok    galaxy/curl -> echo/echo 80/TCP: expected timeout, predicted timeout, observed timeout\n",
		"  flow: ingress TCP universe/curl:57662 -> echo/echo:80 forwarded\n",
	)
	if strings.Contains(out, "matrices show what probes observed") {
		t.Errorf("verbose output has the compact legend:\n%s", out)
	}
}
