//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"image/png"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/policy/matrix"
)

// scratchRepo is a Git repository in a temporary folder, for plan and the CI example.
type scratchRepo struct {
	t   *testing.T
	dir string
}

func newScratchRepo(t *testing.T) *scratchRepo {
	t.Helper()
	testenv.RequireCommand(t, "git", "git")
	r := &scratchRepo{t: t, dir: t.TempDir()}
	r.git("init", "-q", "-b", "main")
	return r
}

func (r *scratchRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=netpact test", "-c", "user.email=test@netpact.invalid", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = r.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// copyTree copies the regular files under src into the repository at dst.
func (r *scratchRepo) copyTree(src, dst string) {
	r.t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out := filepath.Join(r.dir, dst, rel)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(out, data, 0o644)
	})
	if err != nil {
		r.t.Fatal(err)
	}
}

func (r *scratchRepo) commit(msg string) {
	r.t.Helper()
	r.git("add", "-A")
	r.git("commit", "-q", "--allow-empty", "-m", msg)
}

const seedEgress = "policies/001-frontend-to-backend/frontend-egress-control.yaml"

// seedRepo is the seed policies in two commits: the base without seed 001's egress policy, the
// head (HEAD) with it.
func seedRepo(t *testing.T) *scratchRepo {
	r := newScratchRepo(t)
	r.copyTree(filepath.Join("..", "..", "policies"), "policies")
	if err := os.Remove(filepath.Join(r.dir, seedEgress)); err != nil {
		t.Fatal(err)
	}
	r.commit("seed policies without frontend-egress-control")
	r.copyTree(filepath.Join("..", "..", "policies"), "policies")
	r.commit("add frontend-egress-control")
	return r
}

// engineCell is a cell as the test computes it from the engine directly.
type engineCell struct {
	From, To string
	Port     uint16
	Protocol string
	Before   string
	After    string
}

