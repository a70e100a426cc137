package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a policy bundle, located as precisely as the input allows.
type Error struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
	// Object is "Kind namespace/name" (or "Kind name" for cluster-scoped objects); empty when the
	// problem is not inside an object (a YAML syntax error, an unreadable file).
	Object string `json:"object,omitempty"`
	// Field is the path of the offending field, such as spec.ingress[0].toPorts[0].ports[0].port.
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// Error is what a terminal shows: every part with control characters escaped, since names,
// field paths and messages come from the files.
func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: ", printable(e.File, 500), e.Line, e.Column) + described("", e.Object, e.Field, e.Message)
}

// described is "level: Object: Field: message", each part escaped and only the parts there are.
func described(level, object, field, msg string) string {
	var b strings.Builder
	for _, part := range []struct {
		s   string
		max int
	}{{level, 20}, {object, 300}, {field, 300}} {
		if part.s != "" {
			b.WriteString(printable(part.s, part.max))
			b.WriteString(": ")
		}
	}
	b.WriteString(printable(msg, 1000))
	return b.String()
}

// ErrorList is every problem found in a bundle; it is returned as one error so that a user sees
// all of them at once.
type ErrorList []*Error

func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Sort orders errors by file, line and column.
func (l ErrorList) Sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		return comparePlace(Source{a.File, a.Line, a.Column}, Source{b.File, b.Line, b.Column})
	})
}

// SortNotices orders notices by file, line and column.
func SortNotices(ns []Notice) {
	slices.SortStableFunc(ns, func(a, b Notice) int {
		return comparePlace(Source{a.File, a.Line, a.Column}, Source{b.File, b.Line, b.Column})
	})
}

func comparePlace(a, b Source) int {
	return cmp.Or(strings.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
}

// Notice is something a bundle's reader should know: a notice (an object skipped, a label
// ignored) or a warning, which says the policy is valid but will not do what it seems to (a rule
// netpact does not enforce, a toFQDNs rule nothing teaches names to). Neither makes a bundle invalid.
type Notice struct {
	// Warning marks a policy that behaves otherwise than it reads; false is a plain notice.
	Warning bool   `json:"warning"`
	File    string `json:"file"`
	Line    int    `json:"line"`
	Column  int    `json:"column,omitempty"`
	// Object and Field locate a warning as an Error is located.
	Object  string `json:"object,omitempty"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// String is what a terminal shows: "notice: FILE:LINE: message" for a notice, and for a warning
// "FILE:LINE:COLUMN: warning: Kind namespace/name: field.path: message", in the shape of an Error.
func (n Notice) String() string {
	if !n.Warning {
		return "notice: " + n.Located()
	}
	return n.place() + described("warning", n.Object, n.Field, n.Message)
}

// Located is the notice without its level, shaped as an Error: for lists that say what they hold
// (a status's warnings).
func (n Notice) Located() string {
	return n.place() + described("", n.Object, n.Field, n.Message)
}

// place is "FILE:LINE:COLUMN: ", without the column when it is unknown, and "FILE: " for a
// source without lines (a live cluster).
func (n Notice) place() string {
	switch {
	case n.Column > 0:
		return fmt.Sprintf("%s:%d:%d: ", printable(n.File, 500), n.Line, n.Column)
	case n.Line > 0:
		return fmt.Sprintf("%s:%d: ", printable(n.File, 500), n.Line)
	}
	return printable(n.File, 500) + ": "
}

// CountWarnings counts the warnings among notices.
func CountWarnings(ns []Notice) int {
	n := 0
	for _, x := range ns {
		if x.Warning {
			n++
		}
	}
	return n
}
