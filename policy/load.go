package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/netpact/netpact/api/ciliumv2"
)

// Kind is the kind of a policy object.
type Kind string

const (
	KindCNP  Kind = ciliumv2.KindCiliumNetworkPolicy
	KindCCNP Kind = ciliumv2.KindCiliumClusterwideNetworkPolicy
	KindKNP  Kind = "NetworkPolicy"
)

// Source is where an object or rule was read from.
type Source struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
}

func (s Source) String() string { return fmt.Sprintf("%s:%d:%d", s.File, s.Line, s.Column) }

// Key identifies a policy object within a bundle.
type Key struct {
	Kind      Kind
	Namespace string
	Name      string
}

func (k Key) String() string {
	if k.Namespace == "" {
		return fmt.Sprintf("%s %s", k.Kind, k.Name)
	}
	return fmt.Sprintf("%s %s/%s", k.Kind, k.Namespace, k.Name)
}

// Policy is one policy object read from a bundle, defaulted and validated.
type Policy struct {
	Key
	Source Source
	// Cilium holds the rules of a CNP or CCNP (spec first, then specs).
	Cilium []ciliumv2.Rule
	// KNP is the Kubernetes NetworkPolicy, with Kubernetes' defaults applied.
	KNP *networkingv1.NetworkPolicy
	// Raw is the object as written, as JSON (metadata.namespace as given, not defaulted): what a
	// backend applies to an API server.
	Raw []byte
	// CIDRs is how many distinct CIDRs the policy names (except CIDRs included).
	CIDRs int
	// Audit is set by the audit annotations (AnnotationAudit, AnnotationCiliumAudit): the
	// policy's denies, and the default deny it alone switches on, are reported and not enforced.
	Audit bool
	// Origin is where the policy came from in Git: read from the reconciler's annotations, or
	// set by the reconciler itself on a local node; nil when unknown.
	Origin *Origin

	index docIndex
}

// position returns where a field of this policy was written.
func (p *Policy) position(path string) Source {
	at := p.index.lookup(path)
	return Source{File: p.Source.File, Line: at.line, Column: at.col}
}

// Bundle is a validated set of policies: the unit the engine compiles and the reconciler applies.
type Bundle struct {
	Policies []*Policy
	Notices  []Notice
	// Empty are the paths given to Load that hold no policy (<stdin> for "-"): a caller that
	// expects policies there refuses them, one that compares two revisions need not.
	Empty []string
}

// LoadOptions adjusts how files are read.
type LoadOptions struct {
	// DefaultNamespace is given to namespaced objects that name none, as `kubectl apply -n` does.
	// Empty means "default".
	DefaultNamespace string
	// Root, when set, is the folder every path may read from instead of the path itself: a Git
	// checkout, whose overlays read their bases anywhere in the repository as Flux's
	// kustomize-controller lets them. Each path must lie inside it.
	Root string
	// Stdin, when set, is what the path "-" reads (named <stdin>), bounded as a file is.
	Stdin io.Reader
	// Expand, when set, rewrites each file (and standard input, and LoadBytes' data) before it
	// is parsed, kustomize's inputs included: the scenario runner's pod address expressions. It
	// must keep every line where it was, so that errors and origins point into the file as
	// written; a file whose line count it changes is refused. Its error is the file's: an Error or
	// ErrorList as it is, anything else located at the file.
	Expand func(file string, data []byte) ([]byte, error)
}

// expand is data as fn rewrites it (data itself when fn is nil), refused when fn moved lines.
func expand(fn func(string, []byte) ([]byte, error), file string, data []byte) ([]byte, error) {
	if fn == nil {
		return data, nil
	}
	out, err := fn(file, data)
	if err != nil {
		return nil, err
	}
	if before, after := bytes.Count(data, []byte("\n")), bytes.Count(out, []byte("\n")); before != after {
		return nil, fmt.Errorf("expanding the file changed its %d lines to %d: refused, as its errors would point at the wrong lines", before+1, after+1)
	}
	return out, nil
}

