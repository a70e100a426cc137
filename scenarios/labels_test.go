package scenarios

import (
	"bytes"
	"testing"
)

// TestFakedNamespaceLabelIsIgnored: pods labelled with another namespace's labels
// (io.cilium.k8s.namespace.labels.*) are not let in by namespace-label selectors nor let out of
// a lockdown that exempts by namespace label, on the datapath as in the engine.
func TestFakedNamespaceLabelIsIgnored(t *testing.T) {
	results := runFiles(t, "testdata/faked-namespace-label.yaml")
	if results[0].Failed() {
		var b bytes.Buffer
		Print(&b, results, true)
		t.Fatalf("scenario failed:\n%s", b.String())
	}
}
