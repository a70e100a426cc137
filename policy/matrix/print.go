package matrix

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// notProbed marks a pair of endpoints the matrix has no cell for.
const notProbed = "-"

// Table prints one column of the matrix, a table per port by number: sources down, destinations
// across by name, each table holding only the endpoints that have a cell on its port (predict's
// form). Cells show their Mark, "-" where there is no cell.
func (m *Matrix[O]) Table(w io.Writer, indent string, col Column) {
	for _, port := range m.Ports() {
		froms, tos := m.Grid(port)
		fmt.Fprintf(w, "%s%s\n", indent, port)
		tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
		fmt.Fprint(tw, indent+`from \ to`)
		for _, to := range tos {
			fmt.Fprintf(tw, "\t%s", to)
		}
		fmt.Fprintln(tw)
		for _, from := range froms {
			fmt.Fprint(tw, indent+from)
			for _, to := range tos {
				mark := notProbed
				if c := m.Get(Key{From: from, To: to, Port: port}); c != nil {
					mark = c.Outcome(col).Mark()
				}
				fmt.Fprintf(tw, "\t%s", mark)
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
}

// Grid is the rows and columns of a port's table: the sources and the destinations that have a
// cell on the port, each in the order the cells first name them. Every rendering of a table
// (text, HTML, picture) lays it out from here and looks its cells up with Get.
func (m *Matrix[O]) Grid(port Port) (froms, tos []string) {
	for _, c := range m.Cells() {
		if c.Port != port {
			continue
		}
		if !slices.Contains(froms, c.From) {
			froms = append(froms, c.From)
		}
		if !slices.Contains(tos, c.To) {
			tos = append(tos, c.To)
		}
	}
	return froms, tos
}

// byLabel orders ports as netpact test has always listed them, by their text ("443/TCP" before
// "53/UDP"), so that its output does not move.
func byLabel(ports []Port) []Port {
	slices.SortFunc(ports, func(p, q Port) int { return strings.Compare(p.String(), q.String()) })
	return ports
}

// columnNames are the headings of the columns' tables, in the order they are printed.
var columnNames = []struct {
	col  Column
	name string
}{{Expected, "expected"}, {Predicted, "predicted"}, {Observed, "observed"}}

// Last is the rightmost of cols as tables print them: the one that carries the marks, what a
// run checked last (observed when it probed, predicted when it only predicted).
func (cols Column) Last() Column {
	last := Column(0)
	for _, c := range columnNames {
		if cols&c.col != 0 {
			last = c.col
		}
	}
	return last
}

// lastMark is a cell's mark in the last table of cols: the outcome, then "~" for loopback (not
// compared) or "!" where the cell's answers in cols disagree.
func lastMark[O Outcome](c *Cell[O], cols Column) string {
	o := c.Outcome(cols.Last()).Mark()
	switch {
	case c.Loopback():
		return o + "~"
	case !c.Agrees(cols):
		return o + "!"
	}
	return o + " "
}

// SideBySide prints, for each port, the tables of cols side by side (netpact test's form:
// expected, predicted and observed, or without observed when nothing was probed): every endpoint
// down and across, numbered; "-" where there is no cell, and in the last table "!" after a cell
// whose answers in cols disagree and "~" after a loopback cell.
func (m *Matrix[O]) SideBySide(w io.Writer, indent string, cols Column) {
	eps := m.Endpoints()
	width := 0
	for _, e := range eps {
		width = max(width, len(e))
	}
	tableWidth := len(eps)*2 + 1
	idx := ""
	for i := range eps {
		idx += fmt.Sprintf("%-2d", i%100)[:2]
	}
	var shown []Column
	var headings, numbers strings.Builder
	for _, c := range columnNames {
		if cols&c.col == 0 {
			continue
		}
		shown = append(shown, c.col)
		headings.WriteString("  " + pad(c.name, tableWidth))
		if c.col == cols.Last() {
			numbers.WriteString("  " + idx)
		} else {
			numbers.WriteString("  " + pad(idx, tableWidth))
		}
	}
	for _, port := range byLabel(m.Ports()) {
		fmt.Fprintf(w, "%s%s\n", indent, port)
		fmt.Fprintf(w, "%s%-*s%s\n", indent, width, `from \ to`, headings.String())
		fmt.Fprintf(w, "%s%-*s%s\n", indent, width, "", numbers.String())
		for i, from := range eps {
			tables := make([]strings.Builder, len(shown))
			for _, to := range eps {
				c := m.Get(Key{From: from, To: to, Port: port})
				for j, col := range shown {
					switch {
					case c == nil:
						tables[j].WriteString(notProbed + " ")
					case col == cols.Last():
						tables[j].WriteString(lastMark(c, cols))
					default:
						tables[j].WriteString(c.Outcome(col).Mark() + " ")
					}
				}
			}
			var line strings.Builder
			for j := range tables {
				if j == len(tables)-1 {
					line.WriteString("  " + tables[j].String())
				} else {
					line.WriteString("  " + pad(tables[j].String(), tableWidth))
				}
			}
			fmt.Fprintf(w, "%s%-*s%s  %d\n", indent, width, from, line.String(), i)
		}
	}
}

func pad(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat(" ", n-len(s))
}

// compactGroup is a port's columns in a compact table: the endpoints that serve it.
type compactGroup struct {
	port  Port
	to    []string
	width int
}

func (m *Matrix[O]) compactGroups(eps []string, cellWidth int) []compactGroup {
	var groups []compactGroup
	for _, port := range byLabel(m.Ports()) {
		g := compactGroup{port: port}
		for _, to := range eps {
			for _, from := range eps {
				if m.Get(Key{From: from, To: to, Port: port}) != nil {
					g.to = append(g.to, to)
					break
				}
			}
		}
		g.width = max(len(port.String()), len(g.to)*cellWidth)
		groups = append(groups, g)
	}
	return groups
}

// Compact prints the answers of the last of cols (Column.Last: observed when a run probed) as one
// table (a passing netpact test step's form): a numbered row per endpoint, and a column group per
// port holding only the endpoints that serve it, named by their row numbers; cells are marked as
// in SideBySide's last table. It prints nothing and returns false when the table would be wider
// than maxWidth or longer than maxRows.
func (m *Matrix[O]) Compact(w io.Writer, indent string, cols Column, maxWidth, maxRows int) bool {
	eps := m.Endpoints()
	row := map[string]int{}
	name := 0
	for i, e := range eps {
		row[e] = i
		name = max(name, len(e))
	}
	num := len(fmt.Sprint(len(eps) - 1))
	cellWidth := max(2, num+1)
	groups := m.compactGroups(eps, cellWidth)
	width := len(indent) + num + 1 + name
	for _, g := range groups {
		width += 2 + g.width
	}
	if width > maxWidth || len(eps) > maxRows {
		return false
	}
	ports, numbers := pad(`from \ to`, num+1+name), strings.Repeat(" ", num+1+name)
	for _, g := range groups {
		var n strings.Builder
		for _, to := range g.to {
			n.WriteString(pad(fmt.Sprint(row[to]), cellWidth))
		}
		ports += "  " + pad(g.port.String(), g.width)
		numbers += "  " + pad(n.String(), g.width)
	}
	fmt.Fprintln(w, indent+strings.TrimRight(ports, " "))
	fmt.Fprintln(w, indent+strings.TrimRight(numbers, " "))
	for i, from := range eps {
		line := fmt.Sprintf("%*d %-*s", num, i, name, from)
		for _, g := range groups {
			var cells strings.Builder
			for _, to := range g.to {
				mark := notProbed + " "
				if c := m.Get(Key{From: from, To: to, Port: g.port}); c != nil {
					mark = lastMark(c, cols)
				}
				cells.WriteString(pad(mark, cellWidth))
			}
			line += "  " + pad(cells.String(), g.width)
		}
		fmt.Fprintln(w, indent+strings.TrimRight(line, " "))
	}
	return true
}