// failWith records err as a problem of file: its own Errors when it has them.
func (l *loader) failWith(file string, err error) {
	var list ErrorList
	var one *Error
	switch {
	case errors.As(err, &list):
		l.errs = append(l.errs, list...)
	case errors.As(err, &one):
		l.errs = append(l.errs, one)
	default:
		l.fail(file, 0, 0, "", "", "%v", err)
	}
}

// Load reads files and folders of multi-document YAML or JSON. Folders are read recursively in
// name order (hidden entries skipped); a folder holding a kustomization.yaml is built with
// kustomize (kustomize.go) and what it makes is read. When anything is wrong, the returned error
// is an ErrorList with every problem of the bundle.
//
// Each argument is the root of what it loads (or opts.Root is): a symlink or a kustomization
// resource that leads outside it is refused, and so are files that are not regular files,
// cycles, and bundles over the bounds in files.go.
func Load(paths []string, opts LoadOptions) (*Bundle, error) {
	l := &loader{opts: opts, bundle: &Bundle{}, seen: map[Key]Source{}, t: newTree()}
	stdinRead := false
	for _, p := range paths {
		before := len(l.bundle.Policies)
		name := p
		switch {
		case p == "-" && opts.Stdin != nil:
			name = stdinName
			if stdinRead {
				l.fail(name, 0, 0, "", "", "- is given twice: standard input is read once")
				continue
			}
			stdinRead = true
			l.loadStdin(opts.Stdin)
		case l.setRoot(p):
			l.loadPath(p)
		}
		if len(l.bundle.Policies) == before {
			l.bundle.Empty = append(l.bundle.Empty, name)
		}
	}
	return l.finish()
}

// stdinName is how errors name standard input.
const stdinName = "<stdin>"

// setRoot makes p, or opts.Root, the root of what is loaded next; it is false (and p is
// refused) when p cannot be read or lies outside opts.Root.
func (l *loader) setRoot(p string) bool {
	top := p
	if l.opts.Root != "" {
		top = l.opts.Root
	}
	given, err := filepath.Abs(top)
	root := given
	if err == nil {
		root, err = filepath.EvalSymlinks(given)
	}
	if err != nil {
		l.fail(p, 0, 0, "", "", "cannot read: %v", unwrapPathError(err))
		return false
	}
	l.t.root, l.t.given, l.t.name = root, given, top
	if top != p {
		if _, err := l.t.resolve(p); err != nil {
			l.fail(p, 0, 0, "", "", "%v", err)
			return false
		}
	}
	return true
}

// loadStdin reads the bundle piped in, bounded as one file.
func (l *loader) loadStdin(r io.Reader) {
	data, err := io.ReadAll(io.LimitReader(r, maxFileSize+1))
	switch {
	case err != nil:
		l.fail(stdinName, 0, 0, "", "", "cannot read: %v", err)
	case len(data) > maxFileSize:
		l.fail(stdinName, 0, 0, "", "", "standard input is larger than %d MiB", maxFileSize>>20)
	default:
		l.loadData(stdinName, data)
	}
}

// LoadBytes reads one document stream as if it were the file name.
func LoadBytes(name string, data []byte, opts LoadOptions) (*Bundle, error) {
	l := &loader{opts: opts, bundle: &Bundle{}, seen: map[Key]Source{}}
	l.loadData(name, data)
	return l.finish()
}

type loader struct {
	opts   LoadOptions
	bundle *Bundle
	errs   ErrorList
	seen   map[Key]Source
	t      *tree // nil for LoadBytes
	kfs    *kustomizeFS
}

func (l *loader) finish() (*Bundle, error) {
	l.checkNamespaceBudgets()
	if len(l.errs) > 0 {
		l.errs.Sort()
		return nil, l.errs
	}
	sort.SliceStable(l.bundle.Policies, func(i, j int) bool {
		return l.bundle.Policies[i].Key.String() < l.bundle.Policies[j].Key.String()
	})
	return l.bundle, nil
}

func (l *loader) fail(file string, line, col int, object, field, format string, args ...any) {
	l.errs = append(l.errs, &Error{File: file, Line: line, Column: col, Object: object, Field: field, Message: fmt.Sprintf(format, args...)})
}

func isPolicyFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

