package kubenode

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

// TestFlowsEndpoint: /flows filters by address pair (either way round) and time, bounds its
// answer, keeps the newest events when the ring wraps, and refuses a malformed since.
func TestFlowsEndpoint(t *testing.T) {
	o := &Observer{events: map[[2]string]uint64{}}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < flowLogSize+10; i++ {
		src, dst := "10.0.0.1", "10.0.0.2"
		if i%2 == 1 {
			src, dst = "10.0.0.2", "10.0.0.1"
		}
		if i%5 == 0 {
			dst = "10.0.0.9"
		}
		rec := FlowRecord{Time: t0.Add(time.Duration(i) * time.Millisecond), Src: src, Dst: dst, DstPort: uint16(i % 60000)}
		if len(o.ring) < flowLogSize {
			o.ring = append(o.ring, rec)
		} else {
			o.ring[o.next] = rec
		}
		o.next = (o.next + 1) % flowLogSize
	}
	got := o.Flows(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), t0.Add(time.Duration(flowLogSize)*time.Millisecond), 0)
	if len(got) == 0 {
		t.Fatal("no flows")
	}
	for i, r := range got {
		if r.Dst == "10.0.0.9" || r.Src == "10.0.0.9" {
			t.Fatalf("flow %d is of another pair: %+v", i, r)
		}
		if i > 0 && r.Time.Before(got[i-1].Time) {
			t.Fatalf("flows out of order at %d", i)
		}
	}
	if last := got[len(got)-1]; !last.Time.Equal(t0.Add(time.Duration(flowLogSize+9) * time.Millisecond)) {
		t.Errorf("the newest flow is %s", last.Time)
	}
	srv := httptest.NewServer(o.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/flows?since=yesterday")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a malformed since: %d", resp.StatusCode)
	}
	resp, err = http.Get(srv.URL + "/flows?limit=99999999&src=not-an-ip")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all []FlowRecord
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatal(err)
	}
	if len(all) != 1000 {
		t.Errorf("an out-of-bounds limit gave %d flows, want the default 1000", len(all))
	}
}
