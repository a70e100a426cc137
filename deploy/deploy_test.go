// Package deploy_test checks that the Helm chart and the plain manifests install the same objects.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/netpact/netpact/internal/kubeapply"
)

const chart = "chart/netpact"

var (
	// plainValues render what the plain manifests carry: the image placeholder kind.ReadManifests
	// replaces, and the pull policy of images loaded into kind's nodes.
	plainValues = []string{"image=NETPACT_IMAGE", "imagePullPolicy=Never"}
	// The parts of the chart, each alone (the CRDs come with every one).
	enforcerOnly   = []string{"controller.enabled=false", "admission.enabled=false"}
	reconcilerOnly = []string{"enforcer.enabled=false"}
	controllerOnly = []string{"enforcer.enabled=false", "admission.enabled=false"}
	admissionOnly  = []string{"enforcer.enabled=false", "controller.enabled=false"}
)

// helm runs the helm built from its Go module (a tool of go.mod) and returns its stdout; the
// error carries its stderr.
func helm(args ...string) (string, error) {
	cmd := exec.Command("go", append([]string{"tool", "helm"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return string(out), nil
}

// template renders the chart, its CRDs included, into namespace ns with the --set values set.
func template(ns string, set ...string) (string, error) {
	args := []string{"template", "netpact", chart, "--namespace", ns, "--include-crds"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return helm(args...)
}

func render(t *testing.T, ns string, set ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := template(ns, set...)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := kubeapply.Decode("helm template", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// plain decodes the plain manifests matching globs (relative to deploy/), with their namespaces
// kube-system and netpact-system renamed to ns unless ns is empty. Their Namespace object is left
// out: the chart leaves it to helm install --create-namespace.
func plain(t *testing.T, ns string, globs ...string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for _, g := range globs {
		files, err := filepath.Glob(g)
		if err != nil || len(files) == 0 {
			t.Fatalf("no plain manifest %s (%v)", g, err)
		}
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if ns != "" {
				raw = []byte(strings.NewReplacer("kube-system", ns, "netpact-system", ns).Replace(string(raw)))
			}
			objs, err := kubeapply.Decode(f, raw)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if o.GetKind() != "Namespace" {
					out = append(out, o)
				}
			}
		}
	}
	return out
}

func key(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

func byName(t *testing.T, what string, objs []*unstructured.Unstructured) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, o := range objs {
		if _, dup := out[key(o)]; dup {
			t.Errorf("%s has %s twice", what, key(o))
		}
		out[key(o)] = o.Object
	}
	return out
}

// equal fails unless the chart's objects are exactly the plain manifests', field for field.
func equal(t *testing.T, plainObjs, chartObjs []*unstructured.Unstructured) {
	t.Helper()
	want, got := byName(t, "the plain manifests", plainObjs), byName(t, "the chart", chartObjs)
	if len(want) == 0 {
		t.Fatal("no plain manifests")
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

func TestChartLints(t *testing.T) {
	out, err := helm("lint", "--strict", chart, "--set", "image=example/netpact:1")
	if err != nil || !strings.Contains(out, "0 chart(s) failed") {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
}

// TestChartEqualsManifests: the enforcer alone, in kube-system, renders exactly crds/ and
// netpact.yaml; the controller and the admission webhook, in netpact-system, exactly crds/ and
// reconciler/ (but its Namespace).
func TestChartEqualsManifests(t *testing.T) {
	t.Run("enforcer", func(t *testing.T) {
		equal(t, plain(t, "", "crds/*.yaml", "netpact.yaml"),
			render(t, "kube-system", slices.Concat(plainValues, enforcerOnly)...))
	})
	t.Run("reconciler", func(t *testing.T) {
		equal(t, plain(t, "", "crds/*.yaml", "reconciler/*.yaml"),
			render(t, "netpact-system", slices.Concat(plainValues, reconcilerOnly)...))
	})
}

// clusterScoped are the kinds of the chart's objects that have no namespace.
var clusterScoped = map[string]bool{"CustomResourceDefinition": true, "ClusterRole": true, "ClusterRoleBinding": true,
	"ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true, "ValidatingWebhookConfiguration": true}

// TestChartNamespace: the release's namespace is where every namespaced object goes and what
// every reference to the namespace names (service account subjects and usernames, the admission
// policy's expression and message, --service, the webhook's Service): the whole chart equals the
// plain manifests with both their namespaces renamed, and names neither of them anywhere, not
// even in a comment. No exception is needed: no part names an object of kube-system (the
// enforcer watches every namespace's alike).
func TestChartNamespace(t *testing.T) {
	const ns = "other"
	out, err := template(ns, plainValues...)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "kube-system") || strings.Contains(line, "netpact-system") {
			t.Errorf("line %d names a namespace not the release's: %s", i+1, line)
		}
	}
	objs, err := kubeapply.Decode("helm template", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		want := ns
		if clusterScoped[o.GetKind()] {
			want = ""
		}
		if o.GetNamespace() != want {
			t.Errorf("%s: namespace %q, want %q", key(o), o.GetNamespace(), want)
		}
	}
	equal(t, plain(t, ns, "crds/*.yaml", "netpact.yaml", "reconciler/*.yaml"), objs)
}

// TestChartParts: the controller's and the admission webhook's switches each render that part's
// objects (named after it) and no other's; together they are the render without the enforcer.
func TestChartParts(t *testing.T) {
	img := "image=example/netpact:1"
	rest := map[string]bool{}
	for _, o := range render(t, "ns", slices.Concat(reconcilerOnly, []string{img})...) {
		if o.GetKind() != "CustomResourceDefinition" {
			rest[key(o)] = true
		}
	}
	for _, p := range []struct {
		set  []string
		owns func(name string) bool
	}{
		{controllerOnly, func(n string) bool { return strings.HasPrefix(n, "netpact-reconciler") }},
		{admissionOnly, func(n string) bool { return strings.HasPrefix(n, "netpact-admission") || n == "netpact-policies" }},
	} {
		for _, o := range render(t, "ns", slices.Concat(p.set, []string{img})...) {
			switch {
			case o.GetKind() == "CustomResourceDefinition":
				continue
			case !p.owns(o.GetName()):
				t.Errorf("%v renders %s, another part's", p.set, key(o))
			case !rest[key(o)]:
				t.Errorf("%v renders %s, which the render of both parts lacks", p.set, key(o))
			}
			delete(rest, key(o))
		}
	}
	for k := range rest {
		t.Errorf("neither part alone renders %s", k)
	}
}

// TestChartValues: the values change what they say; image and imagePullPolicy are every
// container's.
func TestChartValues(t *testing.T) {
	objs := render(t, "kube-system", "image=example/netpact:1", "imagePullPolicy=Always",
		"policyEnforcementMode=always", "metricsPort=9880", "flowsPort=9881")
	ds, ok := byName(t, "the chart", objs)["DaemonSet kube-system/netpact"]
	if !ok {
		t.Fatal("no DaemonSet")
	}
	raw, _ := json.Marshal(ds)
	for _, want := range []string{`--policy-enforcement-mode=always`,
		`--metrics-listen=$(HOST_IP):9880`, `--flows-listen=$(HOST_IP):9881`, `"containerPort":9880`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("the DaemonSet lacks %s:\n%s", want, raw)
		}
	}
	var containers int
	for _, o := range objs {
		for _, field := range []string{"containers", "initContainers"} {
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", field)
			for _, c := range cs {
				c, _ := c.(map[string]any)
				containers++
				if c["image"] != "example/netpact:1" || c["imagePullPolicy"] != "Always" {
					t.Errorf("%s: container %v has image %v, pull policy %v", key(o), c["name"], c["image"], c["imagePullPolicy"])
				}
			}
		}
	}
	// The enforcer and its init container, the controller, the admission webhook.
	if containers != 4 {
		t.Errorf("%d containers, want 4", containers)
	}
}

// TestChartRefuses: values the chart cannot install are refused at render, naming the value.
func TestChartRefuses(t *testing.T) {
	img := "image=example/netpact:1"
	for _, c := range []struct {
		name string
		set  []string
		want string
	}{
		{"no image", nil, "set image to a netpact image the nodes can pull (kind/images.sh builds one)"},
		{"empty image", []string{"image="}, "set image to a netpact image the nodes can pull"},
		{"unknown mode", []string{img, "policyEnforcementMode=sometimes"}, "'/policyEnforcementMode'"},
		{"unknown pull policy", []string{img, "imagePullPolicy=always"}, "'/imagePullPolicy'"},
		{"unknown value", []string{img, "metricPort=9880"}, "'metricPort' not allowed"},
		{"unknown part value", []string{img, "controller.enable=false"}, "'enable' not allowed"},
		{"port 0", []string{img, "port=0"}, "'/port'"},
		{"port 65536", []string{img, "flowsPort=65536"}, "'/flowsPort'"},
		{"capability not a string", []string{img, "capabilities[0]=1"}, "'/capabilities/0'"},
		{"resource not a quantity", []string{img, "resources.limits.memory=lots"}, "'/resources/limits/memory'"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := template("ns", c.set...)
			if err == nil {
				t.Fatalf("rendered:\n%s", out)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("the error does not say %s: %v", c.want, err)
			}
		})
	}
}