func (l *loader) loadPath(path string) {
	resolved, err := l.t.resolve(path)
	if err != nil {
		l.fail(path, 0, 0, "", "", "%v", err)
		return
	}
	info, err := os.Lstat(resolved)
	if err != nil {
		l.fail(path, 0, 0, "", "", "cannot read: %v", unwrapPathError(err))
		return
	}
	if !info.IsDir() {
		data, err := l.t.read(resolved)
		if err != nil {
			l.fail(path, 0, 0, "", "", "%v", err)
			return
		}
		l.loadData(path, data)
		return
	}
	if err := l.t.enter(resolved); err != nil {
		l.fail(path, 0, 0, "", "", "%v", err)
		return
	}
	defer l.t.leave(resolved)
	if k := kustomizationIn(resolved); k != "" {
		l.loadKustomization(filepath.Join(path, k), resolved, k)
		return
	}
	entries, err := os.ReadDir(resolved)
	if err != nil {
		l.fail(path, 0, 0, "", "", "cannot read folder: %v", unwrapPathError(err))
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		full := filepath.Join(path, e.Name())
		if e.IsDir() || (e.Type()&fs.ModeSymlink != 0) {
			if st, err := os.Stat(full); err == nil && st.IsDir() {
				l.loadPath(full)
				continue
			}
		}
		if isPolicyFile(e.Name()) {
			l.loadPath(full)
		}
	}
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func yamlErrorLine(err error) (int, string) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		// yaml.v3 reports parser errors ("did not find expected ...") with a zero-based line and
		// scanner errors with a one-based one.
		if strings.HasPrefix(m[2], "did not find expected") {
			n++
		}
		return n, "invalid YAML: " + m[2]
	}
	return 1, "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")
}

func (l *loader) loadData(file string, data []byte) {
	data, err := expand(l.opts.Expand, file, data)
	if err != nil {
		l.failWith(file, err)
		return
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			line, msg := yamlErrorLine(err)
			l.fail(file, line, 1, "", "", "%s", msg)
			return
		}
		if len(doc.Content) == 0 {
			continue
		}
		if line, col, err := aliasBudget(&doc); err != nil {
			l.fail(file, line, col, "", "", "%v", err)
			return
		}
		l.loadObject(file, doc.Content[0], 0)
	}
}

// scalarField returns the value of a top-level scalar field of a mapping node.
func scalarField(n *yaml.Node, name string) (string, *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		return "", nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == name {
			v := n.Content[i+1]
			if v.Kind == yaml.ScalarNode {
				return v.Value, n.Content[i]
			}
			return "", n.Content[i]
		}
	}
	return "", nil
}

func childNode(n *yaml.Node, name string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == name {
			return n.Content[i+1]
		}
	}
	return nil
}

func (l *loader) loadObject(file string, n *yaml.Node, depth int) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		// Only the kind of value: a file that is not YAML at all (a key, a binary) reads as one
		// long scalar, and its contents must not end up in output or status.
		l.fail(file, n.Line, n.Column, "", "", "a document must be an object with apiVersion and kind, not %s", kindOf(n))
		return
	}
	apiVersion, apiKey := scalarField(n, "apiVersion")
	kind, kindKey := scalarField(n, "kind")
	if kind == "" {
		l.fail(file, n.Line, n.Column, "", "kind", "missing kind: every object needs apiVersion and kind")
		return
	}
	if apiVersion == "" {
		l.fail(file, kindKey.Line, kindKey.Column, kind, "apiVersion", "missing apiVersion")
		return
	}
	if strings.HasSuffix(kind, "List") && apiVersion == "v1" {
		if items := childNode(n, "items"); items != nil && items.Kind == yaml.SequenceNode && depth < 4 {
			for _, it := range items.Content {
				l.loadObject(file, it, depth+1)
			}
			return
		}
	}
	target, pk, ok := l.policyTarget(file, n, apiKey, apiVersion, kind)
	if !ok {
		return
	}
	object := describeObject(pk, n, l.defaultNamespace())
	index, raw, ok := l.decode(file, n, target, object)
	if !ok {
		return
	}
	p := &Policy{Key: Key{Kind: pk}, Source: Source{File: file, Line: n.Line, Column: n.Column}, index: index, Raw: raw}
	switch obj := target.(type) {
	case *ciliumv2.CiliumNetworkPolicy:
		p.Name, p.Namespace = obj.Name, l.namespaceFor(obj.Namespace)
		p.Cilium = ciliumRules(obj.Spec, obj.Specs)
		p.Audit, p.Origin = AuditAnnotated(obj.Annotations), originOf(obj.Annotations)
	case *ciliumv2.CiliumClusterwideNetworkPolicy:
		p.Name = obj.Name
		p.Audit, p.Origin = AuditAnnotated(obj.Annotations), originOf(obj.Annotations)
		if obj.Namespace != "" {
			l.fail(file, p.position("metadata.namespace").Line, p.position("metadata.namespace").Column, object, "metadata.namespace",
				"a CiliumClusterwideNetworkPolicy is cluster-scoped and takes no namespace")
		}
		p.Cilium = ciliumRules(obj.Spec, obj.Specs)
	case *networkingv1.NetworkPolicy:
		obj.Namespace = l.namespaceFor(obj.Namespace)
		p.Name, p.Namespace = obj.Name, obj.Namespace
		p.KNP = obj
		p.Audit, p.Origin = AuditAnnotated(obj.Annotations), originOf(obj.Annotations)
	}
	l.admit(file, n, p)
}

