package policy

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/api/resource"
	"sigs.k8s.io/kustomize/api/types"
)

// A folder holding a kustomization is built with kustomize's own library, as `kubectl apply -k`
// and Flux's kustomize-controller build it (bases and overlays, patches, labels, namePrefix,
// namespace, generators), under netpact's rules: only files inside the bundle's root are read
// (kustomizeFS), nothing remote, no plugins and no Helm charts, and the output is held to the
// loader's bounds. Each object is then read as if from a file, located where it was written.

var kustomizationNames = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

// kustomizationIn is the name of the kustomization file in the resolved folder dir, or "".
func kustomizationIn(dir string) string {
	for _, k := range kustomizationNames {
		if _, err := os.Lstat(filepath.Join(dir, k)); err == nil {
			return k
		}
	}
	return ""
}

// buildMu serializes builds: kustomize keeps its OpenAPI schema in package state that a build
// resets, so two at once race (Flux's kustomize-controller serializes them too).
var buildMu sync.Mutex

// Why fields are refused, by field.
const (
	helmRefused   = "Helm charts are not rendered by netpact: commit what `helm template` renders, or check it with `helm template ... | netpact validate -`"
	pluginRefused = "netpact builds kustomizations without plugins: generators, transformers and validators are refused"
)

var refusedKustomizationFields = map[string]string{
	"helmCharts": helmRefused, "helmChartInflationGenerator": helmRefused, "helmGlobals": helmRefused,
	"generators": pluginRefused, "transformers": pluginRefused, "validators": pluginRefused,
}

// loadKustomization builds the kustomization file (named name in messages) of the resolved
// folder dir and loads the objects it makes.
func (l *loader) loadKustomization(name, dir, file string) {
	if l.kfs == nil {
		l.kfs = newKustomizeFS(l.t)
		l.kfs.expand = l.opts.Expand
	}
	c, checked := l.kfs.checked[dir] // as an overlay's base, with its errors reported then
	if !checked {
		c = l.checkKustomization(name, dir, file)
	}
	if !c.ok {
		return
	}
	// kustomize takes time that grows faster than the objects it holds, and a patch may apply
	// to every object: both are bounded before it runs, and its output after.
	if c.objects > maxBuildObjects {
		l.fail(name, 0, 0, "Kustomization", "", "the kustomization reads %d objects, more than the %d kustomize may build for netpact: refused", c.objects, maxBuildObjects)
		return
	}
	if int64(c.objects)*int64(c.patchBytes) > maxBundleBytes {
		l.fail(name, 0, 0, "Kustomization", "", "%d objects and %d KiB of patches could build more than %d MiB (a patch may apply to every object): refused", c.objects, c.patchBytes>>10, maxBundleBytes>>20)
		return
	}
	l.buildKustomization(name, dir, filepath.Join(dir, file), c.top)
}

// kustomizationCheck is what checkKustomization found of a kustomization and those it includes.
type kustomizationCheck struct {
	top *yaml.Node
	ok  bool
	// objects are the objects of the resource files it reads, each time they are included;
	// patchBytes the size of its patches.
	objects, patchBytes int
}

