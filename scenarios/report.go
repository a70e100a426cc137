package scenarios

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/netpact/netpact/policy/matrix"
)

// legend explains the marks of Tables (predictedTablesLegend in a predict-only run);
// compactLegend those of Compact, and predictedLegend those of Compact in a predict-only run.
const (
	legend                = `  "." allowed  "A" allowed, reported AUDIT  "X" blocked (timed out)  "R" refused  "4" HTTP 403  "-" not probed  "!" disagrees  "~" loopback, not compared`
	predictedTablesLegend = `  "." allowed  "A" allowed, reported AUDIT  "X" blocked (timed out)  "R" refused  "4" HTTP 403  "-" no cell  "!" disagrees  "~" loopback, not compared; nothing was probed`
	compactLegend         = `  matrices show what probes observed: "." allowed  "A" allowed, reported AUDIT  "X" blocked (timed out)  "R" refused  "4" HTTP 403
  "-" not probed  "!" expected, predicted and observed disagree  "~" loopback, not compared;
  the numbers under a port are the rows of the pods that serve it. -v prints every step's three tables.`
	predictedLegend = `  matrices show what the engine predicted; nothing was probed: "." allowed  "A" allowed, reported AUDIT  "X" blocked (timed out)
  "R" refused  "4" HTTP 403  "-" no cell  "!" expected and predicted disagree  "~" loopback, not compared;
  the numbers under a port are the rows of the pods that serve it. -v prints every step's two tables.`
)

// predictOnlyNote heads a predict-only run's report: a green one must never read as a probed one.
const predictOnlyNote = "predict-only: each step's expectations are compared with the policy engine's prediction; nothing was probed or observed"

// predicted reports whether the step only predicted (a PredictOnly run).
func (sr *StepResult) predicted() bool { return sr.mode == PredictOnly }

// answers is a cell's answers as reports write them: expected, predicted and, when the step
// probed, observed.
func (sr *StepResult) answers(c CellResult) string {
	if sr.predicted() {
		return fmt.Sprintf("expected %s, predicted %s (not probed)", c.Expected, c.Predicted)
	}
	return fmt.Sprintf("expected %s, predicted %s, observed %s", c.Expected, c.Predicted, c.Observed)
}

// A compact matrix fits a terminal of compactWidth columns and has at most compactRows rows; a
// larger step gets a count line.
const (
	compactWidth = 100
	compactRows  = 24
)

// matrixOf is a step's matrix: every cell but the explicit probes, which the tables leave out.
// Its endpoints come in the scenario's order, as the runner lists the cells.
func matrixOf(sr *StepResult) *matrix.Matrix[Outcome] {
	m := matrix.New[Outcome]()
	for i := range sr.Cells {
		if c := &sr.Cells[i]; !c.Cell.Explicit {
			m.Set(c.matrixCell())
		}
	}
	return m
}

// Tables prints, for each port of a step, the expected, predicted and observed matrices side by
// side: "." allowed, "X" blocked (timed out), "R" refused, "4" HTTP 403, "-" not probed; a cell
// that disagrees is marked with "!" in the observed table, loopback cells with "~" (not compared).
func Tables(w io.Writer, sr *StepResult) {
	m := matrixOf(sr)
	m.SideBySide(w, "  ", sr.mode.columns())
	switch {
	case m.Len() > 0 && sr.predicted():
		fmt.Fprintln(w, predictedTablesLegend)
	case m.Len() > 0:
		fmt.Fprintln(w, legend)
	}
	for _, c := range sr.Cells {
		if c.Cell.Explicit {
			mark := "ok   "
			if !c.OK {
				mark = "WRONG"
			}
			fmt.Fprintf(w, "  probe %s %s: %s\n", mark, c.Cell, sr.answers(c))
		}
	}
}

// Compact prints a step's matrix as one table of observed outcomes (predicted ones when the step
// only predicted): a row per pod, numbered, and a column group per port holding only the pods
// that serve it, named by their row numbers; a cell is marked as in Tables' last table. A step
// too large for a 100-column terminal gets a count line instead, and the explicit probes a line
// of counts. It reports whether it printed a matrix, which needs compactLegend (predictedLegend).
func Compact(w io.Writer, sr *StepResult) (table bool) {
	cols := sr.mode.columns()
	if m := matrixOf(sr); m.Len() > 0 {
		table = m.Compact(w, "    ", cols, compactWidth, compactRows)
		if !table {
			fmt.Fprintf(w, "    matrix: %d cells over %d pods and %d ports, %d wrong (too large to show here: -v prints it)\n",
				m.Len(), len(m.Endpoints()), len(m.Ports()), len(m.Disagreements(cols)))
		}
	}
	var explicit []CellResult
	var seen []Outcome
	count := map[Outcome]int{}
	for _, c := range sr.Cells {
		if c.Cell.Explicit {
			explicit = append(explicit, c)
			o := c.matrixCell().Outcome(cols.Last())
			if count[o] == 0 {
				seen = append(seen, o)
			}
			count[o]++
		}
	}
	if len(explicit) == 0 {
		return table
	}
	var outcomes []string
	for _, o := range seen {
		outcomes = append(outcomes, fmt.Sprintf("%d %s", count[o], o))
	}
	verdict := "all agree"
	if n := wrongOf(explicit); n > 0 {
		verdict = fmt.Sprintf("%d wrong", n)
	}
	what := "probes"
	if sr.predicted() {
		what = "probes (predicted, not probed)"
	}
	fmt.Fprintf(w, "    %s: %s; %s\n", what, strings.Join(outcomes, ", "), verdict)
	return table
}

