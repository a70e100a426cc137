package policy

import "testing"

// TestMayOverlap: two subjects are exclusive only when one label cannot satisfy both; anything
// that takes more than one requirement to rule out counts as a possible overlap (no warning).
func TestMayOverlap(t *testing.T) {
	req := func(key string, op selOp, values ...string) requirement {
		return requirement{source: sourceK8s, key: key, op: op, values: values}
	}
	sel := func(rs ...requirement) *selector { return (&selector{reqs: rs}).finish() }
	for _, tc := range []struct {
		name string
		a, b *selector
		want bool
	}{
		{"empty selects all", sel(), sel(req("app", opIn, "a")), true},
		{"same value", sel(req("app", opIn, "a")), sel(req("app", opIn, "a", "b")), true},
		{"other value", sel(req("app", opIn, "a")), sel(req("app", opIn, "b")), false},
		{"other namespace", sel(req(LabelPodNamespace, opIn, "x")), sel(req(LabelPodNamespace, opIn, "y")), false},
		{"In inside NotIn", sel(req("app", opIn, "a", "b")), sel(req("app", opNotIn, "a", "b", "c")), false},
		{"In partly outside NotIn", sel(req("app", opIn, "a", "d")), sel(req("app", opNotIn, "a")), true},
		{"Exists and DoesNotExist", sel(req("app", opExists)), sel(req("app", opDoesNotExist)), false},
		{"In and DoesNotExist", sel(req("app", opDoesNotExist)), sel(req("app", opIn, "a")), false},
		{"NotIn and DoesNotExist", sel(req("app", opNotIn, "a")), sel(req("app", opDoesNotExist)), true},
		{"different labels", sel(req("app", opIn, "a")), sel(req("tier", opIn, "b")), true},
		{"any source", sel(requirement{source: sourceAny, key: "app", op: opIn, values: []string{"a"}}), sel(req("app", opIn, "b")), false},
		{"other source", sel(requirement{source: sourceReserved, key: "app", op: opIn, values: []string{"a"}}), sel(req("app", opIn, "b")), true},
	} {
		if got := mayOverlap(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: mayOverlap %v, want %v", tc.name, got, tc.want)
		}
		if got := mayOverlap(tc.b, tc.a); got != tc.want {
			t.Errorf("%s (swapped): mayOverlap %v, want %v", tc.name, got, tc.want)
		}
	}
}