// checkKustomization reads the kustomization file in the resolved folder dir and refuses what
// netpact does not build, then checks the kustomizations it includes in turn: every include
// must be inside the root, and no folder may include itself. kustomize would fetch a URL over
// HTTP and clone a Git repository with git, so nothing remote reaches it.
func (l *loader) checkKustomization(name, dir, file string) (c kustomizationCheck) {
	// A folder being checked is on the tree's stack, so it is not checked again from inside;
	// once checked, what was found stands for every overlay that includes it.
	l.kfs.checked[dir] = c
	defer func() { l.kfs.checked[dir] = c }()
	resolved, err := l.t.resolve(filepath.Join(dir, file))
	var data []byte
	if err == nil {
		data, err = l.kfs.load(resolved)
	}
	if err != nil {
		l.fail(name, 0, 0, "", "", "%v", err)
		return c
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := yamlErrorLine(err)
		l.fail(name, line, 1, "", "", "%s", msg)
		return c
	}
	if line, col, err := aliasBudget(&doc); err != nil {
		l.fail(name, line, col, "", "", "%v", err)
		return c
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		l.fail(name, 1, 1, "Kustomization", "", "a kustomization must be a mapping of its fields")
		return c
	}
	c.top, c.ok = doc.Content[0], true
	fail := func(at *yaml.Node, field, format string, args ...any) {
		l.fail(name, at.Line, at.Column, "Kustomization", field, format, args...)
		c.ok = false
	}
	for i := 0; i+1 < len(c.top.Content); i += 2 {
		key, val := c.top.Content[i], c.top.Content[i+1]
		field := key.Value
		if why, refused := refusedKustomizationFields[field]; refused {
			fail(key, field, "%s", why)
			continue
		}
		c.patchBytes += inlinePatchBytes(field, val)
		for _, ref := range pathsNamed(field, val) {
			switch {
			case ref.remote():
				fail(ref.node, ref.field, "%q is remote: netpact reads only what the repository holds (vendor it into the repository)", ref.path)
			case ref.include:
				inc := l.checkInclude(dir, ref, fail, name)
				c.ok = c.ok && inc.ok
				c.objects += inc.objects
				c.patchBytes += inc.patchBytes
			default:
				// Refused here, at its line, rather than when kustomize reads it. A
				// patchesStrategicMerge entry that is no file may be a patch written inline.
				resolved, err := l.t.resolve(filepath.Join(dir, ref.path))
				switch {
				case err != nil && (field != "patchesStrategicMerge" || !errors.Is(err, iofs.ErrNotExist)):
					fail(ref.node, ref.field, "%s: %v", ref.path, err)
				case err == nil && ref.patch:
					if data, err := l.kfs.load(resolved); err == nil {
						c.patchBytes += len(data)
					}
				}
			}
		}
	}
	return c
}

// checkInclude checks a resource, base or component: a file inside the root, whose objects it
// counts, or a folder whose kustomization is checked in turn.
func (l *loader) checkInclude(dir string, ref pathRef, fail func(*yaml.Node, string, string, ...any), name string) kustomizationCheck {
	resolved, err := l.t.resolve(filepath.Join(dir, ref.path))
	if err != nil {
		fail(ref.node, ref.field, "%s: %v", ref.path, err)
		return kustomizationCheck{}
	}
	if st, err := os.Stat(resolved); err != nil || !st.IsDir() {
		// A file that cannot be read is kustomize's to report.
		return kustomizationCheck{ok: true, objects: l.kfs.objects(resolved)}
	}
	k := kustomizationIn(resolved)
	if k == "" {
		fail(ref.node, ref.field, "%s: the folder holds no kustomization.yaml (kustomize reads a folder only through its own)", ref.path)
		return kustomizationCheck{}
	}
	if err := l.t.push(resolved); err != nil {
		fail(ref.node, ref.field, "%s: %v", ref.path, err)
		return kustomizationCheck{}
	}
	defer l.t.pop(resolved)
	if c, checked := l.kfs.checked[resolved]; checked {
		return c
	}
	return l.checkKustomization(filepath.Join(filepath.Dir(name), ref.path, k), resolved, k)
}

// inlinePatchBytes is the size of the patches a kustomization field writes inline.
func inlinePatchBytes(field string, val *yaml.Node) int {
	if val == nil || val.Kind != yaml.SequenceNode {
		return 0
	}
	n := 0
	for _, it := range val.Content {
		switch field {
		case "patches", "patchesJson6902":
			if p := childNode(it, "patch"); p != nil {
				n += len(p.Value)
			}
		case "patchesStrategicMerge":
			if strings.Contains(it.Value, "\n") {
				n += len(it.Value)
			}
		}
	}
	return n
}

// pathRef is a path a kustomization names.
type pathRef struct {
	node  *yaml.Node
	field string
	path  string
	// include is a resource, base or component: a file, or a folder with a kustomization;
	// patch is a patch's file.
	include, patch bool
}

