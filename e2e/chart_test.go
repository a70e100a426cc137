package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	. "github.com/onsi/gomega"
)

// netpactNS is where make e2e installs netpact, with its Helm chart: not kube-system, where the
// plain manifests put the enforcer, so that every part and every client is shown to find it
// wherever a user installed it.
const netpactNS = "netpact"

// chartManifest renders deploy/chart/netpact into netpactNS (go tool helm template) with the
// image placeholder kind.ReadManifests replaces, and returns the file it wrote. withNamespace
// adds the namespace first (helm install --create-namespace does that); crds adds the CRDs.
func chartManifest(name string, withNamespace, crds bool, set ...string) string {
	args := []string{"tool", "helm", "template", "netpact", filepath.Join("deploy", "chart", "netpact"), // from root
		"--namespace", netpactNS, "--set", "image=NETPACT_IMAGE", "--set", "imagePullPolicy=Never"}
	if crds {
		args = append(args, "--include-crds")
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	out, err := cmd.Output()
	var stderr string
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = string(ee.Stderr)
	}
	Expect(err).NotTo(HaveOccurred(), "helm template %s: %s", strings.Join(set, " "), stderr)
	if withNamespace {
		out = append([]byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+netpactNS+"\n---\n"), out...)
	}
	path := filepath.Join(root, "bin", "e2e-chart-"+name+".yaml")
	Expect(os.WriteFile(path, out, 0o644)).To(Succeed())
	return path
}