// engineChanges is the oracle: every pod and external address of the cluster file against every
// other on each destination's ports, decided by the engine over both bundles, and the cells
// whose verdicts differ.
func engineChanges(t *testing.T, clusterPath string, base, head []string) []engineCell {
	t.Helper()
	data, err := os.ReadFile(clusterPath)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := policy.LoadClusterFile(clusterPath, data)
	if err != nil {
		t.Fatal(err)
	}
	compile := func(paths []string) *policy.State {
		b := &policy.Bundle{}
		if len(paths) > 0 {
			if b, err = policy.Load(paths, policy.LoadOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		s, err := policy.Compile(&cf.Cluster, b, policy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before, after := compile(base), compile(head)
	type end struct {
		name  string
		ip    netip.Addr
		names []string
		ports []policy.NamedPort
	}
	var ends []end
	for _, ep := range cf.Endpoints {
		ends = append(ends, end{name: ep.Namespace + "/" + ep.Name, ip: ep.IPs[0], ports: ep.Ports})
	}
	for _, ex := range cf.External {
		ends = append(ends, end{name: ex.Name, ip: ex.IP, names: ex.Names, ports: ex.Ports})
	}
	var out []engineCell
	for _, src := range ends {
		for _, dst := range ends {
			if src.name == dst.name {
				continue
			}
			for _, p := range dst.ports {
				b := before.DecideResolved(src.ip, dst.ip, dst.names, p.Protocol, p.Port)
				a := after.DecideResolved(src.ip, dst.ip, dst.names, p.Protocol, p.Port)
				if a.Outcome != b.Outcome {
					out = append(out, engineCell{src.name, dst.name, p.Port, p.Protocol.String(), string(b.Outcome), string(a.Outcome)})
				}
			}
		}
	}
	return out
}

type planJSON struct {
	Summary string         `json:"summary"`
	Counts  map[string]int `json:"counts"`
	Groups  []struct {
		Name string   `json:"name"`
		Pods []string `json:"pods"`
	} `json:"groups"`
	Changes []struct {
		From     string `json:"from"`
		To       string `json:"to"`
		Port     uint16 `json:"port"`
		Protocol string `json:"protocol"`
		Change   string `json:"change"`
		Before   struct{ Verdict, What, Rule string }
		After    struct{ Verdict, What, Rule string }
	} `json:"changes"`
}

func sortCells(cs []engineCell) {
	slices.SortFunc(cs, func(a, b engineCell) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	})
}

// TestPlanSeed001: base is the seed policies without seed 001's egress policy, head has it;
// plan prints exactly the cells the engine says change, in every output, and exits 2.
func TestPlanSeed001(t *testing.T) {
	r := seedRepo(t)
	cluster := filepath.Join("..", "..", "docs", "examples", "cluster.yaml")
	var baseFiles []string
	err := filepath.WalkDir(filepath.Join("..", "..", "policies"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, filepath.Base(seedEgress)) && !strings.Contains(p, "002-flask") {
			baseFiles = append(baseFiles, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Seed 002 is read through its kustomization (kubectl apply -n db), as plan reads the folder.
	baseFiles = append(baseFiles, filepath.Join("..", "..", "policies", "002-flask-postgres-l3-and-l7"))
	want := engineChanges(t, cluster, baseFiles, []string{filepath.Join("..", "..", "policies")})
	if len(want) == 0 {
		t.Fatal("the oracle finds no change: the test would prove nothing")
	}
	sortCells(want)

	args := []string{"plan", "--cluster", cluster, "--repo", r.dir, "--base", "HEAD~1", "--head", "HEAD", filepath.Join(r.dir, "policies")}
	stdout, stderr, code := run(t, append(args, "-o", "json")...)
	if code != 2 {
		t.Fatalf("exit %d, want 2 (changes)\n%s", code, stderr)
	}
	var pj planJSON
	if err := json.Unmarshal([]byte(stdout), &pj); err != nil {
		t.Fatalf("plan JSON: %v\n%s", err, stdout)
	}
	var got []engineCell
	for _, c := range pj.Changes {
		got = append(got, engineCell{c.From, c.To, c.Port, c.Protocol, c.Before.Verdict, c.After.Verdict})
		if c.Change != "newly-denied" {
			t.Errorf("%s -> %s %d/%s: change %q, want newly-denied (an egress allow list only closes)", c.From, c.To, c.Port, c.Protocol, c.Change)
		}
		if !strings.Contains(c.After.Rule, "frontend-egress-control") || !strings.Contains(c.After.Rule, seedEgress+":") {
			t.Errorf("%s -> %s %d/%s: rule after %q does not name the egress policy with its file:line in the repository", c.From, c.To, c.Port, c.Protocol, c.After.Rule)
		}
	}
	sortCells(got)
	if !slices.Equal(got, want) {
		t.Fatalf("plan's changed cells differ from the engine's:\n got %v\nwant %v", got, want)
	}
	summary := fmt.Sprintf("%d cells change: 0 newly allowed, %d newly denied", len(want), len(want))
	if pj.Summary != summary {
		t.Errorf("summary %q, want %q", pj.Summary, summary)
	}

	// Text: a line per changed cell under its port.
	stdout, _, code = run(t, args...)
	if code != 2 || !strings.Contains(stdout, summary) {
		t.Fatalf("text: exit %d, want 2 and %q:\n%s", code, summary, stdout)
	}
	for _, c := range want {
		if !strings.Contains(stdout, fmt.Sprintf("newly denied: %s -> %s\n", c.From, c.To)) {
			t.Errorf("text lacks %v:\n%s", c, stdout)
		}
	}
	if n := strings.Count(stdout, "newly denied: "); n != len(want) {
		t.Errorf("text lists %d changes, want %d", n, len(want))
	}

	// Markdown: the summary line first, then a row per changed cell.
	stdout, _, code = run(t, append(args, "-o", "markdown")...)
	if code != 2 || !strings.HasPrefix(stdout, "**"+summary+"**\n") {
		t.Fatalf("markdown: exit %d, want 2 and the summary first:\n%s", code, stdout)
	}
	rows := 0
	for _, line := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(line, "| newly denied |") {
			rows++
		}
	}
	if rows != len(want) {
		t.Errorf("markdown has %d rows, want %d:\n%s", rows, len(want), stdout)
	}
	for _, c := range want {
		if !strings.Contains(stdout, fmt.Sprintf("| newly denied | `%s` | `%s` |", c.From, c.To)) {
			t.Errorf("markdown lacks %v", c)
		}
	}

	// HTML, in a real browser: each changed cell is highlighted in both matrices.
	dir := t.ArtifactDir()
	page := filepath.Join(dir, "plan.html")
	picture := filepath.Join(dir, "plan.png")
	stdout, _, code = run(t, append(args, "-o", "html", "--png", picture)...)
	if code != 2 {
		t.Fatalf("html: exit %d, want 2", code)
	}
	if err := os.WriteFile(page, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	shot := testenv.Screenshot(t, page, filepath.Join(dir, "screenshot.png"), 1800, 9000)
	if n := testenv.Regions(shot, matrix.Highlight()); n != 2*len(want) {
		t.Errorf("the screenshot has %d highlighted cells, want %d (%d changed cells in two matrices)", n, 2*len(want), len(want))
	}
	if seen := testenv.Colours(shot); len(seen) < 8 {
		t.Errorf("the screenshot is blank: %d colours", len(seen))
	}
	if blank := testenv.BlankRowsAtBottom(shot, matrix.Paper()); blank < 64 {
		t.Errorf("only %d blank rows at the bottom of the screenshot: the page may not fit the window", blank)
	}

	// PNG: the head's matrix, each changed cell outlined (and the legend's outline swatch).
	f, err := os.Open(picture)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", picture, err)
	}
	if n := testenv.Regions(img, matrix.Highlight()); n != len(want)+1 {
		t.Errorf("the picture has %d outlined regions, want %d (%d changed cells and the legend's swatch)", n, len(want)+1, len(want))
	}
}

// TestPlanExitCodes: no change exits 0, the reverse change (newly allowed) exits 2, or 3 with
// --fail-on-new-allow; an unknown revision and an invalid head exit 1 naming what is wrong.
func TestPlanExitCodes(t *testing.T) {
	r := seedRepo(t)
	cluster := filepath.Join("..", "..", "docs", "examples", "cluster.yaml")
	plan := func(base, head string, extra ...string) (string, string, int) {
		return run(t, append([]string{"plan", "--cluster", cluster, "--repo", r.dir, "--base", base, "--head", head, filepath.Join(r.dir, "policies")}, extra...)...)
	}
	if out, stderr, code := plan("HEAD", "HEAD"); code != 0 || !strings.Contains(out, "no cell changes") {
		t.Errorf("same revision: exit %d, want 0 and \"no cell changes\":\n%s%s", code, out, stderr)
	}
	if out, _, code := plan("HEAD", "HEAD~1"); code != 2 || !strings.Contains(out, "newly allowed: default/frontend -> ") {
		t.Errorf("removing the egress policy: exit %d, want 2 and newly allowed cells:\n%s", code, out)
	}
	if _, _, code := plan("HEAD", "HEAD~1", "--fail-on-new-allow"); code != 3 {
		t.Errorf("--fail-on-new-allow with newly allowed cells: exit %d, want 3", code)
	}
	if _, _, code := plan("HEAD~1", "HEAD", "--fail-on-new-allow"); code != 2 {
		t.Errorf("--fail-on-new-allow with only newly denied cells: exit %d, want 2", code)
	}
	if _, stderr, code := run(t, "plan", "--cluster", cluster, "--repo", r.dir, "--base", "no-such-branch", "--head", "HEAD"); code != 1 || !strings.Contains(stderr, `resolve revision "no-such-branch"`) {
		t.Errorf("unknown revision: exit %d, want 1 naming it:\n%s", code, stderr)
	}
	// A broken head: the error names the file as the repository does.
	bad := filepath.Join(r.dir, "policies", "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: bad}\nspec:\n  endpointSelector: {}\n  ingress: [{fromCIDR: [not-a-cidr]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.commit("a broken policy")
	if _, stderr, code := plan("HEAD~1", "HEAD"); code != 1 || !strings.Contains(stderr, "policies/bad.yaml:6:") || strings.Contains(stderr, os.TempDir()) {
		t.Errorf("broken head: exit %d, want 1 naming policies/bad.yaml:6 (not the checkout folder):\n%s", code, stderr)
	}
}

// planWorld is a cluster with an HTTP server, a Kafka broker, a DNS server and a named external
// API, for the plan of L7, DNS, toFQDNs, Kafka and audited cells.
const planWorld = `namespaces: [{name: app}, {name: kube-system}]
pods:
  - {namespace: app, name: client, labels: {app: client}}
  - {namespace: app, name: web, labels: {app: web}, ports: [{port: 80}]}
  - {namespace: app, name: kafka, labels: {app: kafka}, ports: [{port: 9092}]}
  - {namespace: app, name: db, labels: {app: db}, ports: [{port: 5432}]}
  - {namespace: kube-system, name: coredns, labels: {k8s-app: kube-dns}, ports: [{port: 53, protocol: UDP}]}
external:
  - {name: api, ip: 203.0.113.9, names: [api.example.com], ports: [{port: 443}]}
`

func planPolicies(httpRules, dnsRule, kafkaRules, audit string) string {
	return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [` + httpRules + `]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
      toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [` + dnsRule + `]}}]
    - toFQDNs: [{matchName: api.example.com}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    - toEndpoints: [{matchLabels: {app: web}}, {matchLabels: {app: kafka}}, {matchLabels: {app: db}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: kafka}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "9092", protocol: TCP}], rules: {kafka: [` + kafkaRules + `]}}]
` + audit
}

// auditDB is a policy in audit mode that denies client to db.
const auditDB = `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-audit, namespace: app, annotations: {netpact.io/audit: "true"}}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: client}}]
`

// TestPlanShowsWhatCellsAre: proxy cells change with their rules, and each cell is shown as what
// it is: the HTTP requests, DNS names and Kafka roles the proxy allows, the name a toFQDNs cell
// waits for, an audited pass.
func TestPlanShowsWhatCellsAre(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cluster := write("cluster.yaml", planWorld)
	write("base/p.yaml", planPolicies(`{method: GET, path: /public}`, `{matchPattern: "*.example.com"}`, `{role: produce, topic: orders}`, ""))
	write("head/p.yaml", planPolicies(`{method: GET, path: /public}, {method: POST, path: /api}`, `{matchName: other.example.com}`,
		`{role: produce, topic: orders}, {role: consume, topic: notifications}`, auditDB))
	stdout, stderr, code := run(t, "plan", "--cluster", cluster, "-o", "json", filepath.Join(dir, "base"), filepath.Join(dir, "head"))
	if code != 2 {
		t.Fatalf("exit %d, want 2\n%s", code, stderr)
	}
	var pj planJSON
	if err := json.Unmarshal([]byte(stdout), &pj); err != nil {
		t.Fatal(err)
	}
	type row struct{ change, before, after string }
	got := map[string]row{}
	for _, c := range pj.Changes {
		got[fmt.Sprintf("%s -> %s %d/%s", c.From, c.To, c.Port, c.Protocol)] = row{c.Change, c.Before.What, c.After.What}
	}
	want := map[string]row{
		"app/client -> app/web 80/TCP":             {"newly-allowed", "HTTP proxy: GET /public", "HTTP proxy: GET /public; POST /api"},
		"app/client -> kube-system/coredns 53/UDP": {"changed", "DNS proxy: pattern *.example.com", "DNS proxy: name other.example.com"},
		"app/client -> api 443/TCP":                {"newly-denied", "allowed once api.example.com is resolved (toFQDNs)", "dropped (default deny)"},
		"app/client -> app/kafka 9092/TCP":         {"newly-allowed", "Kafka proxy: produce orders", "Kafka proxy: consume notifications; produce orders"},
		"app/client -> app/db 5432/TCP":            {"changed", "allowed", "allowed, reported AUDIT"},
	}
	// A deny section switches db's default deny on, audited as well: every other source too.
	for _, src := range []string{"app/web", "app/kafka", "kube-system/coredns", "api"} {
		want[src+" -> app/db 5432/TCP"] = row{"changed", "allowed", "allowed, reported AUDIT"}
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %+v, want %+v", k, got[k], w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected change %s: %+v", k, g)
		}
	}
}

// TestPlanGroupsPods: pods the engine cannot tell apart are one row named for their workload;
// a pod with other labels, ports or service account is a row of its own.
func TestPlanGroupsPods(t *testing.T) {
	dir := t.TempDir()
	cluster := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(cluster, []byte(`namespaces: [{name: shop}]
