//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netpact/netpact/internal/testenv"
)

// asCLI makes the test binary run as netpact (TestMain), for scripts that call netpact.
const asCLI = "NETPACT_TEST_AS_CLI"

// netpactOnPath is a folder holding "netpact", this test binary under that name: a script the
// test runs calls the netpact of this build, not one installed elsewhere.
func netpactOnPath(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(self, filepath.Join(dir, "netpact")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The scratch policy repository of the CI example: web in namespace shop, reached by frontend,
// other and intruder.
const (
	ciCluster = `namespaces: [{name: shop}]
pods:
  - {namespace: shop, name: web, labels: {app: web}, ports: [{port: 80}]}
  - {namespace: shop, name: frontend, labels: {app: frontend}}
  - {namespace: shop, name: other, labels: {app: other}}
  - {namespace: shop, name: intruder, labels: {app: intruder}}
`
	ciWebFrom = `# web takes HTTP from the pods listed.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [%s]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`
	ciScenario = `name: who reaches web
namespaces: [{name: shop}]
pods:
  - {name: web, namespace: shop, labels: {app: web}, workload: nginx, ports: ["80/TCP"]}
  - {name: frontend, namespace: shop, labels: {app: frontend}}
  - {name: other, namespace: shop, labels: {app: other}}
  - {name: intruder, namespace: shop, labels: {app: intruder}}
steps:
  - name: the policies
    apply: [{file: ../policies/web.yaml}]
    expect:
      probes:
%s`
)

func ciWeb(from ...string) string {
	var sel []string
	for _, f := range from {
		sel = append(sel, "{matchLabels: {app: "+f+"}}")
	}
	if len(from) == 0 {
		sel = []string{"{}"}
	}
	return strings.Replace(ciWebFrom, "%s", strings.Join(sel, ", "), 1)
}

func ciExpect(allowed ...string) string {
	var b strings.Builder
	for _, src := range []string{"frontend", "other", "intruder"} {
		expect := "timeout"
		for _, a := range allowed {
			if a == src {
				expect = "allow"
			}
		}
		b.WriteString("        - {from: shop/" + src + ", to: shop/web, port: 80, protocol: TCP, expect: " + expect + "}\n")
	}
	return strings.Replace(ciScenario, "%s", b.String(), 1)
}

// TestCIExample runs docs/examples/ci/netpact-ci.sh, the gate docs/ci.md gives a policy
// repository, on a scratch repository for pull requests that close a path, open one, open one
// with approval, break a policy, break a scenario and change nothing, with its exit codes.
func TestCIExample(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	testenv.RequireCommand(t, "nginx", "nginx-light")
	bin := netpactOnPath(t)
	script, err := filepath.Abs(filepath.Join("..", "..", "docs", "examples", "ci", "netpact-ci.sh"))
	if err != nil {
		t.Fatal(err)
	}
	r := newScratchRepo(t)
	write := func(name, data string) {
		p := filepath.Join(r.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cluster.yaml", ciCluster)
	write("policies/web.yaml", ciWeb("frontend", "other"))
	write("scenarios/web.yaml", ciExpect("frontend", "other"))
	r.commit("base: frontend and other reach web")

	// pr makes a branch from main with the files changed, runs the gate on it and returns its
	// exit code and output.
	pr := func(name string, files map[string]string, env ...string) (int, string) {
		t.Helper()
		r.git("checkout", "-q", "-B", name, "main")
		for f, data := range files {
			write(f, data)
		}
		r.commit(name)
		out := filepath.Join(t.TempDir(), "out")
		cmd := exec.Command("bash", script, "main", "HEAD")
		cmd.Dir = r.dir
		cmd.Env = append(os.Environ(), asCLI+"=1", "PATH="+bin+":"+os.Getenv("PATH"), "OUT="+out)
		cmd.Env = append(cmd.Env, env...)
		output, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		plan, _ := os.ReadFile(filepath.Join(out, "plan.md"))
		junit, _ := os.ReadFile(filepath.Join(out, "junit.xml"))
		return code, string(output) + "\n--- plan.md\n" + string(plan) + "\n--- junit.xml\n" + string(junit)
	}
	cases := []struct {
		name  string
		files map[string]string
		env   []string
		code  int
		says  []string
	}{
		{"close-a-path", map[string]string{"policies/web.yaml": ciWeb("frontend"), "scenarios/web.yaml": ciExpect("frontend")}, nil, 0,
			[]string{"**1 cell changes: 0 newly allowed, 1 newly denied**", "| newly denied | `shop/other` | `shop/web` |", "the gate passes", `failures="0"`}},
		{"open-a-path", map[string]string{"policies/web.yaml": ciWeb(), "scenarios/web.yaml": ciExpect("frontend", "other", "intruder")}, nil, 3,
			[]string{"**1 cell changes: 1 newly allowed, 0 newly denied**", "| newly allowed | `shop/intruder` | `shop/web` |", "a reviewer must approve them"}},
		{"open-a-path-approved", map[string]string{"policies/web.yaml": ciWeb(), "scenarios/web.yaml": ciExpect("frontend", "other", "intruder")}, []string{"NETPACT_ALLOW_NEW=true"}, 0,
			[]string{"approved (NETPACT_ALLOW_NEW=true)", "the gate passes"}},
		{"invalid-policy", map[string]string{"policies/web.yaml": strings.Replace(ciWeb("frontend"), `port: "80"`, `port: "99999"`, 1)}, nil, 1,
			[]string{"policies/web.yaml:9:", "the policies are invalid"}},
		{"scenario-breaks", map[string]string{"policies/web.yaml": ciWeb()}, []string{"NETPACT_ALLOW_NEW=true"}, 1,
			[]string{"a scenario failed", "<failure"}},
		{"no-change", map[string]string{"policies/web.yaml": "# reviewed\n" + ciWeb("frontend", "other")}, nil, 0,
			[]string{"**no cell changes**", "the gate passes"}},
	}
	for _, c := range cases {
		code, out := pr(c.name, c.files, c.env...)
		if code != c.code {
			t.Errorf("%s: exit %d, want %d\n%s", c.name, code, c.code, out)
			continue
		}
		for _, s := range c.says {
			if !strings.Contains(out, s) {
				t.Errorf("%s: output lacks %q\n%s", c.name, s, out)
			}
		}
	}
}
