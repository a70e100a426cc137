package matrix

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/policy"
)

// ChangeKind says which way a changed cell moved.
type ChangeKind string

const (
	// NewlyAllowed: the head lets through traffic the base did not (a drop became a pass or a
	// proxy verdict, a proxy verdict became a pass, or a proxy gained a rule and lost none).
	NewlyAllowed ChangeKind = "newly-allowed"
	// NewlyDenied: the head lets through less than the base.
	NewlyDenied ChangeKind = "newly-denied"
	// Altered: neither, or both at once (a proxy's rules replaced by others, a pass now reported
	// AUDIT, a flow handed to another proxy).
	Altered ChangeKind = "changed"
)

// Words is the kind as prose names it.
func (k ChangeKind) Words() string { return strings.ReplaceAll(string(k), "-", " ") }

// order puts newly allowed cells first: they are what a reviewer must approve.
func (k ChangeKind) order() int {
	return map[ChangeKind]int{NewlyAllowed: 0, NewlyDenied: 1, Altered: 2}[k]
}

// Change is a cell whose answer differs between two predicted matrices of one cluster.
type Change struct {
	Key
	Kind   ChangeKind            `json:"change"`
	Before *Cell[policy.Outcome] `json:"-"`
	After  *Cell[policy.Outcome] `json:"-"`
}

// Group is pods of one namespace with the same labels, service account and ports: the engine
// cannot tell them apart, so a matrix shows them once, under Name.
type Group struct {
	Name string   `json:"name"`
	Pods []string `json:"pods"`
}

// Plan is what a change of policies does to a cluster's predicted connectivity matrix.
type Plan struct {
	// Base and Head name the two policy sets: revisions, or folders.
	Base    string                  `json:"base"`
	Head    string                  `json:"head"`
	Groups  []Group                 `json:"groups"`
	Before  *Matrix[policy.Outcome] `json:"-"`
	After   *Matrix[policy.Outcome] `json:"-"`
	Changes []Change                `json:"-"`
}

// NewPlan compares two matrices predicted over the same endpoints and ports: every cell whose
// answer differs (Same) is a change, in port order, newly allowed first, then in the matrix's
// order. A cell from a group of several pods to itself is traffic between those pods, not
// loopback: it counts.
func NewPlan(base, head string, groups []Group, before, after *Matrix[policy.Outcome]) *Plan {
	p := &Plan{Base: base, Head: head, Groups: groups, Before: before, After: after}
	several := map[string]bool{}
	for _, g := range groups {
		several[g.Name] = len(g.Pods) > 1
	}
	for _, a := range after.Cells() {
		b := before.Get(a.Key)
		if b == nil || (a.Loopback() && !several[a.From]) || Same(b, a) {
			continue
		}
		p.Changes = append(p.Changes, Change{Key: a.Key, Kind: classify(b, a), Before: b, After: a})
	}
	slices.SortStableFunc(p.Changes, func(x, y Change) int {
		if c := x.Port.compare(y.Port); c != 0 {
			return c
		}
		return x.Kind.order() - y.Kind.order()
	})
	return p
}

// Count is the number of changes of a kind.
func (p *Plan) Count(k ChangeKind) int {
	n := 0
	for _, c := range p.Changes {
		if c.Kind == k {
			n++
		}
	}
	return n
}

// Summary is the plan in one line: "N cells change: A newly allowed, D newly denied", and how
// many changed otherwise when any did.
func (p *Plan) Summary() string {
	if len(p.Changes) == 0 {
		return "no cell changes"
	}
	verb := "cells change"
	if len(p.Changes) == 1 {
		verb = "cell changes"
	}
	s := fmt.Sprintf("%d %s: %d newly allowed, %d newly denied", len(p.Changes), verb, p.Count(NewlyAllowed), p.Count(NewlyDenied))
	if n := p.Count(Altered); n > 0 {
		s += fmt.Sprintf(", %d changed otherwise", n)
	}
	return s
}

// Same reports whether two cells give the same answer: the same verdict and, for a proxy
// verdict, the same rules (HTTP requests, DNS names, Kafka roles per topic). Which rule decided
// does not count: moving a rule to another file changes no traffic.
func Same(a, b *Cell[policy.Outcome]) bool {
	if a.Predicted != b.Predicted || a.Resolved != b.Resolved {
		return false
	}
	return slices.Equal(l7Terms(a), l7Terms(b))
}

// permissive ranks verdicts by how much traffic they let through: drops, proxy verdicts (some
// requests), toFQDNs (once a name is resolved), passes.
func permissive(o policy.Outcome) int {
	switch o {
	case policy.OutcomeDefaultDenied, policy.OutcomeDenied, "":
		return 0
	case policy.OutcomeL7, policy.OutcomeKafka, policy.OutcomeDNS:
		return 1
	case policy.OutcomeOnceResolved:
		return 2
	}
	return 3
}

