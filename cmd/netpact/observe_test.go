//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netpact/netpact/api/v1alpha1"
	"github.com/netpact/netpact/enforcer/localnode"
	"github.com/netpact/netpact/enforcer/observe"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/reconciler"
)

// onlyFromC makes b default deny on ingress except from c: a's connection to b is a default-deny
// drop, which observe must name with the policy, its rule, its file and line, and its revision.
const onlyFromC = `# b takes traffic from c alone.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: only-from-c
  namespace: default
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

// TestObserveLocalNodeThroughTheReconciler: a policy reconciled from Git onto a local node drops
// a connection; netpact observe, on the node's socket, prints Hubble's compact lines for the
// drop with the policy, the rule, the file and line in the repository and the Git revision, and
// -o json lines that parse with Hubble's field names.
func TestObserveLocalNodeThroughTheReconciler(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "git", "git")
	testenv.RequireCommand(t, "ip", "iproute2")
	repo := filepath.Join(t.TempDir(), "repo")
	if err := os.MkdirAll(filepath.Join(repo, "policies"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "policies", "b.yaml"), []byte(onlyFromC), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"-c", "user.name=t", "-c", "user.email=t@netpact.io", "commit", "-q", "-m", "b"}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	head, _ := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	revision := "main@sha1:" + strings.TrimSpace(string(head))

	ring := observe.NewRing(0)
	node := localnode.NewNode(localnode.Options{Ring: ring})
	t.Cleanup(func() { node.Stop() })
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	cluster, err := node.AddCluster(&policy.Cluster{Namespaces: []policy.Namespace{{Name: "default"}}, Endpoints: []policy.Endpoint{
		{Namespace: "default", Name: "a", Labels: map[string]string{"app": "a"}},
		{Namespace: "default", Name: "b", Labels: map[string]string{"app": "b"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	target := &reconciler.NodeTarget{NodeName: "local", Node: node, Cluster: func() *policy.Cluster { return cluster }}
	obj := &v1alpha1.PolicySource{ObjectMeta: metav1.ObjectMeta{Name: "policies"},
		Spec: v1alpha1.PolicySourceSpec{URL: "file://" + repo, Path: "policies", Interval: metav1.Duration{Duration: time.Minute}}}
	r := reconciler.New(obj, &reconciler.Source{URL: "file://" + repo}, target)
	if err := r.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	var b netip.Addr
	for _, ep := range cluster.Endpoints {
		if ep.Name == "b" {
			b = ep.IPs[0]
		}
	}
	// a -> b:80 is dropped: the connection times out.
	err = node.Pod("default/a").Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(b, 80).String(), 300*time.Millisecond)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("a -> b:80: %v", err)
	}
	if !node.SyncFlows() {
		t.Fatal("the node did not read its flow events")
	}
	sock := filepath.Join(t.TempDir(), "observe.sock")
	stop, err := serveObserve(sock, ring, "local")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	stdout, stderr, code := run(t, "observe", "--socket", sock, "--verdict", "DROPPED", "-o", "compact")
	if code != 0 {
		t.Fatalf("observe exit %d: %s", code, stderr)
	}
	var drop, verdict string
	for _, l := range strings.Split(stdout, "\n") {
		switch {
		case strings.Contains(l, " Policy denied DROPPED "):
			drop = l
		case strings.Contains(l, " policy-verdict:none INGRESS DENIED "):
			verdict = l
		}
	}
	for what, l := range map[string]string{"drop": drop, "policy verdict": verdict} {
		for _, want := range []string{"default/a:", " <> default/b:80 ", "BY default/only-from-c (CiliumNetworkPolicy)",
			"at policies/b.yaml:7", "@ " + revision, "(TCP Flags: SYN)"} {
			if !strings.Contains(l, want) {
				t.Errorf("the %s line lacks %q:\n%s\nall:\n%s", what, want, l, stdout)
			}
		}
	}
	stdout, _, code = run(t, "observe", "--socket", sock, "--verdict", "DROPPED", "-o", "json", "--to-pod", "default/b")
	if code != 0 || stdout == "" {
		t.Fatalf("observe -o json: exit %d, %q", code, stdout)
	}
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var resp map[string]any
		if err := json.Unmarshal([]byte(l), &resp); err != nil {
			t.Fatalf("a json line does not parse: %v\n%s", err, l)
		}
		fl, _ := resp["flow"].(map[string]any)
		for _, k := range []string{"time", "verdict", "IP", "l4", "source", "destination", "Type", "node_name", "event_type", "traffic_direction", "ingress_denied_by"} {
			if _, ok := fl[k]; !ok {
				t.Errorf("a json flow lacks %q: %s", k, l)
			}
		}
		if fl["verdict"] != "DROPPED" {
			t.Errorf("verdict %v", fl["verdict"])
		}
	}
}

// TestPredictAndValidateAudit: predict shows the cells a policy in audit mode would drop as A,
// and validate warns that netpact does not enforce it where Cilium would.
func TestPredictAndValidateAudit(t *testing.T) {
	f := filepath.Join(t.TempDir(), "audit.yaml")
	doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: default-deny
  namespace: default
  annotations:
    policy.cilium.io/audit-mode: "true"
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
`
	if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := run(t, "predict", "--cluster", filepath.Join("..", "..", "docs", "examples", "cluster.yaml"), f)
	if code != 0 {
		t.Fatalf("predict exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, f+":6:3: warning: CiliumNetworkPolicy default/default-deny: metadata.annotations: audit mode") {
		t.Errorf("no audit-mode warning:\n%s", stderr)
	}
	// database -> backend:80 is audited (the policy in audit mode allows only frontend);
	// frontend -> backend:80 is allowed.
	_, table, _ := strings.Cut(stdout, "80/TCP\n")
	for _, want := range []string{"default/database      A", "default/frontend      ."} {
		if !strings.Contains(table, want) {
			t.Errorf("predict's 80/TCP table lacks %q:\n%s", want, table)
		}
	}
	if !strings.Contains(stdout, `"A" allowed and reported AUDIT`) {
		t.Errorf("the legend lacks A:\n%s", stdout)
	}
}