// Detail prints everything a step has to show: its three tables, its wrong cells with the
// engine's reason, and its flow events (those of the wrong probes when it failed).
func Detail(w io.Writer, sr *StepResult) {
	Tables(w, sr)
	for _, c := range sr.Cells {
		if !c.OK {
			fmt.Fprintf(w, "  wrong: %s: %s", c.Cell, sr.answers(c))
			if c.Rule != "" {
				fmt.Fprintf(w, " (engine: %s)", c.Rule)
			}
			if c.Note != "" {
				fmt.Fprintf(w, "; %s", c.Note)
			}
			fmt.Fprintln(w)
		}
	}
	for _, f := range sr.Flows {
		fmt.Fprintf(w, "  flow: %s\n", f)
	}
}

// Print writes a run for a person: a line per scenario and per step, each passing step's matrix
// in Compact form, each failing step's Detail. verbose gives every step its Detail.
func Print(w io.Writer, results []*Result, verbose bool) {
	compact := false
	if predictedOnly(results) {
		fmt.Fprintln(w, predictOnlyNote)
	}
	for _, r := range results {
		scenarioLine(w, r)
		for i := range r.Steps {
			s := &r.Steps[i]
			stepLine(w, s)
			for _, n := range s.Warnings {
				fmt.Fprintf(w, "    %s\n", n)
			}
			switch {
			case s.Pending != "" || s.Error != "":
			case verbose || s.Failed:
				Detail(w, s)
			default:
				compact = Compact(w, s) || compact
			}
		}
	}
	switch {
	case compact && predictedOnly(results):
		fmt.Fprintln(w, predictedLegend)
	case compact:
		fmt.Fprintln(w, compactLegend)
	}
}

// predictedOnly reports whether every result of a run only predicted (and there is one).
func predictedOnly(results []*Result) bool {
	for _, r := range results {
		if r.Mode != PredictOnly {
			return false
		}
	}
	return len(results) > 0
}

// Failures writes, under a "== failures" line, the Detail of every step whose cells disagree, so
// that a run's failing tables can sit next to its summary; nothing when there are none.
func Failures(w io.Writer, results []*Result) {
	header := false
	for _, r := range results {
		named := false
		for i := range r.Steps {
			s := &r.Steps[i]
			if !s.Failed || s.Error != "" {
				continue
			}
			if !header {
				fmt.Fprintln(w, "== failures")
				header = true
			}
			if !named {
				fmt.Fprintf(w, "FAIL  %s (%s)\n", r.Scenario, r.File)
				named = true
			}
			stepLine(w, s)
			Detail(w, s)
		}
	}
}

// scenarioLine is a scenario's line in Print and Summary.
func scenarioLine(w io.Writer, r *Result) {
	status := "ok"
	if r.Failed() {
		status = "FAIL"
	}
	fmt.Fprintf(w, "%-4s  %s (%s)\n", status, r.Scenario, r.File)
	if r.Error != "" {
		fmt.Fprintf(w, "      error: %s\n", r.Error)
	}
}

// StepLine prints a step's line as Print does: its status and its probe count (netpact test's
// progress on a cluster).
func StepLine(w io.Writer, s *StepResult) { stepLine(w, s) }

// stepLine is a step's line in Print, Summary and Failures: its status and its probe count, or
// in a predict-only run its count of cells predicted, not probed.
func stepLine(w io.Writer, s *StepResult) {
	switch {
	case s.Pending != "":
		fmt.Fprintf(w, "  pending  %s: %s\n", s.Name, s.Pending)
	case s.Error != "":
		fmt.Fprintf(w, "  FAIL     %s: %s\n", s.Name, s.Error)
	case s.Failed && s.predicted():
		fmt.Fprintf(w, "  FAIL     %s: %d of %d cells predicted otherwise than expected (not probed)\n", s.Name, wrongOf(s.Cells), len(s.Cells))
	case s.Failed:
		fmt.Fprintf(w, "  FAIL     %s: %d of %d probes wrong\n", s.Name, wrongOf(s.Cells), len(s.Cells))
	case s.predicted():
		fmt.Fprintf(w, "  ok       %s: %d cells predicted as expected, not probed\n", s.Name, len(s.Cells))
	default:
		fmt.Fprintf(w, "  ok       %s: %d probes\n", s.Name, len(s.Cells))
	}
}

