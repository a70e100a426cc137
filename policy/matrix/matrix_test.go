package matrix

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/netpact/netpact/policy"
)

func key(from, to string, port uint16, proto policy.Proto) Key {
	return Key{From: from, To: to, Port: Port{Number: port, Protocol: proto}}
}

// engine is a matrix as predict makes it: the engine's verdicts, nothing expected or observed.
func engine() *Matrix[policy.Outcome] {
	m := New[policy.Outcome]()
	for _, c := range []Cell[policy.Outcome]{
		{Key: key("a/client", "a/web", 443, policy.ProtoTCP), Predicted: policy.OutcomeAllowed, Rule: "NetworkPolicy a/web spec.ingress[0]"},
		{Key: key("a/client", "a/web", 80, policy.ProtoTCP), Predicted: policy.OutcomeL7},
		{Key: key("a/web", "a/web", 80, policy.ProtoTCP), Predicted: policy.OutcomeAllowed},
		{Key: key("a/web", "a/client", 53, policy.ProtoUDP), Predicted: policy.OutcomeDefaultDenied, Reason: "default deny on egress"},
	} {
		m.Set(c)
	}
	return m
}

// A missing answer counts when its column is asked for: an observation nobody made must fail a
// test, while predict, which expects and observes nothing, has nothing to disagree about.
func TestAgreesComparesTheColumnsAskedFor(t *testing.T) {
	m := engine()
	if d := m.Disagreements(Predicted); len(d) != 0 {
		t.Errorf("a prediction alone disagrees with itself: %v", d)
	}
	if d := m.Disagreements(All); len(d) != 3 {
		t.Errorf("%d cells without expectations agree with them, want all 3 that are no loopback", 3-len(d))
	}
	c := Cell[policy.Outcome]{Key: key("a/client", "a/web", 80, policy.ProtoTCP),
		Expected: policy.OutcomeAllowed, Predicted: policy.OutcomeAllowed, Observed: policy.OutcomeDenied}
	if !c.Agrees(Expected|Predicted) || c.Agrees(All) || c.Agrees(Predicted|Observed) {
		t.Errorf("cell %+v: Agrees does not compare exactly the columns asked for", c)
	}
	c.To = c.From
	if !c.Agrees(All) {
		t.Error("a loopback cell is compared")
	}
}

// Set replaces a cell where it stood, and the endpoints come sources first, then destinations.
func TestSetKeepsTheOrderOfFirstSight(t *testing.T) {
	m := engine()
	m.Set(Cell[policy.Outcome]{Key: key("a/client", "a/web", 443, policy.ProtoTCP), Predicted: policy.OutcomeDenied})
	if m.Len() != 4 || m.Cells()[0].Predicted != policy.OutcomeDenied {
		t.Errorf("Set of an existing key: %d cells, first %+v", m.Len(), m.Cells()[0])
	}
	m.Set(Cell[policy.Outcome]{Key: key("b/db", "c/cache", 6379, policy.ProtoTCP), Predicted: policy.OutcomeDenied})
	if got, want := m.Endpoints(), []string{"a/client", "a/web", "b/db", "c/cache"}; !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	m := engine()
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	first := `{"from":"a/client","to":"a/web","port":443,"protocol":"TCP","predicted":"allowed","rule":"NetworkPolicy a/web spec.ingress[0]"}`
	if !bytes.HasPrefix(data, []byte("["+first+",")) {
		t.Errorf("JSON %s does not start with %s", data, first)
	}
	back := New[policy.Outcome]()
	if err := json.Unmarshal(data, back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, m) {
		t.Errorf("round trip changed the matrix:\n%s", data)
	}
	if err := json.Unmarshal([]byte(`[{"protocol":"TPC"}]`), back); err == nil {
		t.Error("a cell with an unknown protocol was read")
	}
}

// Table is predict's form: ports by number, only the endpoints with a cell on each.
// SideBySide is netpact test's: ports by label, every endpoint in every table.
func TestTableAndSideBySide(t *testing.T) {
	var b bytes.Buffer
	engine().Table(&b, "", Predicted)
	golden(t, "table.txt", b.String())

	probed := New[policy.Outcome]()
	allowed, denied := policy.OutcomeAllowed, policy.OutcomeDenied
	probed.Set(Cell[policy.Outcome]{Key: key("a/client", "a/web", 80, policy.ProtoTCP), Expected: allowed, Predicted: allowed, Observed: allowed})
	probed.Set(Cell[policy.Outcome]{Key: key("a/client", "a/web", 443, policy.ProtoTCP), Expected: allowed, Predicted: allowed, Observed: denied})
	probed.Set(Cell[policy.Outcome]{Key: key("a/web", "a/web", 80, policy.ProtoTCP), Expected: denied, Predicted: allowed, Observed: allowed})
	b.Reset()
	probed.SideBySide(&b, "  ", All)
	golden(t, "side-by-side.txt", b.String())
}

func golden(t *testing.T, file, got string) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("output differs from testdata/%s:\n%s", file, got)
	}
}

// A run that only predicted prints and marks two tables: expected and predicted, the "!" on the
// predicted one; Compact shows the predicted answers.
func TestSideBySideOfTwoColumns(t *testing.T) {
	m := New[policy.Outcome]()
	allowed, denied := policy.OutcomeAllowed, policy.OutcomeDenied
	m.Set(Cell[policy.Outcome]{Key: key("a/client", "a/web", 80, policy.ProtoTCP), Expected: allowed, Predicted: denied})
	m.Set(Cell[policy.Outcome]{Key: key("a/web", "a/web", 80, policy.ProtoTCP), Expected: allowed, Predicted: allowed})
	var b bytes.Buffer
	m.SideBySide(&b, "", Expected|Predicted)
	want := "80/TCP\n" +
		"from \\ to  expected  predicted\n" +
		"          0 1    0 1 \n" +
		"a/client  - .    - X!  0\n" +
		"a/web     - .    - .~  1\n"
	if b.String() != want {
		t.Errorf("two tables:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	m.Compact(&b, "", Expected|Predicted, 100, 10)
	if !strings.Contains(b.String(), "0 a/client  X!") {
		t.Errorf("compact predicted table:\n%s", b.String())
	}
}
