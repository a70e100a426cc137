package policy

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Annotations a policy object may carry that change what netpact does with it, or say where it
// came from. The reconciler writes the source annotations on what it applies; users write the
// audit ones.
const (
	// AnnotationAudit set to "true" puts a policy in audit mode: its deny rules, and the default
	// deny it alone switches on, report AUDIT and let the traffic pass.
	AnnotationAudit = "netpact.io/audit"
	// AnnotationCiliumAudit is the annotation many repositories already write on their Cilium
	// policies expecting per-policy audit, which Cilium ignores; netpact honours it as
	// AnnotationAudit.
	AnnotationCiliumAudit = "policy.cilium.io/audit-mode"
	// AnnotationSourceRepository is the Git repository the reconciler read the policy from.
	AnnotationSourceRepository = "netpact.io/source-repository"
	// AnnotationSourcePath is the file and line of the object in that repository: "path:line".
	AnnotationSourcePath = "netpact.io/source-path"
	// AnnotationSourceRevision is the Git revision applied ("main@sha1:<hash>").
	AnnotationSourceRevision = "netpact.io/source-revision"
	// AnnotationSourceRules are the lines of the object's rules in that file, by rule path:
	// "spec.ingress[0]=14 spec.egress[0]=22" (the object the API server holds is re-serialised,
	// so its own lines are not the file's).
	AnnotationSourceRules = "netpact.io/source-rules"
)

// Origin is where a policy came from in Git, when the reconciler applied it.
type Origin struct {
	Repository string `json:"repository,omitempty"`
	Path       string `json:"path"`
	Line       int    `json:"line,omitempty"`
	Revision   string `json:"revision,omitempty"`
	// RuleLines are the lines of the policy's rules in Path, by rule path (RuleInfo.Path).
	RuleLines map[string]int `json:"-"`
}

// RuleOrigin is where one rule came from in Git.
type RuleOrigin struct {
	Repository string `json:"repository,omitempty"`
	Path       string `json:"path"`
	Line       int    `json:"line,omitempty"`
	Revision   string `json:"revision,omitempty"`
}

func (o *RuleOrigin) String() string {
	if o == nil {
		return ""
	}
	s := o.Path
	if o.Line > 0 {
		s += ":" + strconv.Itoa(o.Line)
	}
	if o.Revision != "" {
		s += " @ " + o.Revision
	}
	return s
}

// AuditAnnotated says whether a policy object's annotations put it in audit mode.
func AuditAnnotated(annotations map[string]string) bool {
	return annotations[AnnotationAudit] == "true" || annotations[AnnotationCiliumAudit] == "true"
}

// originOf reads the source annotations the reconciler wrote; nil when there are none. Bad
// values are left out rather than refused: they only describe the policy.
func originOf(annotations map[string]string) *Origin {
	path := annotations[AnnotationSourcePath]
	if path == "" {
		return nil
	}
	o := &Origin{Repository: annotations[AnnotationSourceRepository], Revision: annotations[AnnotationSourceRevision], Path: path}
	if i := strings.LastIndexByte(path, ':'); i > 0 {
		if n, err := strconv.Atoi(path[i+1:]); err == nil && n > 0 {
			o.Path, o.Line = path[:i], n
		}
	}
	for _, f := range strings.Fields(annotations[AnnotationSourceRules]) {
		k, v, ok := strings.Cut(f, "=")
		if n, err := strconv.Atoi(v); ok && err == nil && n > 0 {
			if o.RuleLines == nil {
				o.RuleLines = map[string]int{}
			}
			o.RuleLines[k] = n
		}
	}
	return o
}

// Annotations are the source annotations the reconciler writes on a policy it applies through
// the API server, from which an enforcer reads the origin back (originOf).
func (o *Origin) Annotations() map[string]string {
	out := map[string]string{AnnotationSourcePath: o.Path}
	if o.Line > 0 {
		out[AnnotationSourcePath] = fmt.Sprintf("%s:%d", o.Path, o.Line)
	}
	if o.Repository != "" {
		out[AnnotationSourceRepository] = o.Repository
	}
	if o.Revision != "" {
		out[AnnotationSourceRevision] = o.Revision
	}
	rules := make([]string, 0, len(o.RuleLines))
	for path, line := range o.RuleLines {
		rules = append(rules, fmt.Sprintf("%s=%d", path, line))
	}
	sort.Strings(rules)
	if len(rules) > 0 {
		out[AnnotationSourceRules] = strings.Join(rules, " ")
	}
	return out
}

// SetOrigin records that the policy came from relPath (relative to the repository's root) of a
// Git repository at a revision; its rules' lines are its own file's.
func (p *Policy) SetOrigin(repository, relPath, revision string) {
	p.Origin = &Origin{Repository: repository, Path: relPath, Line: p.Source.Line, Revision: revision, RuleLines: p.RuleLines()}
}

// RuleLines are the lines of the policy's rules in its file, by rule path (RuleInfo.Path).
func (p *Policy) RuleLines() map[string]int {
	np := normalize(p, func() RuleID { return 0 })
	out := make(map[string]int, len(np.infos))
	for _, ri := range np.infos {
		if ri.Source.Line > 0 {
			out[ri.Path] = ri.Source.Line
		}
	}
	return out
}

// ruleOrigin is where a rule of p came from in Git, or nil.
func (p *Policy) ruleOrigin(path string) *RuleOrigin {
	o := p.Origin
	if o == nil {
		return nil
	}
	line := o.RuleLines[path]
	if line == 0 {
		line = o.Line
	}
	return &RuleOrigin{Repository: o.Repository, Path: o.Path, Line: line, Revision: o.Revision}
}
