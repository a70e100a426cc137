package policy

import (
	"encoding"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// pos is a line and column in a source file.
type pos struct{ line, col int }

// fieldIssue is a structural problem found while walking a document against its Go type.
type fieldIssue struct {
	path string
	pos  pos
	msg  string
}

// docIndex maps field paths of one document to their source positions.
type docIndex map[string]pos

// lookup returns the position of path or of its nearest ancestor present in the document.
func (ix docIndex) lookup(path string) pos {
	for p := path; ; {
		if at, ok := ix[p]; ok {
			return at
		}
		cut := strings.LastIndexAny(p, ".[")
		if cut <= 0 {
			return ix[""]
		}
		p = p[:cut]
	}
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	intOrStringType = reflect.TypeFor[intstr.IntOrString]()
)

// walker checks a YAML node tree against a Go type the way a strict API server would: unknown
// fields and values of the wrong type are errors, each recorded with its position.
type walker struct {
	index  docIndex
	issues []fieldIssue
}

func (w *walker) issue(path string, n *yaml.Node, format string, args ...any) {
	w.issues = append(w.issues, fieldIssue{path: path, pos: pos{n.Line, n.Column}, msg: fmt.Sprintf(format, args...)})
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if _, seen := w.index[path]; !seen {
		w.index[path] = pos{n.Line, n.Column}
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if w.decodesItself(n, t, path) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		w.walkStruct(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.issue(path, n, "must be a list, not %s", describe(n))
			return
		}
		for i, item := range n.Content {
			w.walk(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Map:
		w.walkMap(n, t, path)
	case reflect.Interface:
		// Free-form content: any value is accepted.
	default:
		w.checkScalar(n, t, path)
	}
}

// decodesItself checks a value whose type decodes itself (IntOrString, a JSON or text
// unmarshaler) and says whether it did.
func (w *walker) decodesItself(n *yaml.Node, t reflect.Type, path string) bool {
	if t == intOrStringType {
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
			w.issue(path, n, "must be a number or a string")
		}
		return true
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return true
	}
	if !reflect.PointerTo(t).Implements(textUnmarshaler) {
		return false
	}
	if n.Kind != yaml.ScalarNode {
		w.issue(path, n, "must be a string, not %s", describe(n))
		return true
	}
	v := reflect.New(t).Interface().(encoding.TextUnmarshaler)
	if err := v.UnmarshalText([]byte(n.Value)); err != nil {
		w.issue(path, n, "%v", err)
	}
	return true
}

func (w *walker) walkStruct(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		w.issue(path, n, "must be an object, not %s", describe(n))
		return
	}
	fields := jsonFields(t)
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		fp := join(path, k.Value)
		w.index[fp] = pos{k.Line, k.Column}
		if seen[k.Value] {
			w.issue(fp, k, "field %q is given twice", k.Value)
			continue
		}
		seen[k.Value] = true
		ft, ok := fields[k.Value]
		if !ok {
			w.issue(fp, k, "unknown field %q%s", k.Value, suggest(k.Value, fields))
			continue
		}
		w.walk(v, ft, fp)
	}
}

func (w *walker) walkMap(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		w.issue(path, n, "must be an object, not %s", describe(n))
		return
	}
	// A key given twice would let the last one win silently (matchLabels {app: web,
	// app: db} selects db): refused, as the API server's strict field validation does.
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		fp := join(path, k.Value)
		w.index[fp] = pos{k.Line, k.Column}
		if seen[k.Value] {
			w.issue(fp, k, "key %q is given twice", printable(k.Value, 60))
			continue
		}
		seen[k.Value] = true
		w.walk(v, t.Elem(), fp)
	}
}

// checkScalar checks a string, boolean or number against the node's YAML tag; integers must
// fit their Go type.
func (w *walker) checkScalar(n *yaml.Node, t reflect.Type, path string) {
	switch t.Kind() {
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			hint := ""
			if n.Kind == yaml.ScalarNode {
				hint = fmt.Sprintf(" (quote it: \"%s\")", printable(n.Value, 40))
			}
			w.issue(path, n, "must be a string, not %s%s", describe(n), hint)
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			w.issue(path, n, "must be true or false, not %s", describe(n))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			w.issue(path, n, "must be an integer, not %s", describe(n))
			return
		}
		if _, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, t.Bits()); err != nil {
			w.issue(path, n, "integer %s is out of range", n.Value)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			w.issue(path, n, "must be an integer, not %s", describe(n))
			return
		}
		if _, err := strconv.ParseUint(strings.ReplaceAll(n.Value, "_", ""), 0, t.Bits()); err != nil {
			w.issue(path, n, "integer %s is out of range", n.Value)
		}
	case reflect.Float32, reflect.Float64:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
			w.issue(path, n, "must be a number, not %s", describe(n))
		}
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "an object"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!str":
			return fmt.Sprintf("the string %q", printable(n.Value, 40))
		case "!!int", "!!float":
			return "the number " + printable(n.Value, 40)
		case "!!bool":
			return "the boolean " + printable(n.Value, 40)
		}
		return printable(n.Value, 40)
	}
	return "an unexpected value"
}

// kindOf names the kind of a node without its value.
func kindOf(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.MappingNode:
		return "an object"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.ScalarNode && (n.Tag == "!!int" || n.Tag == "!!float"):
		return "a number"
	case n.Kind == yaml.ScalarNode && n.Tag == "!!bool":
		return "a boolean"
	case n.Kind == yaml.ScalarNode:
		return "a string"
	}
	return "an unexpected value"
}

// jsonFields returns a struct's JSON field names, with embedded inline structs flattened.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if name == "" && f.Anonymous {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					out[k] = v
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// suggest names a known field that differs from an unknown one only in case or by a typo.
func suggest(unknown string, fields map[string]reflect.Type) string {
	best, bestDist := "", math.MaxInt
	for k := range fields {
		if strings.EqualFold(k, unknown) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
		if d := editDistance(k, unknown); d < bestDist || (d == bestDist && k < best) {
			best, bestDist = k, d
		}
	}
	if best != "" && bestDist <= 2 {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// nodeValue converts a YAML node to the plain values encoding/json understands, keeping
// timestamps and other special scalars as the strings they were written as.
func nodeValue(n *yaml.Node, depth int) (any, error) {
	if depth > 200 {
		return nil, fmt.Errorf("document nests deeper than 200 levels")
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil, nil
		}
		return nodeValue(n.Content[0], depth+1)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			v, err := nodeValue(n.Content[i+1], depth+1)
			if err != nil {
				return nil, err
			}
			m[n.Content[i].Value] = v
		}
		return m, nil
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := nodeValue(c, depth+1)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		return s, nil
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return nil, nil
		case "!!str", "!!timestamp", "!!binary":
			return n.Value, nil
		}
		var v any
		if err := n.Decode(&v); err != nil {
			return n.Value, nil
		}
		switch x := v.(type) {
		case time.Time:
			return n.Value, nil
		case float64:
			if math.IsInf(x, 0) || math.IsNaN(x) {
				return n.Value, nil
			}
		}
		return v, nil
	}
	return nil, nil
}