// remote says whether kustomize would fetch the path: a URL (over HTTP, or a Git repository
// it clones), or what it reads as a Git repository without a scheme (github.com/org/repo,
// git@host:repo, git::...).
func (r pathRef) remote() bool {
	p := strings.ToLower(r.path)
	if u, err := url.Parse(p); err == nil && u.Scheme != "" && strings.Contains(p, "://") {
		return true
	}
	return strings.HasPrefix(p, "git::") || strings.HasPrefix(p, "github.com/") || strings.HasPrefix(p, "github.com:") ||
		gitUserRE.MatchString(p)
}

var gitUserRE = regexp.MustCompile(`^[a-z][a-z0-9-]*@`)

// pathsNamed are the paths of files and folders a kustomization field names.
func pathsNamed(field string, val *yaml.Node) []pathRef {
	var out []pathRef
	add := func(n *yaml.Node, at string, include bool) {
		if n != nil && n.Kind == yaml.ScalarNode {
			out = append(out, pathRef{node: n, field: at, path: n.Value, include: include,
				patch: strings.HasPrefix(field, "patches")})
		}
	}
	items := func(n *yaml.Node) []*yaml.Node {
		if n == nil || n.Kind != yaml.SequenceNode {
			return nil
		}
		return n.Content
	}
	switch field {
	case "resources", "bases", "components":
		for i, it := range items(val) {
			add(it, fmt.Sprintf("%s[%d]", field, i), true)
		}
	case "crds", "configurations":
		for i, it := range items(val) {
			add(it, fmt.Sprintf("%s[%d]", field, i), false)
		}
	case "patchesStrategicMerge":
		// An entry is a file, or a patch written inline (several lines).
		for i, it := range items(val) {
			if !strings.Contains(it.Value, "\n") {
				add(it, fmt.Sprintf("%s[%d]", field, i), false)
			}
		}
	case "patches", "patchesJson6902", "replacements":
		for i, it := range items(val) {
			add(childNode(it, "path"), fmt.Sprintf("%s[%d].path", field, i), false)
		}
	case "configMapGenerator", "secretGenerator":
		for i, it := range items(val) {
			for _, src := range []string{"files", "envs"} {
				for j, f := range items(childNode(it, src)) {
					at := fmt.Sprintf("%s[%d].%s[%d]", field, i, src, j)
					if _, file, keyed := strings.Cut(f.Value, "="); keyed {
						out = append(out, pathRef{node: f, field: at, path: file})
					} else {
						add(f, at, false)
					}
				}
			}
			add(childNode(it, "env"), fmt.Sprintf("%s[%d].env", field, i), false)
		}
	case "openapi":
		add(childNode(val, "path"), "openapi.path", false)
	}
	return out
}

// buildKustomization runs kustomize on the resolved folder dir, whose kustomization file
// (named name in messages, top its node) was checked, and loads each object it makes from
// where it was written.
func (l *loader) buildKustomization(name, dir, file string, top *yaml.Node) {
	m, origins, ok := l.runKustomize(name, dir, file, top)
	if ok {
		l.loadBuilt(name, dir, m, origins)
	}
}

