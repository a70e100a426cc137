package kubenode

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/netpact/netpact/enforcer/observe"

	"github.com/cilium/ebpf"

	"github.com/netpact/netpact/bpf"
	"github.com/netpact/netpact/enforcer"
	"github.com/netpact/netpact/enforcer/datapath"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// TestDriftRepairLoggedAndCounted: an entry written into the pinned policy map behind the
// enforcer's back is deleted by the enforcement's drift repair, logged with its map, endpoint
// and key, and counted in /metrics.
func TestDriftRepairLoggedAndCounted(t *testing.T) {
	testenv.RequireBPF(t)
	pin := filepath.Join(datapath.DefaultPinPath+"-test", fmt.Sprintf("kubenode-drift-%d", os.Getpid()))
	os.RemoveAll(pin)
	dp, err := datapath.Open(datapath.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	logs := &lockedBuffer{}
	e := newOffline(t)
	e.cfg.Enforcer = enforcer.New("n1", dp, policy.Options{})
	e.cfg.DriftInterval = 50 * time.Millisecond
	e.cfg.Log = slog.New(slog.NewTextHandler(logs, nil))

	m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "policy"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	stray := bpf.TcPolicyKey{Prefixlen: 96, EpId: 42, Identity: 7, Direction: 1, Proto: uint8(policy.ProtoUDP),
		Port: bits.ReverseBytes16(53)}
	if err := m.Put(stray, bpf.TcPolicyValue{RuleId: 5, Verdict: uint8(policy.VerdictAllow)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.runDriftRepair(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	wantLog := `level=WARN msg="datapath drift repaired" map=policy endpoint=42 key="egress identity 7 UDP 53" found="allow rule 5" wrote="nothing (deleted)"`
	// Repair runs every 50 ms: 5 s is 100 periods, not a timing claim.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if e.cfg.Enforcer.DriftRepairs() == 1 && strings.Contains(logs.String(), wantLog) {
			break
		}
	}
	if got := e.cfg.Enforcer.DriftRepairs(); got != 1 {
		t.Errorf("%d entries counted as repaired, want 1", got)
	}
	if !strings.Contains(logs.String(), wantLog) {
		t.Errorf("the log has no line with %s:\n%s", wantLog, logs)
	}
	if err := m.Lookup(stray, new(bpf.TcPolicyValue)); err == nil {
		t.Error("the stray policy entry is still there")
	}
	rec := httptest.NewRecorder()
	obs, err := newObserver(dp, e.cfg.Enforcer, observe.NewRing(0), e, "n1")
	if err != nil {
		t.Fatal(err)
	}
	obs.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	// Parsed as Prometheus parses it: the exposition is valid, and the repair is counted.
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	fam, ok := fams["netpact_datapath_drift_repaired_entries_total"]
	if !ok || len(fam.GetMetric()) != 1 || fam.GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Errorf("/metrics has no netpact_datapath_drift_repaired_entries_total 1:\n%s", body)
	}
	for _, name := range []string{"netpact_map_entries", "cilium_bpf_map_pressure", "netpact_datapath_packets_total", "netpact_policies"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

// lockedBuffer is a log destination the test reads while the loop writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