pods:
  - {namespace: shop, name: web-5d8f7c9b6-x2k4z, labels: {app: web}, ports: [{port: 80}]}
  - {namespace: shop, name: web-5d8f7c9b6-q7wmn, labels: {app: web}, ports: [{port: 80}]}
  - {namespace: shop, name: web-7c9b6d8f5-b9zzr, labels: {app: web}, ports: [{port: 80}]}
  - {namespace: shop, name: web-canary, labels: {app: web}, ports: [{port: 8080}]}
  - {namespace: shop, name: db-0, labels: {app: db}, serviceAccount: db, ports: [{port: 5432}]}
  - {namespace: shop, name: db-1, labels: {app: db}, serviceAccount: db, ports: [{port: 5432}]}
  - {namespace: shop, name: db-2, labels: {app: db}, ports: [{port: 5432}]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	base, head := filepath.Join(dir, "base"), filepath.Join(dir, "head")
	for _, d := range []string{base, head} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(head, "p.yaml"), []byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := run(t, "plan", "--cluster", cluster, "-o", "json", base, head)
	if code != 2 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	var pj planJSON
	if err := json.Unmarshal([]byte(stdout), &pj); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, g := range pj.Groups {
		got[g.Name] = strings.Join(g.Pods, ",")
	}
	want := map[string]string{
		"shop/web (3 pods)": "shop/web-5d8f7c9b6-q7wmn,shop/web-5d8f7c9b6-x2k4z,shop/web-7c9b6d8f5-b9zzr",
		"shop/web-canary":   "shop/web-canary",
		"shop/db (2 pods)":  "shop/db-0,shop/db-1",
		"shop/db-2":         "shop/db-2",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("groups %v, want %v", got, want)
	}
	// Each row of the matrix is a group: into db (2 pods) from the 4 rows, db's own pods
	// included (db-0 to db-1 is traffic); into db-2 from the 3 others.
	if pj.Counts["changes"] != 4+3 {
		t.Errorf("%d changes, want 7: %s", pj.Counts["changes"], pj.Summary)
	}
}