// runKustomize builds the kustomization with the origin of each object it makes.
func (l *loader) runKustomize(name, dir, file string, top *yaml.Node) (resmap.ResMap, []*resource.Origin, bool) {
	// Origin annotations name the file each object came from; they are switched on for the
	// build and taken off again unless the kustomization asks for them itself.
	tracked := slices.Contains(scalars(childNode(top, "buildMetadata")), types.OriginAnnotations)
	if !tracked {
		withOrigins, err := originsOn(top)
		if err != nil {
			l.fail(name, 0, 0, "Kustomization", "", "%v", err)
			return nil, nil, false
		}
		l.kfs.replaced[file] = withOrigins
		defer delete(l.kfs.replaced, file)
	}
	opts := krusty.MakeDefaultOptions()
	opts.LoadRestrictions = types.LoadRestrictionsRootOnly
	opts.PluginConfig = types.DisabledPluginConfig()
	opts.Reorder = krusty.ReorderOptionUnspecified
	buildMu.Lock()
	l.kfs.startBuild()
	m, err := krusty.MakeKustomizer(opts).Run(l.kfs, dir)
	refusal := l.kfs.refusal
	buildMu.Unlock()
	if err != nil {
		l.buildFailed(name, top, refusal, err)
		return nil, nil, false
	}
	if m.Size() > maxBuildObjects {
		l.fail(name, 0, 0, "Kustomization", "", "kustomize builds %d objects, more than the %d a kustomization may: refused", m.Size(), maxBuildObjects)
		return nil, nil, false
	}
	objects := m.Resources()
	origins := make([]*resource.Origin, len(objects))
	for i, r := range objects {
		origins[i], _ = r.GetOrigin()
	}
	if !tracked {
		if err := m.RemoveOriginAnnotations(); err != nil {
			l.fail(name, 0, 0, "Kustomization", "", "kustomize build: %v", err)
			return nil, nil, false
		}
	}
	return m, origins, true
}

// loadBuilt reads each object kustomize built, within the bundle's bytes, as written where its
// origin says.
func (l *loader) loadBuilt(name, dir string, m resmap.ResMap, origins []*resource.Origin) {
	var size int
	for i, r := range m.Resources() {
		data, err := r.AsYAML()
		if err != nil {
			l.fail(name, 0, 0, "Kustomization", "", "kustomize build: %v", err)
			return
		}
		if size += len(data); size > maxBundleBytes {
			l.fail(name, 0, 0, "Kustomization", "", "kustomize builds more than %d MiB of objects: refused", maxBundleBytes>>20)
			return
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
			l.fail(name, 0, 0, "Kustomization", "", "kustomize built an object that is not YAML: %v", err)
			continue
		}
		if line, col, err := aliasBudget(&doc); err != nil {
			l.fail(name, line, col, "", "", "%v", err)
			continue
		}
		n := doc.Content[0]
		source, written := l.written(name, dir, origins[i], n)
		relocate(n, written, 1, 1)
		clusterScoped(n, written)
		l.loadObject(source, n, 0)
	}
}

// scalars are the values of a sequence node's items.
func scalars(n *yaml.Node) []string {
	if n == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	var out []string
	for _, it := range n.Content {
		out = append(out, it.Value)
	}
	return out
}

// originsOn is the kustomization with buildMetadata: [originAnnotations] added.
func originsOn(top *yaml.Node) ([]byte, error) {
	item := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: types.OriginAnnotations}
	if bm := childNode(top, "buildMetadata"); bm != nil && bm.Kind == yaml.SequenceNode {
		bm.Content = append(bm.Content, item)
		defer func() { bm.Content = bm.Content[:len(bm.Content)-1] }()
	} else {
		key := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "buildMetadata"}
		seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Content: []*yaml.Node{item}}
		if bm != nil {
			return nil, fmt.Errorf("buildMetadata must be a list")
		}
		top.Content = append(top.Content, key, seq)
		defer func() { top.Content = top.Content[:len(top.Content)-2] }()
	}
	out, err := yaml.Marshal(top)
	if err != nil {
		return nil, fmt.Errorf("switch on origin annotations: %w", err)
	}
	return out, nil
}

// buildFailed reports kustomize's error on the kustomization's file, at the line of the entry
// it quotes when it quotes one; a read refused by kustomizeFS is said instead, as it is the
// cause.
func (l *loader) buildFailed(name string, top *yaml.Node, refusal, err error) {
	if refusal != nil {
		l.fail(name, 0, 0, "Kustomization", "", "kustomize build: %v", refusal)
		return
	}
	// kustomize's errors span lines (a transformer's configuration); one line reads better.
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if l.t.root != "" {
		msg = strings.ReplaceAll(msg, l.t.root+string(filepath.Separator), l.t.name+string(filepath.Separator))
	}
	line, col, field := 0, 0, ""
	for i := 0; i+1 < len(top.Content) && field == ""; i += 2 {
		for _, ref := range pathsNamed(top.Content[i].Value, top.Content[i+1]) {
			if strings.Contains(msg, "'"+ref.path+"'") {
				line, col, field = ref.node.Line, ref.node.Column, ref.field
				break
			}
		}
	}
	l.fail(name, line, col, "Kustomization", field, "kustomize build: %s", msg)
}

