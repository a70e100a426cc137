// Package matrix is the connectivity truth table that netpact's commands share: predict fills in
// what the policy engine decides, test adds what a scenario file expects and what probes observe,
// and both print it from here. It sits under policy, below the scenario harness and the
// reconciler, so that anything which can compile policies can also build, compare and print one.
package matrix

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/netpact/netpact/policy"
)

// Outcome is one answer in a cell: the engine's verdict (policy.Outcome) or what a probe saw
// (scenarios.Outcome). Each vocabulary marks itself, so that the tables need not know them all.
// The empty outcome is no answer: predict expects and observes nothing.
type Outcome interface {
	~string
	// Mark is the outcome's one-character form in a table.
	Mark() string
}

// Port is a destination port and its protocol: one table of a matrix.
type Port struct {
	Number   uint16       `json:"port"`
	Protocol policy.Proto `json:"protocol"`
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Number, p.Protocol) }

// compare orders ports by number, then by protocol name.
func (p Port) compare(q Port) int {
	if p.Number != q.Number {
		return int(p.Number) - int(q.Number)
	}
	return strings.Compare(p.Protocol.String(), q.Protocol.String())
}

// Key names a cell: from one endpoint to another on a port.
type Key struct {
	From string `json:"from"`
	To   string `json:"to"`
	Port
}

// Column names one of a cell's three answers; columns combine with | to say which to compare.
type Column uint8

const (
	Expected Column = 1 << iota
	Predicted
	Observed
	// All is every answer: what netpact test holds a cell to.
	All = Expected | Predicted | Observed
)

// Cell is one probe's answers, and what the engine said of its prediction.
type Cell[O Outcome] struct {
	Key
	Expected  O `json:"expected,omitempty"`
	Predicted O `json:"predicted,omitempty"`
	Observed  O `json:"observed,omitempty"`
	// Rule names the rule that decided the prediction; empty when none did (a default deny, or
	// traffic no policy enforces).
	Rule string `json:"rule,omitempty"`
	// Reason is the engine's account of the prediction.
	Reason string `json:"reason,omitempty"`
	// Proxy is the L7 proxy the prediction hands the flow to; empty when no L7 rule decided
	// (policy.Decision.Proxy).
	Proxy policy.L7Parser `json:"proxy,omitempty"`
	// Kafka is, for a flow the Kafka proxy judges, what the rules let a client do per topic.
	Kafka []policy.KafkaTopicVerdict `json:"kafka,omitempty"`
	// L7 are the rules the proxy judges each request by (Proxy http or dns): what an L7 cell is.
	L7 *policy.L7Policy `json:"l7,omitempty"`
	// Resolved is, for a toFQDNs cell, the destination's name the source must resolve.
	Resolved string `json:"resolved,omitempty"`
	// EnforcedBy names, for a default-deny drop, the policy section that switched default deny
	// on, with its file and line.
	EnforcedBy string `json:"enforcedBy,omitempty"`
	// AuditedBy names, for an audited cell, the rule or default deny of a policy in audit mode
	// that would drop it.
	AuditedBy string `json:"auditedBy,omitempty"`
}

// Decided is the cell of a key the engine decided: the one place a policy.Decision becomes a
// matrix cell, for predict and plan alike.
func Decided(k Key, d policy.Decision) Cell[policy.Outcome] {
	c := Cell[policy.Outcome]{Key: k, Predicted: d.Outcome, Reason: d.Reason(), Proxy: d.Proxy, Kafka: d.KafkaTopics()}
	if d.Rule != nil {
		c.Rule = d.Rule.String()
	}
	if d.Proxy == policy.ParserHTTP || d.Proxy == policy.ParserDNS {
		c.L7 = d.L7
	}
	if d.Outcome == policy.OutcomeOnceResolved {
		c.Resolved = d.Resolved.Name
	}
	if d.Outcome == policy.OutcomeDefaultDenied && len(d.EnforcedBy) > 0 {
		c.EnforcedBy = d.EnforcedBy[0].String()
	}
	if d.Outcome == policy.OutcomeAudited && len(d.Audited) > 0 {
		c.AuditedBy = d.Audited[0].String()
	}
	return c
}

