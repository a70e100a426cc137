package matrix_test

import (
	"strings"
	"testing"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/policy/matrix"
)

func httpCell(k matrix.Key, rules ...ciliumv2.PortRuleHTTP) matrix.Cell[policy.Outcome] {
	return matrix.Cell[policy.Outcome]{Key: k, Predicted: policy.OutcomeL7, Proxy: policy.ParserHTTP, L7: &policy.L7Policy{HTTP: rules}}
}

// TestPlanKinds: which way each kind of cell change goes.
func TestPlanKinds(t *testing.T) {
	get := ciliumv2.PortRuleHTTP{Method: "GET", Path: "/public"}
	post := ciliumv2.PortRuleHTTP{Method: "POST", Path: "/api"}
	cell := func(k matrix.Key, o policy.Outcome) matrix.Cell[policy.Outcome] {
		return matrix.Cell[policy.Outcome]{Key: k, Predicted: o}
	}
	cases := []struct {
		name          string
		before, after func(matrix.Key) matrix.Cell[policy.Outcome]
		want          matrix.ChangeKind
	}{
		{"drop to pass", func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeDefaultDenied) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeAllowed) }, matrix.NewlyAllowed},
		{"drop to proxy", func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeDenied) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, get) }, matrix.NewlyAllowed},
		{"proxy to pass", func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, get) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeAllowed) }, matrix.NewlyAllowed},
		{"pass to proxy", func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeAllowed) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, get) }, matrix.NewlyDenied},
		{"pass to toFQDNs", func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeAllowed) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeOnceResolved) }, matrix.NewlyDenied},
		{"a rule added", func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, get) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, get, post) }, matrix.NewlyAllowed},
		{"a rule removed", func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, get, post) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, post) }, matrix.NewlyDenied},
		{"a rule replaced", func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, get) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return httpCell(k, post) }, matrix.Altered},
		{"pass now audited", func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeAllowed) },
			func(k matrix.Key) matrix.Cell[policy.Outcome] { return cell(k, policy.OutcomeAudited) }, matrix.Altered},
	}
	before, after := matrix.New[policy.Outcome](), matrix.New[policy.Outcome]()
	for i, c := range cases {
		k := matrix.Key{From: c.name, To: "dst", Port: matrix.Port{Number: uint16(1000 + i), Protocol: policy.ProtoTCP}}
		before.Set(c.before(k))
		after.Set(c.after(k))
	}
	// Unchanged: the same verdict by another rule, and the same rules in another order.
	k := matrix.Key{From: "same", To: "dst", Port: matrix.Port{Number: 1, Protocol: policy.ProtoTCP}}
	before.Set(matrix.Cell[policy.Outcome]{Key: k, Predicted: policy.OutcomeAllowed, Rule: "a (a.yaml:1:1)"})
	after.Set(matrix.Cell[policy.Outcome]{Key: k, Predicted: policy.OutcomeAllowed, Rule: "b (b.yaml:9:1)"})
	k.Port.Number = 2
	before.Set(httpCell(k, get, post))
	after.Set(httpCell(k, post, get))
	p := matrix.NewPlan("base", "head", nil, before, after)
	got := map[string]matrix.ChangeKind{}
	for _, c := range p.Changes {
		got[c.From] = c.Kind
	}
	for _, c := range cases {
		if got[c.name] != c.want {
			t.Errorf("%s: %q, want %q", c.name, got[c.name], c.want)
		}
	}
	if len(p.Changes) != len(cases) {
		t.Errorf("%d changes, want %d: unchanged cells listed", len(p.Changes), len(cases))
	}
	if s := p.Summary(); s != "9 cells change: 4 newly allowed, 3 newly denied, 2 changed otherwise" {
		t.Errorf("summary %q", s)
	}
}

// TestPlanMarkdownEscapes: pod names and rules are tenant input; they cannot end a table cell or
// add markup to the comment.
func TestPlanMarkdownEscapes(t *testing.T) {
	k := matrix.Key{From: "evil/a|b`<img src=x>", To: "x/y", Port: matrix.Port{Number: 80, Protocol: policy.ProtoTCP}}
	before, after := matrix.New[policy.Outcome](), matrix.New[policy.Outcome]()
	before.Set(matrix.Cell[policy.Outcome]{Key: k, Predicted: policy.OutcomeDefaultDenied})
	after.Set(httpCell(k, ciliumv2.PortRuleHTTP{Method: "GET", Path: "/a|b*<script>"}))
	var b strings.Builder
	matrix.NewPlan("base", "head", nil, before, after).Markdown(&b)
	out := b.String()
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "| newly allowed") && strings.Count(strings.ReplaceAll(line, `\|`, ""), "|") != 8 {
			t.Errorf("a name or rule splits the row into more cells: %s", line)
		}
	}
	// A name is a code span, which GitHub shows literally; a rule is text, escaped.
	if strings.Contains(out, "<script>") || !strings.Contains(out, "| `evil/a\\|b'<img src=x>` |") {
		t.Errorf("markup passes through:\n%s", out)
	}
}
