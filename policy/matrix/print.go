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

// observedMark is a cell's mark in an observed table: the outcome, then "~" for loopback (not
// compared) or "!" where the cell's three answers disagree.
func observedMark[O Outcome](c *Cell[O]) string {
	switch {
	case c.Loopback():
		return c.Observed.Mark() + "~"
	case !c.Agrees(All):
		return c.Observed.Mark() + "!"
	}
	return c.Observed.Mark() + " "
}

// SideBySide prints, for each port, the expected, predicted and observed tables side by side
// (netpact test's form): every endpoint down and across, numbered; "-" where there is no cell,
// and in the observed table "!" after a cell that disagrees and "~" after a loopback cell.
func (m *Matrix[O]) SideBySide(w io.Writer, indent string) {
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
	for _, port := range byLabel(m.Ports()) {
		fmt.Fprintf(w, "%s%s\n", indent, port)
		fmt.Fprintf(w, "%s%-*s  %s  %s  %s\n", indent, width, `from \ to`,
			pad("expected", tableWidth), pad("predicted", tableWidth), pad("observed", tableWidth))
		fmt.Fprintf(w, "%s%-*s  %s  %s  %s\n", indent, width, "", pad(idx, tableWidth), pad(idx, tableWidth), idx)
		for i, from := range eps {
			var e, p, o strings.Builder
			for _, to := range eps {
				c := m.Get(Key{From: from, To: to, Port: port})
				if c == nil {
					e.WriteString(notProbed + " ")
					p.WriteString(notProbed + " ")
					o.WriteString(notProbed + " ")
					continue
				}
				e.WriteString(c.Expected.Mark() + " ")
				p.WriteString(c.Predicted.Mark() + " ")
				o.WriteString(observedMark(c))
			}
			fmt.Fprintf(w, "%s%-*s  %s  %s  %s  %d\n", indent, width, from, pad(e.String(), tableWidth), pad(p.String(), tableWidth), o.String(), i)
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

// Compact prints the observed answers as one table (a passing netpact test step's form): a
// numbered row per endpoint, and a column group per port holding only the endpoints that serve
// it, named by their row numbers; cells are marked as in SideBySide's observed table. It prints
// nothing and returns false when the table would be wider than maxWidth or longer than maxRows.
func (m *Matrix[O]) Compact(w io.Writer, indent string, maxWidth, maxRows int) bool {
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
					mark = observedMark(c)
				}
				cells.WriteString(pad(mark, cellWidth))
			}
			line += "  " + pad(cells.String(), g.width)
		}
		fmt.Fprintln(w, indent+strings.TrimRight(line, " "))
	}
	return true
}
