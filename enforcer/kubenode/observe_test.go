package kubenode

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/observe"
)

// TestFlowsSync: sync=1 waits for the node's hub before the generic handler answers, which never
// sees the parameter; a hub that does not catch up, or no hub, is a 503, a bad value a 400.
func TestFlowsSync(t *testing.T) {
	ring := observe.NewRing(0)
	var synced int
	caughtUp := true
	o := &Observer{flows: observe.Handler(ring, "n1"), sync: func(time.Duration) bool {
		synced++
		if caughtUp {
			// What the hub hands on while Sync waits is in the answer.
			ring.Add(&observe.GetFlowsResponse{Flow: &observe.Flow{Verdict: observe.Audit,
				IP: &observe.IP{Source: "10.0.0.1", Destination: "10.0.0.2"}}})
		}
		return caughtUp
	}}
	get := func(o *Observer, query string) (int, string) {
		rec := httptest.NewRecorder()
		// /flows of Handler, without the metrics an Observer needs a datapath for.
		o.syncing(o.flows).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/flows?"+query, nil))
		return rec.Code, rec.Body.String()
	}

	if code, body := get(o, "verdict=AUDIT"); code != http.StatusOK || body != "" || synced != 0 {
		t.Errorf("without sync: %d %q, %d syncs; want 200, nothing, no sync", code, body, synced)
	}
	code, body := get(o, "verdict=AUDIT&from-ip=10.0.0.1&sync=1")
	if code != http.StatusOK || synced != 1 || !strings.Contains(body, `"verdict":"AUDIT"`) {
		t.Errorf("sync=1: %d %q, %d syncs; want 200 and the flow the hub handed on", code, body, synced)
	}
	if code, _ := get(o, "sync=0"); code != http.StatusOK || synced != 1 {
		t.Errorf("sync=0: %d, %d syncs; want 200 without a sync", code, synced)
	}
	for _, q := range []string{"sync=maybe", "sync=1&sync=1"} {
		if code, _ := get(o, q); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}
	caughtUp = false
	if code, body := get(o, "sync=1"); code != http.StatusServiceUnavailable || !strings.Contains(body, "did not catch up") {
		t.Errorf("a hub behind: %d %q, want 503", code, body)
	}
	if code, _ := get(&Observer{flows: observe.Handler(ring, "n1")}, "sync=1"); code != http.StatusServiceUnavailable {
		t.Errorf("no hub: %d, want 503", code)
	}
}
