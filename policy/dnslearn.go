package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// AllNotices are the loader's notices and the warnings that take the whole bundle (FQDNWarnings),
// in file and line order; with the compiled state of a known cluster (else nil), by its pods.
func (b *Bundle) AllNotices(s *State) []Notice {
	out := append(append([]Notice(nil), b.Notices...), FQDNWarnings(b.Policies, s)...)
	SortNotices(out)
	return out
}

// FQDNWarnings warns of each toFQDNs rule that will learn nothing. toFQDNs selects the addresses
// DNS answers gave for its names, and the DNS proxy sees only the queries an egress rule with
// rules.dns on port 53 hands it: "This interception is, itself, a separate policy rule governing
// DNS requests, and must be specified separately" (Cilium, security/policy/layer7.rst). Without
// one, the rule allows nothing while it reads like an allow.
//
// Which dns rules apply to a toFQDNs rule's pods:
//   - With a cluster (s not nil), the pods are known: a dns rule applies to a pod its rule's
//     subject selects, and the warning names the pods no dns rule applies to.
//   - Without one (s nil), or for a rule that selects no pod of the cluster, the rule of thumb:
//     a dns rule applies when its subject could select some of the same pods, that is when no label
//     makes the two subjects exclusive (different namespaces, app=a against app=b, In against a
//     NotIn of the same values, Exists against DoesNotExist). It warns only when no policy of the
//     bundle can intercept the pods' DNS; a dns rule on some of the pods silences it.
//
// A named port counts as port 53 (it may be one). When dns rules do apply, a toFQDNs matchName
// that none of them allows is warned of too: the proxy REFUSES the query, so nothing is learned.
func FQDNWarnings(policies []*Policy, s *State) []Notice {
	var users []fqdnUser
	var dns []dnsInterceptor
	for _, p := range policies {
		if p.KNP != nil {
			continue
		}
		u, d := fqdnRulesOf(p)
		users, dns = append(users, u...), append(dns, d...)
	}
	var out []Notice
	for _, u := range users {
		out = append(out, u.check(dns, s)...)
	}
	return out
}

// fqdnUser is a toFQDNs rule and the subject of its policy section.
type fqdnUser struct {
	p       *Policy
	path    string // the toFQDNs field
	subject subject
	names   []string // its matchNames
}

// dnsInterceptor is a policy section whose egress hands port 53 to the DNS proxy.
type dnsInterceptor struct {
	subject subject
	rules   []*L7Policy
}

// fqdnRulesOf finds a policy's toFQDNs rules and its sections with dns rules on port 53.
func fqdnRulesOf(p *Policy) ([]fqdnUser, []dnsInterceptor) {
	var users []fqdnUser
	var dns []dnsInterceptor
	np := normalize(p, func() RuleID { return RuleNone })
	for i, sec := range np.sections {
		r := &p.Cilium[i]
		for j, eg := range r.Egress {
			if len(eg.ToFQDNs) == 0 {
				continue
			}
			u := fqdnUser{p: p, path: fmt.Sprintf("%s.egress[%d].toFQDNs", p.rulePath(i), j), subject: sec.subject}
			for _, f := range eg.ToFQDNs {
				if f.MatchName != "" {
					u.names = append(u.names, f.MatchName)
				}
			}
			users = append(users, u)
		}
		d := dnsInterceptor{subject: sec.subject}
		for _, nr := range sec.rules {
			if nr.dir != Egress || nr.deny || nr.none {
				continue
			}
			for _, ps := range nr.ports {
				if ps.l7 != nil && len(ps.l7.DNS) > 0 && (ps.name != "" || (ps.lo <= 53 && 53 <= ps.hi)) {
					d.rules = append(d.rules, ps.l7)
				}
			}
		}
		if len(d.rules) > 0 {
			dns = append(dns, d)
		}
	}
	return users, dns
}

