package matrix

import (
	"errors"
	"fmt"
	"html/template"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/netpact/netpact/policy"
)

// HTML writes the plan as one self-contained page (inline CSS, nothing fetched): the summary, the
// changes as Markdown lists them, the groups of more than one pod, and for every port the before
// and after matrices side by side, sources down and destinations across, each cell coloured by
// its verdict and titled with what it is and why; the changed cells have a magenta border in
// both. Pod names and rule text are escaped: they are tenant input.
func (p *Plan) HTML(w io.Writer) error {
	page, err := p.htmlPage()
	if err != nil {
		return err
	}
	t, err := planTemplate()
	if err != nil {
		return fmt.Errorf("parse plan page template: %w", err)
	}
	if err := t.Execute(w, page); err != nil {
		return fmt.Errorf("write plan page: %w", err)
	}
	return nil
}

// errNoMatrix is a plan that lacks one of its two matrices: NewPlan always sets both.
var errNoMatrix = errors.New("plan has no before or no after matrix")

type htmlPage struct {
	Base, Head, Summary string
	Changes             []htmlChange
	Groups              []Group
	Legend              []htmlLegend
	Ports               []htmlPort
	// Verdicts is the CSS of the palette: a rule per mark's class.
	Verdicts template.CSS
}

type htmlChange struct {
	Port, Kind, From, To                 string
	Before, After, RuleAfter, RuleBefore string
}

type htmlLegend struct {
	legendEntry
	Class string
}

type htmlPort struct {
	Port          string
	Before, After htmlMatrix
}

// htmlMatrix is one side's table of a port: Grid's rows and columns.
type htmlMatrix struct {
	Caption string
	Tos     []string
	Rows    []htmlRow
}

type htmlRow struct {
	From  string
	Cells []htmlCell
}

type htmlCell struct {
	Mark, Class, Title string
	Changed            bool
}

func (p *Plan) htmlPage() (*htmlPage, error) {
	if p.Before == nil || p.After == nil {
		return nil, errNoMatrix
	}
	entries, err := legend()
	if err != nil {
		return nil, err
	}
	page := &htmlPage{Base: p.Base, Head: p.Head, Summary: p.Summary()}
	var css strings.Builder
	for _, e := range entries {
		colour, class := swatch(e.Mark)
		page.Legend = append(page.Legend, htmlLegend{legendEntry: e, Class: class})
		fmt.Fprintf(&css, ".v-%s { background: %s; }\n", class, hex(colour))
	}
	fmt.Fprintf(&css, ".v-unknown { background: %s; }\ntable.matrix td.changed { border-color: %s; }\n", hex(unknownColour), hex(highlight))
	// Built from the palette's constants alone, never from the plan: safe as CSS.
	page.Verdicts = template.CSS(css.String())

	changed := map[Key]bool{}
	for _, c := range p.Changes {
		changed[c.Key] = true
		page.Changes = append(page.Changes, htmlChange{Port: c.Port.String(), Kind: c.Kind.Words(), From: c.From, To: c.To,
			Before: What(c.Before), After: What(c.After), RuleAfter: Why(c.After), RuleBefore: Why(c.Before)})
	}
	for _, g := range p.Groups {
		if len(g.Pods) > 1 {
			page.Groups = append(page.Groups, g)
		}
	}
	for _, port := range p.planPorts() {
		page.Ports = append(page.Ports, htmlPort{Port: port.String(),
			Before: htmlTable(p.Before, port, changed, "before ("+p.Base+")"),
			After:  htmlTable(p.After, port, changed, "after ("+p.Head+")")})
	}
	return page, nil
}

// planPorts are the after matrix's ports and those only the before matrix has, by number.
func (p *Plan) planPorts() []Port {
	ports := p.After.Ports()
	for _, port := range p.Before.Ports() {
		if !slices.Contains(ports, port) {
			ports = append(ports, port)
		}
	}
	slices.SortFunc(ports, Port.compare)
	return ports
}

func htmlTable(m *Matrix[policy.Outcome], port Port, changed map[Key]bool, caption string) htmlMatrix {
	froms, tos := m.Grid(port)
	t := htmlMatrix{Caption: caption, Tos: tos}
	for _, from := range froms {
		row := htmlRow{From: from}
		for _, to := range tos {
			k := Key{From: from, To: to, Port: port}
			cell := htmlCell{Mark: notProbed, Title: fmt.Sprintf("%s -> %s %s: not probed", from, to, port)}
			if c := m.Get(k); c != nil {
				cell = htmlCell{Mark: c.Predicted.Mark(), Changed: changed[k],
					Title: fmt.Sprintf("%s -> %s %s: %s\nby %s", from, to, port, What(c), Why(c))}
			}
			_, cell.Class = swatch(cell.Mark)
			row.Cells = append(row.Cells, cell)
		}
		t.Rows = append(t.Rows, row)
	}
	return t
}

