package matrix

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/api/ciliumv2"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

const (
	client, web, db, coredns = "a/client", "a/web", "b/db", "kube-system/coredns"
	// rule has what HTML must escape in an attribute and in text.
	rule = `CiliumNetworkPolicy a/web "get & head" spec.ingress[0] (web.yaml:9)`
)

// verdict is a cell as the engine would decide it: each outcome with the fields it comes with.
func verdict(k Key, o policy.Outcome) Cell[policy.Outcome] {
	c := Cell[policy.Outcome]{Key: k, Predicted: o}
	switch o {
	case policy.OutcomeL7:
		c.Proxy, c.Rule = policy.ParserHTTP, rule
		c.L7 = &policy.L7Policy{HTTP: []ciliumv2.PortRuleHTTP{{Method: "GET", Path: "/"}}}
	case policy.OutcomeDNS:
		c.Proxy, c.Rule = policy.ParserDNS, "CiliumNetworkPolicy kube-system/dns spec.egress[0] (dns.yaml:4)"
		c.L7 = &policy.L7Policy{DNS: []ciliumv2.PortRuleDNS{{MatchPattern: "*"}}}
	case policy.OutcomeDenied:
		c.Rule = "CiliumNetworkPolicy b/db spec.ingressDeny[0] (db.yaml:7)"
	case policy.OutcomeDefaultDenied:
		c.Reason, c.EnforcedBy = "default deny on ingress", "NetworkPolicy b/db spec (db.yaml:1)"
	case policy.OutcomeAudited:
		c.AuditedBy = "CiliumNetworkPolicy kube-system/dns spec.ingressDeny[0] (dns.yaml:12)"
	case policy.OutcomeAllowed:
		c.Rule = rule
	}
	return c
}

// samplePlan has two ports in both matrices and one only before, five verdicts and a pair with
// no cell after, four changed cells (two each way) and a group of two pods.
func samplePlan() *Plan {
	allowed, dropped, denied := policy.OutcomeAllowed, policy.OutcomeDefaultDenied, policy.OutcomeDenied
	before, after := New[policy.Outcome](), New[policy.Outcome]()
	for _, c := range []struct {
		k             Key
		before, after policy.Outcome
	}{
		{key(client, web, 80, policy.ProtoTCP), allowed, policy.OutcomeL7},
		{key(client, db, 80, policy.ProtoTCP), dropped, allowed},
		{key(web, db, 80, policy.ProtoTCP), allowed, allowed},
		{key(web, web, 80, policy.ProtoTCP), allowed, allowed},
		{key(db, web, 80, policy.ProtoTCP), denied, denied},
		{key(client, coredns, 53, policy.ProtoUDP), policy.OutcomeDNS, policy.OutcomeDNS},
		{key(web, coredns, 53, policy.ProtoUDP), dropped, policy.OutcomeAudited},
		{key(db, coredns, 53, policy.ProtoUDP), allowed, dropped},
	} {
		before.Set(verdict(c.k, c.before))
		after.Set(verdict(c.k, c.after))
	}
	before.Set(verdict(key(client, db, 5432, policy.ProtoTCP), allowed))
	groups := []Group{{Name: web, Pods: []string{"a/web-1", "a/web-2"}}, {Name: db, Pods: []string{"b/db-0"}}}
	return NewPlan("main", "feature", groups, before, after)
}

