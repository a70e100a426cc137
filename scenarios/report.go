package scenarios

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strings"
)

// Tables prints, for each port of a step, the expected, predicted and observed matrices side by
// side: "." allowed, "X" blocked (timed out), "R" refused, "4" HTTP 403, "-" not probed; a cell
// that disagrees is marked with "!" in the observed table, loopback cells with "~" (not compared).
func Tables(w io.Writer, sr *StepResult) {
	// Rows and columns are the pods in the scenario's order (cells list sources in that order).
	var pods []string
	seen := map[string]bool{}
	var matrix []CellResult
	for _, c := range sr.Cells {
		if !c.Cell.Explicit {
			matrix = append(matrix, c)
		}
	}
	for _, pass := range []bool{true, false} {
		for _, c := range matrix {
			p := c.To
			if pass {
				p = c.From
			}
			if !seen[p] {
				seen[p] = true
				pods = append(pods, p)
			}
		}
	}
	for _, port := range portsOf(matrix) {
		cell := map[[2]string]*CellResult{}
		for i := range matrix {
			c := &matrix[i]
			if c.Port == port {
				cell[[2]string{c.From, c.To}] = c
			}
		}
		width := 0
		for _, p := range pods {
			width = max(width, len(p))
		}
		fmt.Fprintf(w, "  %s\n", port)
		header := func(title string) string {
			s := title + strings.Repeat(" ", max(0, len(pods)*2+1-len(title)))
			return s
		}
		fmt.Fprintf(w, "  %-*s  %s  %s  %s\n", width, "from \\ to", header("expected"), header("predicted"), header("observed"))
		idx := ""
		for i := range pods {
			idx += fmt.Sprintf("%-2d", i%100)[:2]
		}
		fmt.Fprintf(w, "  %-*s  %s  %s  %s\n", width, "", pad(idx, len(pods)*2+1), pad(idx, len(pods)*2+1), idx)
		for i, from := range pods {
			var e, p, o strings.Builder
			for _, to := range pods {
				c, ok := cell[[2]string{from, to}]
				switch {
				case !ok:
					e.WriteString("- ")
					p.WriteString("- ")
					o.WriteString("- ")
				default:
					e.WriteString(c.Expected.Mark() + " ")
					p.WriteString(c.Predicted.Mark() + " ")
					mark := " "
					if c.Loopback {
						mark = "~"
					} else if !c.OK {
						mark = "!"
					}
					o.WriteString(c.Observed.Mark() + mark)
				}
			}
			fmt.Fprintf(w, "  %-*s  %s  %s  %s  %d\n", width, from, pad(e.String(), len(pods)*2+1), pad(p.String(), len(pods)*2+1), o.String(), i)
		}
	}
	if len(matrix) > 0 {
		fmt.Fprintln(w, `  "." allowed  "X" blocked (timed out)  "R" refused  "4" HTTP 403  "-" not probed  "!" disagrees  "~" loopback, not compared`)
	}
	for _, c := range sr.Cells {
		if c.Cell.Explicit {
			mark := "ok   "
			if !c.OK {
				mark = "WRONG"
			}
			fmt.Fprintf(w, "  probe %s %s: expected %s, predicted %s, observed %s\n", mark, c.Cell, c.Expected, c.Predicted, c.Observed)
		}
	}
}

func pad(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat(" ", n-len(s))
}

// Print writes a human summary of results; failing steps get their tables, their wrong cells
// and the flow events of those probes.
func Print(w io.Writer, results []*Result, verbose bool) {
	for _, r := range results {
		status := "ok"
		if r.Failed() {
			status = "FAIL"
		}
		fmt.Fprintf(w, "%s  %s (%s)\n", status, r.Scenario, r.File)
		if r.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", r.Error)
		}
		for i := range r.Steps {
			s := &r.Steps[i]
			switch {
			case s.Pending != "":
				fmt.Fprintf(w, "  pending  %s: %s\n", s.Name, s.Pending)
				continue
			case s.Error != "":
				fmt.Fprintf(w, "  FAIL     %s: %s\n", s.Name, s.Error)
				continue
			case s.Failed:
				fmt.Fprintf(w, "  FAIL     %s\n", s.Name)
			default:
				fmt.Fprintf(w, "  ok       %s (%d probes)\n", s.Name, len(s.Cells))
				if !verbose {
					continue
				}
			}
			Tables(w, s)
			if !s.Failed {
				for _, f := range s.Flows {
					fmt.Fprintf(w, "  flow: %s\n", f)
				}
				continue
			}
			for _, c := range s.Cells {
				if !c.OK {
					fmt.Fprintf(w, "  wrong: %s: expected %s, predicted %s, observed %s", c.Cell, c.Expected, c.Predicted, c.Observed)
					if c.Rule != "" {
						fmt.Fprintf(w, " (engine: %s)", c.Rule)
					}
					fmt.Fprintln(w)
				}
			}
			for _, f := range s.Flows {
				fmt.Fprintf(w, "  flow: %s\n", f)
			}
		}
	}
}

type junitSuites struct {
	XMLName xml.Name     `xml:"testsuites"`
	Suites  []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Cases    []junitCase `xml:"testcase"`
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

// WriteJUnit writes a JUnit XML report: a suite per scenario, a case per step; a failing case's
// message names the wrong cells.
func WriteJUnit(file string, results []*Result) error {
	var out junitSuites
	for _, r := range results {
		s := junitSuite{Name: r.Scenario}
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
						wrong = append(wrong, fmt.Sprintf("%s -> %s %s: expected %s, predicted %s, observed %s", cell.From, cell.To, cell.Port, cell.Expected, cell.Predicted, cell.Observed))
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
// FAIL with the probes behind it, then the totals.
func Summary(w io.Writer, results []*Result) {
	var steps, ok, pending, failed, probes, wrong int
	for _, r := range results {
		status := "ok"
		if r.Failed() {
			status = "FAIL"
		}
		fmt.Fprintf(w, "%-4s  %s (%s)\n", status, r.Scenario, r.File)
		if r.Error != "" {
			fmt.Fprintf(w, "      error: %s\n", r.Error)
		}
		for i := range r.Steps {
			s := &r.Steps[i]
			steps++
			bad := 0
			for _, c := range s.Cells {
				if !c.OK {
					bad++
				}
			}
			probes += len(s.Cells)
			wrong += bad
			switch {
			case s.Pending != "":
				pending++
				fmt.Fprintf(w, "  pending  %s: %s\n", s.Name, s.Pending)
			case s.Error != "":
				failed++
				fmt.Fprintf(w, "  FAIL     %s: %s\n", s.Name, s.Error)
			case s.Failed:
				failed++
				fmt.Fprintf(w, "  FAIL     %s: %d of %d probes wrong\n", s.Name, bad, len(s.Cells))
			default:
				ok++
				fmt.Fprintf(w, "  ok       %s: %d probes\n", s.Name, len(s.Cells))
			}
		}
	}
	fmt.Fprintf(w, "%d scenarios, %d steps: %d ok, %d pending, %d failed; %d probes, %d wrong\n",
		len(results), steps, ok, pending, failed, probes, wrong)
}