// policyTarget is the Go type an object of kind decodes into, and its policy kind. It is false
// for an object that is no network policy (noted, and skipped) or of an API version not served
// (refused).
func (l *loader) policyTarget(file string, n, apiKey *yaml.Node, apiVersion, kind string) (any, Kind, bool) {
	switch {
	case kind == string(KindCNP) || kind == string(KindCCNP):
		if apiVersion != ciliumv2.GroupVersion {
			l.fail(file, apiKey.Line, apiKey.Column, describeObject(Kind(kind), n, l.defaultNamespace()), "apiVersion", "apiVersion %q is not served for %s; use %s", apiVersion, kind, ciliumv2.GroupVersion)
			return nil, "", false
		}
		if Kind(kind) == KindCNP {
			return &ciliumv2.CiliumNetworkPolicy{}, KindCNP, true
		}
		return &ciliumv2.CiliumClusterwideNetworkPolicy{}, KindCCNP, true
	case kind == string(KindKNP) && strings.HasPrefix(apiVersion, "networking.k8s.io/"):
		if apiVersion != "networking.k8s.io/v1" {
			l.fail(file, apiKey.Line, apiKey.Column, kind, "apiVersion", "apiVersion %q is not served for NetworkPolicy; use networking.k8s.io/v1", apiVersion)
			return nil, "", false
		}
		return &networkingv1.NetworkPolicy{}, KindKNP, true
	}
	name := ""
	if md := childNode(n, "metadata"); md != nil {
		name, _ = scalarField(md, "name")
	}
	if clusterPolicyAPIKinds[kind] && strings.HasPrefix(apiVersion, clusterPolicyAPIGroup+"/") {
		_, kindKey := scalarField(n, "kind")
		l.bundle.Notices = append(l.bundle.Notices, Notice{Warning: true, File: file, Line: kindKey.Line, Column: kindKey.Column,
			Object: Key{Kind: Kind(kind), Name: name}.String(), Field: "kind",
			Message: fmt.Sprintf("not enforced by netpact: %s changes connectivity on clusters that implement it (%s); netpact's verdicts leave it out", kind, apiVersion)})
		return nil, "", false
	}
	l.bundle.Notices = append(l.bundle.Notices, Notice{File: file, Line: n.Line,
		Message: fmt.Sprintf("skipped %s %s %q: not a network policy", apiVersion, kind, name)})
	return nil, "", false
}

// clusterPolicyAPIGroup and its kinds are sigs.k8s.io/network-policy-api's: AdminNetworkPolicy
// and BaselineAdminNetworkPolicy (v1alpha1), and ClusterNetworkPolicy, which replaces both
// (v1alpha2). Cilium 1.20 and Calico, Antrea and others enforce them, ahead of or behind every
// NetworkPolicy, so skipping one in silence would hide a policy that decides traffic.
const clusterPolicyAPIGroup = "policy.networking.k8s.io"