var planTemplate = sync.OnceValues(func() (*template.Template, error) {
	return template.New("plan").Parse(planPage)
})

// planPage lays the matrices out as tables whose cells stand apart (border-spacing), so that each
// changed cell's border is a ring of its own: a screenshot shows one region of the highlight per
// changed cell and side.
const planPage = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>netpact plan: {{.Base}} to {{.Head}}</title>
<style>
body { margin: 16px; font: 14px/1.4 sans-serif; color: #202020; background: #ffffff; }
h1 { font-size: 20px; margin: 0 0 8px; }
h2 { font-size: 17px; margin: 24px 0 8px; }
h3 { font-size: 15px; margin: 16px 0 4px; }
code, .mono { font-family: monospace; }
.summary { font-weight: bold; }
table.changes { border-collapse: collapse; }
table.changes th, table.changes td { border: 1px solid #c0c0c0; padding: 2px 6px; text-align: left; vertical-align: top; }
table.changes td.kind { font-weight: bold; white-space: nowrap; }
.sides { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
table.matrix { border-collapse: separate; border-spacing: 3px; }
table.matrix caption { text-align: left; font-weight: bold; }
table.matrix th { font-weight: normal; font-family: monospace; padding: 0 2px; }
table.matrix th.from { text-align: right; }
table.matrix th.corner { vertical-align: bottom; }
table.matrix th.to { vertical-align: bottom; text-align: center; }
table.matrix th.to span { display: inline-block; writing-mode: vertical-rl; transform: rotate(180deg); }
table.matrix td { width: 22px; height: 22px; padding: 0; text-align: center; font-family: monospace;
  font-weight: bold; border: 3px solid transparent; }
table.matrix td.empty { width: auto; font-weight: normal; font-family: inherit; }
ul.legend { list-style: none; padding: 0; }
ul.legend li { margin: 2px 0; }
ul.legend .swatch { display: inline-block; width: 20px; height: 20px; line-height: 20px; text-align: center;
  font-family: monospace; font-weight: bold; margin-right: 6px; }
{{.Verdicts}}
</style>
</head>
<body>
<h1>netpact plan: <code>{{.Base}}</code> to <code>{{.Head}}</code></h1>
<p>The connectivity matrix the policy engine predicts for each.</p>
<p class="summary">{{.Summary}}</p>
{{- if .Changes}}
<h2>Changes</h2>
<table class="changes">
<tr><th>port</th><th>change</th><th>from</th><th>to</th><th>before</th><th>after</th><th>rule after</th><th>rule before</th></tr>
{{- range .Changes}}
<tr><td class="mono">{{.Port}}</td><td class="kind">{{.Kind}}</td><td><code>{{.From}}</code></td><td><code>{{.To}}</code></td><td>{{.Before}}</td><td>{{.After}}</td><td>{{.RuleAfter}}</td><td>{{.RuleBefore}}</td></tr>
{{- end}}
</table>
{{- end}}
{{- if .Groups}}
<h2>Groups</h2>
<p>Pods of a namespace with the same labels, service account and ports are one row:</p>
<ul>
{{- range .Groups}}
<li><code>{{.Name}}</code>: {{range $i, $pod := .Pods}}{{if $i}}, {{end}}<code>{{$pod}}</code>{{end}}</li>
{{- end}}
</ul>
{{- end}}
<h2>Matrices</h2>
<p>Sources down, destinations across; hover over a cell for what it is and the rule behind it. A changed cell has a thick magenta border in both matrices.</p>
<ul class="legend">
{{- range .Legend}}
<li><span class="swatch v-{{.Class}}">{{.Mark}}</span>{{.Meaning}}</li>
{{- end}}
</ul>
{{- range .Ports}}
<h3>{{.Port}}</h3>
<div class="sides">
{{template "matrix" .Before}}
{{template "matrix" .After}}
</div>
{{- end}}
</body>
</html>
{{define "matrix"}}<table class="matrix">
<caption>{{.Caption}}</caption>
{{- if .Rows}}
<tr><th class="corner">from \ to</th>{{range .Tos}}<th class="to"><span>{{.}}</span></th>{{end}}</tr>
{{- range .Rows}}
<tr><th class="from">{{.From}}</th>{{range .Cells}}<td class="v-{{.Class}}{{if .Changed}} changed{{end}}" title="{{.Title}}">{{.Mark}}</td>{{end}}</tr>
{{- end}}
{{- else}}
<tr><td class="empty">no cells on this port</td></tr>
{{- end}}
</table>{{end}}
`