func renderHTML(t *testing.T, p *Plan) string {
	t.Helper()
	var b bytes.Buffer
	if err := p.HTML(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The page holds everything a reviewer needs and fetches nothing.
func TestHTMLPage(t *testing.T) {
	p := samplePlan()
	if len(p.Changes) != 4 {
		t.Fatalf("the sample plan has %d changes, want 4", len(p.Changes))
	}
	page := renderHTML(t, p)
	for _, want := range []string{
		"<p class=\"summary\">4 cells change: 2 newly allowed, 2 newly denied</p>",
		"<th>change</th><th>from</th><th>to</th><th>before</th><th>after</th><th>rule after</th><th>rule before</th>",
		"<td class=\"kind\">newly allowed</td><td><code>a/client</code></td><td><code>b/db</code></td><td>dropped (default deny)</td><td>allowed</td>",
		"<li><code>a/web</code>: <code>a/web-1</code>, <code>a/web-2</code></li>",
		"<h3>5432/TCP</h3>", "no cells on this port",
		`title="a/client -&gt; a/web 80/TCP: HTTP proxy: GET /`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if strings.Contains(page, "b/db-0") {
		t.Error("a group of one pod is listed")
	}
	if n := strings.Count(page, ` changed" title=`); n != 2*len(p.Changes) {
		t.Errorf("%d cells are marked changed, want %d (each change in both matrices)", n, 2*len(p.Changes))
	}
	for _, fetch := range []string{"<script", "<link", "<img", "src=", "url(", "@import", "http:", "https:"} {
		if strings.Contains(page, fetch) {
			t.Errorf("page is not self-contained: it has %s", fetch)
		}
	}
}

func TestHTMLEscapesTenantInput(t *testing.T) {
	const pod = `<script>alert(1)</script>`
	before, after := New[policy.Outcome](), New[policy.Outcome]()
	before.Set(verdict(key(pod, web, 80, policy.ProtoTCP), policy.OutcomeDefaultDenied))
	after.Set(verdict(key(pod, web, 80, policy.ProtoTCP), policy.OutcomeAllowed))
	page := renderHTML(t, NewPlan("main", `head"&<b>`, []Group{{Name: pod, Pods: []string{pod, "x"}}}, before, after))
	if strings.Contains(page, "<script") || strings.Contains(page, "<b>") {
		t.Errorf("tenant input is not escaped:\n%s", page)
	}
	for _, want := range []string{
		"<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>",
		`<th class="from">&lt;script&gt;alert(1)&lt;/script&gt;</th>`,
		`<td>CiliumNetworkPolicy a/web &#34;get &amp; head&#34; spec.ingress[0] (web.yaml:9)</td>`,
		`by CiliumNetworkPolicy a/web &#34;get &amp; head&#34; spec.ingress[0] (web.yaml:9)"`,
		`<code>head&#34;&amp;&lt;b&gt;</code>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
}

// A plan that changes nothing still shows both matrices of every port.
func TestHTMLEmptyPlan(t *testing.T) {
	m := samplePlan().After
	page := renderHTML(t, NewPlan("main", "main", nil, m, m))
	if !strings.Contains(page, `<p class="summary">no cell changes</p>`) {
		t.Error("an empty plan does not say no cell changes")
	}
	if strings.Contains(page, "<h2>Changes</h2>") || strings.Contains(page, " changed\"") || strings.Contains(page, "<h2>Groups</h2>") {
		t.Error("an empty plan lists changes, changed cells or groups")
	}
	if n := strings.Count(page, `<table class="matrix">`); n != 2*len(m.Ports()) {
		t.Errorf("%d matrices, want before and after of %d ports", n, len(m.Ports()))
	}
	if err := (&Plan{}).HTML(&bytes.Buffer{}); err == nil {
		t.Error("a plan without matrices was written")
	}
}

// Chromium renders the page: each changed cell's highlighted border is a region of its own in
// both matrices, and the verdicts' colours are there.
func TestHTMLInABrowser(t *testing.T) {
	p := samplePlan()
	dir := t.ArtifactDir()
	page := filepath.Join(dir, "plan.html")
	if err := os.WriteFile(page, []byte(renderHTML(t, p)), 0o644); err != nil {
		t.Fatal(err)
	}
	const width, height = 1400, 1600
	shot := testenv.Screenshot(t, page, filepath.Join(dir, "plan.png"), width, height)
	if b := shot.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Fatalf("screenshot is %v, want %dx%d", b, width, height)
	}
	if n := testenv.Regions(shot, highlight); n != 2*len(p.Changes) {
		t.Errorf("%d regions of the highlight, want %d (%d changed cells in two matrices)", n, 2*len(p.Changes), len(p.Changes))
	}
	seen := testenv.Colours(shot)
	if len(seen) < 8 || seen[paper] == shot.Bounds().Dx()*shot.Bounds().Dy() {
		t.Errorf("screenshot is blank: %d colours", len(seen))
	}
	for _, c := range p.After.Cells() {
		if colour, _ := swatch(c.Predicted.Mark()); seen[colour] == 0 {
			t.Errorf("no cell has the colour %s of %q", hex(colour), c.Predicted.Mark())
		}
	}
	// The page ended above the window's bottom edge, so nothing is cut off.
	if blank := testenv.BlankRowsAtBottom(shot, paper); blank < 64 {
		t.Errorf("only %d blank rows at the bottom of the screenshot: the page may not fit the window", blank)
	}
}
