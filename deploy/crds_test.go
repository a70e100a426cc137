package deploy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// TestCRDsDescribeEveryField: netpact.io's CRDs describe every field, from the Go types'
// comments, so that kubectl explain says what each one is.
func TestCRDsDescribeEveryField(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("crds", "netpact.io_*.yaml"))
	if err != nil || len(files) < 2 {
		t.Fatalf("netpact.io CRDs: %v %v", files, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(raw, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		fields := 0
		for _, v := range crd.Spec.Versions {
			var walk func(path string, s *apiextensionsv1.JSONSchemaProps)
			walk = func(path string, s *apiextensionsv1.JSONSchemaProps) {
				fields++
				// metadata is ObjectMeta's, which the API server describes.
				if strings.TrimSpace(s.Description) == "" && path != crd.Spec.Names.Kind+".metadata" {
					t.Errorf("%s %s: %s has no description", f, v.Name, path)
				}
				for name, p := range s.Properties {
					walk(path+"."+name, &p)
				}
				if s.Items != nil && s.Items.Schema != nil {
					// An item's type is described by its list field.
					for name, p := range s.Items.Schema.Properties {
						walk(path+"[]."+name, &p)
					}
				}
			}
			walk(crd.Spec.Names.Kind, v.Schema.OpenAPIV3Schema)
		}
		if fields < 10 {
			t.Errorf("%s: %d fields walked", f, fields)
		}
	}
	// The chart installs the same CRDs.
	for _, f := range files {
		a, _ := os.ReadFile(f)
		b, err := os.ReadFile(filepath.Join("chart", "netpact", f))
		if err != nil || string(a) != string(b) {
			t.Errorf("the chart's %s differs from deploy/%s (make generate): %v", f, f, err)
		}
	}
}
