package policy

import (
	"fmt"
	"sort"
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
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d:%d: ", printable(e.File, 500), e.Line, e.Column)
	if e.Object != "" {
		b.WriteString(printable(e.Object, 300))
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(printable(e.Field, 300))
		b.WriteString(": ")
	}
	b.WriteString(printable(e.Message, 1000))
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
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i], l[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// Notice is something the loader skipped or adjusted and wants the user to know about.
type Notice struct {
	File    string `json:"file"`
	Line    int    `json:"line"`
	Message string `json:"message"`
}

func (n Notice) String() string { return fmt.Sprintf("%s:%d: %s", n.File, n.Line, n.Message) }