// written is the file an object was built from, as messages name it, and its document there:
// the file its origin annotation names, and in it the document of the object's kind whose name
// the object's name holds (namePrefix and nameSuffix add to it). When the object came from
// elsewhere (a generator), it is the kustomization's file, without a document.
func (l *loader) written(name, dir string, o *resource.Origin, n *yaml.Node) (string, *yaml.Node) {
	if o == nil || o.Path == "" || o.Repo != "" {
		return name, nil
	}
	resolved, err := l.t.resolve(filepath.Join(dir, o.Path))
	if _, read := l.kfs.read[resolved]; err != nil || !read {
		return name, nil
	}
	kind, _ := scalarField(n, "kind")
	objName := ""
	if md := childNode(n, "metadata"); md != nil {
		objName, _ = scalarField(md, "name")
	}
	var best, only *yaml.Node
	count := 0
	for _, d := range l.kfs.documents(resolved) {
		if k, _ := scalarField(d, "kind"); k != kind {
			continue
		}
		count, only = count+1, d
		docName := ""
		if md := childNode(d, "metadata"); md != nil {
			docName, _ = scalarField(md, "name")
		}
		if docName == objName {
			best = d
			break
		}
		if docName != "" && strings.Contains(objName, docName) && (best == nil || len(docName) > len(nameOf(best))) {
			best = d
		}
	}
	if best == nil && count == 1 {
		best = only
	}
	return l.t.display(resolved), best
}

func nameOf(doc *yaml.Node) string {
	if md := childNode(doc, "metadata"); md != nil {
		name, _ := scalarField(md, "name")
		return name
	}
	return ""
}

// relocate gives each node of a built object the position of the same field in the document it
// was written in, or its nearest ancestor's there: a field a patch added points at the object
// or field it was added to.
func relocate(out, src *yaml.Node, line, col int) {
	if src != nil && src.Kind == yaml.AliasNode {
		src = src.Alias
	}
	if src != nil {
		line, col = src.Line, src.Column
	}
	out.Line, out.Column = line, col
	var keys map[string]int
	if src != nil && out.Kind == yaml.MappingNode && src.Kind == yaml.MappingNode {
		keys = make(map[string]int, len(src.Content)/2)
		for j := 0; j+1 < len(src.Content); j += 2 {
			if _, dup := keys[src.Content[j].Value]; !dup {
				keys[src.Content[j].Value] = j
			}
		}
	}
	for i, c := range out.Content {
		var sc *yaml.Node
		switch {
		case keys != nil:
			if j, ok := keys[out.Content[i-i%2].Value]; ok {
				sc = src.Content[j+i%2]
			}
		case src != nil && out.Kind == yaml.SequenceNode && src.Kind == yaml.SequenceNode && i < len(src.Content):
			sc = src.Content[i]
		}
		relocate(c, sc, out.Line, out.Column)
	}
}

// clusterScoped takes off the namespace kustomize's namespace field gives a
// CiliumClusterwideNetworkPolicy: kustomize cannot know the kind is cluster-scoped, and the API
// server drops it. A namespace written in the document itself is left to be refused.
func clusterScoped(n, written *yaml.Node) {
	if kind, _ := scalarField(n, "kind"); kind != string(KindCCNP) {
		return
	}
	if written != nil {
		if md := childNode(written, "metadata"); md != nil && childNode(md, "namespace") != nil {
			return
		}
	}
	md := childNode(n, "metadata")
	if md == nil || md.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(md.Content); i += 2 {
		if md.Content[i].Value == "namespace" {
			md.Content = append(md.Content[:i], md.Content[i+2:]...)
			return
		}
	}
}
