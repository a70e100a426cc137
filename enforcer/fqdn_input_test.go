package enforcer

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/policy"
)

// bareEnforcer is an enforcer with no datapath and no sync yet: what Learn and RestoreLearned do
// before the first sync (they only tell the engine).
func bareEnforcer(o FQDNOptions) *Enforcer {
	return &Enforcer{engine: policy.NewEngine(policy.Options{}), fqdn: newFQDNCache(o)}
}

// TestLearnRefusesOverTheNodesBound: answers that would take the node over MaxAddrs learned
// addresses are refused (the DNS proxy answers SERVFAIL) and change nothing; known addresses
// still refresh.
func TestLearnRefusesOverTheNodesBound(t *testing.T) {
	e := bareEnforcer(FQDNOptions{MaxAddrs: 2})
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	if err := e.Learn("one.example", []netip.Addr{a, b}, time.Minute); err != nil {
		t.Fatal(err)
	}
	err := e.Learn("two.example", []netip.Addr{c}, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "the most it may") {
		t.Fatalf("a third address: %v, want refused", err)
	}
	if got := e.LearnedNames(); len(got) != 1 || len(got["one.example."]) != 2 {
		t.Errorf("after the refusal the node holds %v, want one.example.'s two addresses only", got)
	}
	if err := e.Learn("two.example", []netip.Addr{a}, time.Minute); err != nil {
		t.Errorf("a known address under another name: %v", err)
	}
}

// TestRestoreRefusesHostileStateFiles: a state file that is not ours (garbage, or over the size
// bound) is refused with its path, and nothing of it is learned.
func TestRestoreRefusesHostileStateFiles(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{
		"garbage.json": []byte("{\"names\": {\"x.\": {\"not an address\": \"tomorrow\"}}}"),
		"huge.json":    append([]byte(`{"names":{`), make([]byte, maxStateBytes+1)...),
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		e := bareEnforcer(FQDNOptions{StatePath: path})
		n, err := e.RestoreLearned()
		if err == nil || !strings.Contains(err.Error(), path) || n != 0 || len(e.LearnedNames()) != 0 {
			t.Errorf("%s: restored %d (%v), error %v; want none and an error naming the file", name, n, e.LearnedNames(), err)
		}
	}
	e := bareEnforcer(FQDNOptions{StatePath: filepath.Join(dir, "missing.json")})
	if n, err := e.RestoreLearned(); err != nil || n != 0 {
		t.Errorf("no state file: %d, %v; want nothing and no error", n, err)
	}
}