var clusterPolicyAPIKinds = map[string]bool{"ClusterNetworkPolicy": true, "AdminNetworkPolicy": true, "BaselineAdminNetworkPolicy": true}

// decode checks the object against target's type as a strict API server would, then decodes
// it into target; it returns the fields' positions and the object as JSON. It is false when
// the object was refused.
func (l *loader) decode(file string, n *yaml.Node, target any, object string) (docIndex, []byte, bool) {
	w := &walker{index: docIndex{}}
	w.walk(n, reflect.TypeOf(target).Elem(), "")
	for _, is := range w.issues {
		l.fail(file, is.pos.line, is.pos.col, object, is.path, "%s", is.msg)
	}
	if len(w.issues) > 0 {
		return nil, nil, false
	}
	v, err := nodeValue(n, 0)
	if err != nil {
		l.fail(file, n.Line, n.Column, object, "", "%v", err)
		return nil, nil, false
	}
	raw, err := json.Marshal(v)
	if err != nil {
		l.fail(file, n.Line, n.Column, object, "", "cannot convert document: %v", err)
		return nil, nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(target); err != nil {
		l.fail(file, n.Line, n.Column, object, "", "cannot decode: %v", err)
		return nil, nil, false
	}
	return w.index, raw, true
}

// admit adds a policy to the bundle unless it is invalid or its key is taken.
func (l *loader) admit(file string, n *yaml.Node, p *Policy) {
	errs, warns, notes := validatePolicy(p)
	for _, e := range errs {
		at := p.position(e.path)
		l.fail(file, at.Line, at.Column, p.Key.String(), e.path, "%s", e.msg)
	}
	if len(errs) > 0 {
		return
	}
	if prev, dup := l.seen[p.Key]; dup {
		l.fail(file, n.Line, n.Column, p.Key.String(), "metadata.name", "%s is defined twice; the first is at %s", p.Key, prev)
		return
	}
	for _, w := range warns {
		at := p.position(w.path)
		l.bundle.Notices = append(l.bundle.Notices, Notice{Warning: true, File: file, Line: at.Line, Column: at.Column,
			Object: p.Key.String(), Field: w.path, Message: w.msg})
	}
	for _, nt := range notes {
		at := p.position(nt.path)
		l.bundle.Notices = append(l.bundle.Notices, Notice{File: file, Line: at.Line, Column: at.Column,
			Object: p.Key.String(), Field: nt.path, Message: nt.msg})
	}
	l.seen[p.Key] = p.Source
	defaultPolicy(p)
	l.bundle.Policies = append(l.bundle.Policies, p)
}

func (l *loader) defaultNamespace() string {
	if l.opts.DefaultNamespace != "" {
		return l.opts.DefaultNamespace
	}
	return "default"
}

func (l *loader) namespaceFor(ns string) string {
	if ns == "" {
		return l.defaultNamespace()
	}
	return ns
}

func describeObject(kind Kind, n *yaml.Node, defaultNS string) string {
	name, ns := "", ""
	if md := childNode(n, "metadata"); md != nil {
		name, _ = scalarField(md, "name")
		ns, _ = scalarField(md, "namespace")
	}
	if kind == KindCCNP {
		return Key{Kind: kind, Name: name}.String()
	}
	if ns == "" {
		ns = defaultNS
	}
	return Key{Kind: kind, Namespace: ns, Name: name}.String()
}

func ciliumRules(spec *ciliumv2.Rule, specs []ciliumv2.Rule) []ciliumv2.Rule {
	var out []ciliumv2.Rule
	if spec != nil {
		out = append(out, *spec)
	}
	return append(out, specs...)
}

// rulePath is the field path of the i-th Cilium rule: spec first, then specs[n].
func (p *Policy) rulePath(i int) string {
	if _, hasSpec := p.index["spec"]; hasSpec {
		if i == 0 {
			return "spec"
		}
		return fmt.Sprintf("specs[%d]", i-1)
	}
	return fmt.Sprintf("specs[%d]", i)
}
