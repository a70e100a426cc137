package policy_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/netpact/netpact/policy"
)

// FuzzLoad feeds arbitrary bytes to the loader and compiles whatever it accepts: no input may
// panic, and an accepted bundle must compile and decide.
func FuzzLoad(f *testing.F) {
	for _, dir := range []string{"testdata/invalid", "../policies/000-l7-dns-and-namespace-default-deny",
		"../policies/001-frontend-to-backend", "../policies/002-flask-postgres-l3-and-l7", "../policies/003-knp-universe-to-echo"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if data, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
				f.Add(data)
			}
		}
	}
	cluster := fixture()
	src, dst := netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("10.0.2.1")
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := policy.LoadBytes("fuzz.yaml", data, policy.LoadOptions{})
		if err != nil {
			return
		}
		st, err := policy.Compile(cluster, b, policy.Options{})
		if err != nil {
			t.Fatalf("accepted bundle does not compile: %v", err)
		}
		st.Decide(src, dst, policy.ProtoTCP, 5432)
		st.Decide(dst, netip.MustParseAddr("8.8.8.8"), policy.ProtoUDP, 53)
	})
}