func classify(before, after *Cell[policy.Outcome]) ChangeKind {
	b, a := permissive(before.Predicted), permissive(after.Predicted)
	switch {
	case a > b:
		return NewlyAllowed
	case a < b:
		return NewlyDenied
	case before.Predicted != after.Predicted || before.Resolved != after.Resolved:
		return Altered
	}
	// The same proxy with other rules: what the head adds may open, what it drops closes.
	bt, at := l7Terms(before), l7Terms(after)
	added := slices.ContainsFunc(at, func(t string) bool { return !slices.Contains(bt, t) })
	removed := slices.ContainsFunc(bt, func(t string) bool { return !slices.Contains(at, t) })
	switch {
	case added && !removed:
		return NewlyAllowed
	case removed && !added:
		return NewlyDenied
	}
	return Altered
}

// l7Terms are a proxy cell's rules as sorted, comparable phrases: one per HTTP rule and DNS
// name, and one per Kafka role and topic the rules allow.
func l7Terms(c *Cell[policy.Outcome]) []string {
	var out []string
	if c.L7 != nil {
		for _, r := range c.L7.HTTP {
			out = append(out, describeHTTP(r))
		}
		for _, r := range c.L7.DNS {
			if r.MatchName != "" {
				out = append(out, "name "+r.MatchName)
			}
			if r.MatchPattern != "" {
				out = append(out, "pattern "+r.MatchPattern)
			}
		}
	}
	for _, k := range c.Kafka {
		if k.Allowed {
			topic := k.Topic
			if topic == "*" {
				topic = "any other topic"
			}
			out = append(out, k.Role+" "+topic)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func describeHTTP(r ciliumv2.PortRuleHTTP) string {
	method, path := r.Method, r.Path
	if method == "" {
		method = "any method"
	}
	if path == "" {
		path = "any path"
	}
	s := method + " " + path
	if r.Host != "" {
		s += " host " + r.Host
	}
	for _, h := range r.Headers {
		s += " header " + h
	}
	for _, h := range r.HeaderMatches {
		s += fmt.Sprintf(" header %s=%s", h.Name, h.Value)
		if h.Mismatch != "" {
			s += " (on mismatch " + strings.ToLower(h.Mismatch) + ")"
		}
	}
	return s
}

// What says what a cell is, in a few words: its verdict and, for a proxy or toFQDNs cell, the
// rules or the name it depends on.
func What(c *Cell[policy.Outcome]) string {
	switch c.Predicted {
	case policy.OutcomeAllowed:
		return "allowed"
	case policy.OutcomeDefaultDenied:
		return "dropped (default deny)"
	case policy.OutcomeDenied:
		return "dropped (deny rule)"
	case policy.OutcomeAudited:
		return "allowed, reported AUDIT"
	case policy.OutcomeOnceResolved:
		return fmt.Sprintf("allowed once %s is resolved (toFQDNs)", c.Resolved)
	case policy.OutcomeL7, policy.OutcomeKafka, policy.OutcomeDNS:
		terms := l7Terms(c)
		rules := strings.Join(terms, "; ")
		if len(terms) == 0 {
			rules = map[policy.Outcome]string{policy.OutcomeL7: "any request", policy.OutcomeDNS: "no name",
				policy.OutcomeKafka: "no topic"}[c.Predicted]
		}
		return fmt.Sprintf("%s proxy: %s", c.Proxy.Name(), rules)
	case "":
		return "not probed"
	}
	return string(c.Predicted)
}

// Why names the rule behind a cell's answer with its file and line: the deciding rule, the
// policy that switched default deny on, the audited rule, or that no policy enforces it.
func Why(c *Cell[policy.Outcome]) string {
	switch {
	case c.Predicted == policy.OutcomeAudited && c.AuditedBy != "":
		return "would be dropped by " + c.AuditedBy
	case c.Rule != "":
		return c.Rule
	case c.EnforcedBy != "":
		return "default deny of " + c.EnforcedBy
	case c.Predicted == policy.OutcomeAllowed:
		return "no policy enforces this traffic"
	}
	return c.Reason
}

// Text prints the plan: its summary, then each change with what it was and is and why, then the
// groups of more than one pod; verbose adds both matrices, a table per port.
func (p *Plan) Text(w io.Writer, verbose bool) {
	fmt.Fprintf(w, "plan: %s -> %s\n%s\n", p.Base, p.Head, p.Summary())
	var port Port
	for i, c := range p.Changes {
		if i == 0 || c.Port != port {
			port = c.Port
			fmt.Fprintf(w, "\n%s\n", port)
		}
		fmt.Fprintf(w, "  %s: %s -> %s\n", c.Kind.Words(), c.From, c.To)
		fmt.Fprintf(w, "    before: %s; %s\n", What(c.Before), Why(c.Before))
		fmt.Fprintf(w, "    after:  %s; %s\n", What(c.After), Why(c.After))
	}
	p.textGroups(w)
	if verbose {
		fmt.Fprintf(w, "\nbefore (%s)\n", p.Base)
		p.Before.Table(w, "  ", Predicted)
		fmt.Fprintf(w, "after (%s)\n", p.Head)
		p.After.Table(w, "  ", Predicted)
	}
}

func (p *Plan) textGroups(w io.Writer) {
	first := true
	for _, g := range p.Groups {
		if len(g.Pods) < 2 {
			continue
		}
		if first {
			fmt.Fprintf(w, "\ngroups (pods of a namespace with the same labels, service account and ports)\n")
			first = false
		}
		fmt.Fprintf(w, "  %s: %s\n", g.Name, strings.Join(g.Pods, ", "))
	}
}

// Markdown prints the plan for a pull-request comment: the summary line, then a table per port,
// newly allowed cells first, each with what it was and is and the rules, file:line.
func (p *Plan) Markdown(w io.Writer) {
	fmt.Fprintf(w, "**%s**\n\n", p.Summary())
	fmt.Fprintf(w, "`netpact plan` from %s to %s: the connectivity matrix the policy engine predicts for each.\n", mdCode(p.Base), mdCode(p.Head))
	var port Port
	for i, c := range p.Changes {
		if i == 0 || c.Port != port {
			port = c.Port
			fmt.Fprintf(w, "\n#### %s\n\n", port)
			fmt.Fprintln(w, "| change | from | to | before | after | rule after | rule before |")
			fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", c.Kind.Words(), mdCode(c.From), mdCode(c.To),
			mdCell(What(c.Before)), mdCell(What(c.After)), mdCell(Why(c.After)), mdCell(Why(c.Before)))
	}
	var groups []string
	for _, g := range p.Groups {
		if len(g.Pods) > 1 {
			groups = append(groups, fmt.Sprintf("%s: %s", mdCode(g.Name), mdCell(strings.Join(g.Pods, ", "))))
		}
	}
	if len(groups) > 0 {
		fmt.Fprintf(w, "\nPods of a namespace with the same labels, service account and ports are one row:\n\n")
		for _, g := range groups {
			fmt.Fprintf(w, "- %s\n", g)
		}
	}
}

// mdCell escapes what would end a Markdown table cell or start markup.
func mdCell(s string) string {
	r := strings.NewReplacer("|", `\|`, "\n", " ", "<", "&lt;", ">", "&gt;", "*", `\*`, "_", `\_`, "`", "'")
	return r.Replace(s)
}

// mdCode is s as inline code; backticks inside are replaced, since a code span cannot escape them.
func mdCode(s string) string {
	return "`" + strings.NewReplacer("`", "'", "|", `\|`, "\n", " ").Replace(s) + "`"
}

// planSide is one answer of a change in the plan's JSON.
type planSide struct {
	Verdict policy.Outcome `json:"verdict"`
	What    string         `json:"what"`
	Rule    string         `json:"rule"`
	Reason  string         `json:"reason"`
}

func sideOf(c *Cell[policy.Outcome]) planSide {
	return planSide{Verdict: c.Predicted, What: What(c), Rule: Why(c), Reason: c.Reason}
}

// MarshalJSON writes the plan as `netpact plan -o json` prints it (docs/plan.md): the summary
// and its counts, the groups, every change with both answers, and both matrices.
func (p *Plan) MarshalJSON() ([]byte, error) {
	type change struct {
		Key
		Kind   ChangeKind `json:"change"`
		Before planSide   `json:"before"`
		After  planSide   `json:"after"`
	}
	out := struct {
		Base    string                  `json:"base"`
		Head    string                  `json:"head"`
		Summary string                  `json:"summary"`
		Counts  map[string]int          `json:"counts"`
		Groups  []Group                 `json:"groups"`
		Changes []change                `json:"changes"`
		Before  *Matrix[policy.Outcome] `json:"before"`
		After   *Matrix[policy.Outcome] `json:"after"`
	}{Base: p.Base, Head: p.Head, Summary: p.Summary(), Groups: p.Groups, Changes: []change{}, Before: p.Before, After: p.After,
		Counts: map[string]int{"changes": len(p.Changes), string(NewlyAllowed): p.Count(NewlyAllowed),
			string(NewlyDenied): p.Count(NewlyDenied), string(Altered): p.Count(Altered)}}
	if out.Groups == nil {
		out.Groups = []Group{}
	}
	for _, c := range p.Changes {
		out.Changes = append(out.Changes, change{Key: c.Key, Kind: c.Kind, Before: sideOf(c.Before), After: sideOf(c.After)})
	}
	return json.Marshal(out)
}
