// Package deploy_test checks that the Helm chart and the plain manifests install the same objects.
package deploy_test

import (
	"encoding/json"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/netpact/netpact/internal/kubeapply"
	"github.com/netpact/netpact/kind"
)

const chart = "chart/netpact"

// helm runs the helm built from its Go module (a tool of go.mod).
func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"tool", "helm"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func render(t *testing.T, set ...string) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", "netpact", chart, "--namespace", "kube-system", "--include-crds"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	objs, err := kubeapply.Decode("helm template", []byte(helm(t, args...)))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func byName(objs []*unstructured.Unstructured) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, o := range objs {
		out[o.GetKind()+" "+o.GetNamespace()+"/"+o.GetName()] = o.Object
	}
	return out
}

func TestChartLints(t *testing.T) {
	out := helm(t, "lint", "--strict", chart)
	if !strings.Contains(out, "0 chart(s) failed") {
		t.Fatalf("helm lint:\n%s", out)
	}
}

// TestChartEqualsManifests: the chart with its default values renders exactly the objects of
// the plain manifests (crds/ and netpact.yaml), field for field.
func TestChartEqualsManifests(t *testing.T) {
	plain, err := kind.ReadManifests(".", "NETPACT_IMAGE")
	if err != nil {
		t.Fatal(err)
	}
	want, got := byName(plain), byName(render(t))
	if len(want) < 8 {
		t.Fatalf("the plain manifests have %d objects", len(want))
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("the chart lacks %s", k)
			continue
		}
		if !reflect.DeepEqual(w, g) {
			wj, _ := json.MarshalIndent(w, "", " ")
			gj, _ := json.MarshalIndent(g, "", " ")
			t.Errorf("%s differs:\nplain: %s\nchart: %s", k, wj, gj)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("the chart has %s, the plain manifests do not", k)
		}
	}
}

// TestChartValues: the values change what they say.
func TestChartValues(t *testing.T) {
	objs := byName(render(t, "image=example/netpact:1", "policyEnforcementMode=always", "metricsPort=9880", "flowsPort=9881"))
	ds, ok := objs["DaemonSet kube-system/netpact"]
	if !ok {
		t.Fatal("no DaemonSet")
	}
	raw, _ := json.Marshal(ds)
	for _, want := range []string{`"image":"example/netpact:1"`, `--policy-enforcement-mode=always`,
		`--metrics-listen=$(HOST_IP):9880`, `--flows-listen=$(HOST_IP):9881`, `"containerPort":9880`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("the DaemonSet lacks %s:\n%s", want, raw)
		}
	}
}