func wrongOf(cells []CellResult) int {
	n := 0
	for _, c := range cells {
		if !c.OK {
			n++
		}
	}
	return n
}

type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Properties []junitProperty `xml:"properties>property"`
	Cases      []junitCase     `xml:"testcase"`
}

// junitProperty is a suite's property: its mode, probed or predict-only.
type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	ClassName string        `xml:"classname,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	Skipped   *junitSkipped `xml:"skipped,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

type junitSkipped struct {
	Message string `xml:"message,attr"`
}

// WriteJUnit writes a JUnit XML report: a suite per scenario, with its mode as the property
// netpact.mode (probed or predict-only), a case per step; a failing case's message names the
// wrong cells.
func WriteJUnit(file string, results []*Result) error {
	var out junitSuites
	for _, r := range results {
		s := junitSuite{Name: r.Scenario, Properties: []junitProperty{{Name: "netpact.mode", Value: string(r.Mode)}}}
		if r.Error != "" {
			s.Tests, s.Failures = 1, 1
			s.Cases = append(s.Cases, junitCase{Name: "setup", ClassName: r.File, Failure: &junitFailure{Message: r.Error, Text: r.Error}})
		}
		for i := range r.Steps {
			st := &r.Steps[i]
			c := junitCase{Name: st.Name, ClassName: r.File}
			s.Tests++
			switch {
			case st.Pending != "":
				s.Skipped++
				c.Skipped = &junitSkipped{Message: st.Pending}
			case st.Failed:
				s.Failures++
				var wrong []string
				for _, cell := range st.Cells {
					if !cell.OK {
						line := fmt.Sprintf("%s -> %s %s: %s", cell.From, cell.To, cell.Port, st.answers(cell))
						if cell.Note != "" {
							line += " (" + cell.Note + ")"
						}
						wrong = append(wrong, line)
					}
				}
				msg := st.Error
				if msg == "" {
					msg = strings.Join(wrong, "; ")
				}
				var text strings.Builder
				if st.Error == "" {
					Tables(&text, st)
				}
				c.Failure = &junitFailure{Message: msg, Text: text.String()}
			}
			s.Cases = append(s.Cases, c)
		}
		out.Suites = append(out.Suites, s)
	}
	data, err := xml.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("write junit: %w", err)
	}
	if err := os.WriteFile(file, append([]byte(xml.Header), data...), 0o644); err != nil {
		return fmt.Errorf("write junit: %w", err)
	}
	return nil
}

// Summary writes what a person reads first: a line per scenario and per step, ok, pending or
// FAIL with the probes behind it, then the Failures, then the totals.
func Summary(w io.Writer, results []*Result) {
	if predictedOnly(results) {
		fmt.Fprintln(w, predictOnlyNote)
	}
	for _, r := range results {
		scenarioLine(w, r)
		for i := range r.Steps {
			stepLine(w, &r.Steps[i])
		}
	}
	Failures(w, results)
	Totals(w, results)
}

// Totals writes the line that ends a run: scenarios, steps by status, probes (or cells predicted
// and not probed) and wrong cells.
func Totals(w io.Writer, results []*Result) {
	var steps, ok, pending, failed, probes, predicted, wrong int
	for _, r := range results {
		for i := range r.Steps {
			s := &r.Steps[i]
			steps++
			if r.Mode == PredictOnly {
				predicted += len(s.Cells)
			} else {
				probes += len(s.Cells)
			}
			wrong += wrongOf(s.Cells)
			switch {
			case s.Pending != "":
				pending++
			case s.Failed || s.Error != "":
				failed++
			default:
				ok++
			}
		}
	}
	for _, r := range results {
		for i := range r.Steps {
			if s := &r.Steps[i]; s.Pending != "" {
				fmt.Fprintf(w, "pending (not checked): %s / %s: %s\n", r.Scenario, s.Name, s.Pending)
			}
		}
	}
	cells := fmt.Sprintf("%d probes", probes)
	switch {
	case predictedOnly(results):
		cells = fmt.Sprintf("%d cells predicted, none probed", predicted)
	case predicted > 0:
		cells += fmt.Sprintf(", %d cells predicted and not probed", predicted)
	}
	fmt.Fprintf(w, "%d scenarios, %d steps: %d ok, %d pending, %d failed; %s, %d wrong\n",
		len(results), steps, ok, pending, failed, cells, wrong)
}

// PendingSteps counts the steps that were not checked.
func PendingSteps(results []*Result) int {
	n := 0
	for _, r := range results {
		for i := range r.Steps {
			if r.Steps[i].Pending != "" {
				n++
			}
		}
	}
	return n
}