// Outcome is the cell's answer in col, which names one column.
func (c Cell[O]) Outcome(col Column) O {
	switch col {
	case Expected:
		return c.Expected
	case Predicted:
		return c.Predicted
	case Observed:
		return c.Observed
	}
	return ""
}

// Loopback reports whether the cell is from an endpoint to itself: that traffic never leaves
// the pod, so no policy sees it and the cell is shown but never compared.
func (c Cell[O]) Loopback() bool { return c.From == c.To }

// Agrees reports whether the cell's answers in cols are all the same. A missing answer is an
// answer like any other (a probe that reported nothing disagrees), so ask only for the columns
// the matrix holds: predict has no expectations, plan no observations. A loopback cell always
// agrees.
func (c Cell[O]) Agrees(cols Column) bool {
	if c.Loopback() {
		return true
	}
	var first O
	seen := false
	for _, col := range []Column{Expected, Predicted, Observed} {
		if cols&col == 0 {
			continue
		}
		if o := c.Outcome(col); !seen {
			first, seen = o, true
		} else if o != first {
			return false
		}
	}
	return true
}

// Matrix is a set of cells, kept in the order they were first set: that order is the order of
// the endpoints in every table.
type Matrix[O Outcome] struct {
	cells map[Key]*Cell[O]
	order []Key
}

// New returns an empty matrix.
func New[O Outcome]() *Matrix[O] {
	return &Matrix[O]{cells: map[Key]*Cell[O]{}}
}

// Set adds a cell, or replaces the one with its key where it stood.
func (m *Matrix[O]) Set(c Cell[O]) {
	if _, ok := m.cells[c.Key]; !ok {
		m.order = append(m.order, c.Key)
	}
	m.cells[c.Key] = &c
}

// Get returns the cell of a key, nil when there is none.
func (m *Matrix[O]) Get(k Key) *Cell[O] { return m.cells[k] }

// Len is the number of cells.
func (m *Matrix[O]) Len() int { return len(m.order) }

// Cells returns every cell in the order they were first set.
func (m *Matrix[O]) Cells() []*Cell[O] {
	out := make([]*Cell[O], len(m.order))
	for i, k := range m.order {
		out[i] = m.cells[k]
	}
	return out
}

// Disagreements returns, in order, the cells whose answers in cols differ (Cell.Agrees).
func (m *Matrix[O]) Disagreements(cols Column) []*Cell[O] {
	var out []*Cell[O]
	for _, c := range m.Cells() {
		if !c.Agrees(cols) {
			out = append(out, c)
		}
	}
	return out
}

// Ports returns the ports of the cells by number, then protocol.
func (m *Matrix[O]) Ports() []Port {
	var out []Port
	for _, k := range m.order {
		if !slices.Contains(out, k.Port) {
			out = append(out, k.Port)
		}
	}
	slices.SortFunc(out, Port.compare)
	return out
}

// Endpoints returns every endpoint the cells name: the sources in the order the cells first name
// them, then the destinations that are no source.
func (m *Matrix[O]) Endpoints() []string {
	var out []string
	seen := map[string]bool{}
	for _, sources := range []bool{true, false} {
		for _, k := range m.order {
			e := k.To
			if sources {
				e = k.From
			}
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// MarshalJSON writes the cells as a list, in order.
func (m *Matrix[O]) MarshalJSON() ([]byte, error) {
	cells := m.Cells()
	list := make([]Cell[O], len(cells))
	for i, c := range cells {
		list[i] = *c
	}
	return json.Marshal(list)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (m *Matrix[O]) UnmarshalJSON(data []byte) error {
	var list []Cell[O]
	if err := json.Unmarshal(data, &list); err != nil {
		return fmt.Errorf("read matrix: %w", err)
	}
	*m = *New[O]()
	for _, c := range list {
		m.Set(c)
	}
	return nil
}