// check is the rule's warnings: by the cluster's pods when it selects any, else by the rule of
// thumb.
func (u fqdnUser) check(dns []dnsInterceptor, s *State) []Notice {
	if s != nil && !u.subject.host {
		var bare []string
		var applying []*L7Policy
		selected := false
		for _, g := range s.u.subjectGroups(u.subject) {
			selected = true
			found := false
			for _, d := range dns {
				if !d.subject.host && d.subject.sel.matches(g.identity.labels) {
					found = true
					applying = append(applying, d.rules...)
				}
			}
			if !found {
				for _, k := range g.endpoints {
					bare = append(bare, k.String())
				}
			}
		}
		if selected {
			var out []Notice
			if len(bare) > 0 {
				sort.Strings(bare)
				out = append(out, u.notice(noDNSRule(bare)))
			}
			return append(out, u.refusedNames(applying)...)
		}
	}
	var applying []*L7Policy
	for _, d := range dns {
		if d.subject.host == u.subject.host && mayOverlap(d.subject.sel, u.subject.sel) {
			applying = append(applying, d.rules...)
		}
	}
	if len(applying) == 0 {
		return []Notice{u.notice(noDNSRule(nil))}
	}
	return u.refusedNames(applying)
}

// noDNSRule is the warning of pods no dns rule intercepts: those named, or the rule's pods.
func noDNSRule(pods []string) string {
	which := "these pods: nothing will be learned and the traffic is dropped"
	switch {
	case len(pods) == 1:
		which = pods[0] + ": nothing will be learned for it and its traffic is dropped"
	case len(pods) > 1:
		which = podList(pods) + ": nothing will be learned for them and their traffic is dropped"
	}
	return "toFQDNs selects addresses learned from DNS answers, but no egress rule with rules.dns on port 53 applies to " +
		which + ` (add a dns rule, e.g. matchPattern "*", to the pods' port-53 egress)`
}

// refusedNames warns of each matchName that none of the applying dns rules allows.
func (u fqdnUser) refusedNames(applying []*L7Policy) []Notice {
	if len(applying) == 0 {
		return nil
	}
	var refused []string
	for _, name := range u.names {
		if !slices.ContainsFunc(applying, func(l *L7Policy) bool { ok, _ := l.MatchDNS(name); return ok }) {
			refused = append(refused, name)
		}
	}
	if len(refused) == 0 {
		return nil
	}
	return []Notice{u.notice(fmt.Sprintf("the dns rules on port 53 that apply to these pods do not allow %s: the DNS proxy REFUSES the query, so nothing is learned for it and its traffic is dropped (allow the name in the dns rules, e.g. matchPattern \"*\")", strings.Join(refused, ", ")))}
}

func (u fqdnUser) notice(msg string) Notice {
	at := u.p.position(u.path)
	return Notice{Warning: true, File: at.File, Line: at.Line, Column: at.Column, Object: u.p.Key.String(), Field: u.path, Message: msg}
}

// podList names up to three pods and counts the others.
func podList(pods []string) string {
	if len(pods) <= 3 {
		return strings.Join(pods, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(pods[:3], ", "), len(pods)-3)
}

// mayOverlap says whether two selectors can select one identity: false only when a label both
// constrain cannot satisfy both. Each requirement is compared with each; what only a combination
// of requirements rules out counts as a possible overlap.
func mayOverlap(a, b *selector) bool {
	for _, ra := range a.reqs {
		for _, rb := range b.reqs {
			sameLabel := ra.key == rb.key && (ra.source == rb.source || ra.source == sourceAny || rb.source == sourceAny)
			if sameLabel && exclusive(ra, rb) {
				return false
			}
		}
	}
	return true
}

// exclusive says whether no value of one label satisfies both requirements.
func exclusive(a, b requirement) bool {
	if a.op > b.op {
		a, b = b, a
	}
	switch {
	case a.op == opIn && b.op == opIn:
		return !slices.ContainsFunc(a.values, func(v string) bool { return slices.Contains(b.values, v) })
	case a.op == opIn && b.op == opNotIn:
		return !slices.ContainsFunc(a.values, func(v string) bool { return !slices.Contains(b.values, v) })
	case (a.op == opIn || a.op == opExists) && b.op == opDoesNotExist:
		return true
	}
	return false
}
