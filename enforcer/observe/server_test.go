package observe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestHandlerFiltersAndEnds(t *testing.T) {
	r := NewRing(15)
	r.Add(&GetFlowsResponse{Flow: &Flow{UUID: "a", Verdict: Forwarded}})
	r.Add(&GetFlowsResponse{Flow: &Flow{UUID: "b", Verdict: Dropped}})
	r.Add(&GetFlowsResponse{Flow: &Flow{UUID: "c", Verdict: Dropped}, NodeName: "elsewhere"})
	srv := httptest.NewServer(Handler(r, "kind-worker"))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/flows?verdict=DROPPED")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != ContentTypeNDJSON {
		t.Errorf("content type %q", ct)
	}
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	if len(lines) != 2 ||
		!strings.HasPrefix(lines[0], `{"flow":{"uuid":"b","verdict":"DROPPED"},"node_name":"kind-worker","time":"`) ||
		!strings.Contains(lines[1], `"node_name":"elsewhere"`) {
		t.Errorf("body:\n%s", body)
	}

	var got []string
	err = Fetch(context.Background(), srv.Client(), srv.URL, Filter{Last: 1}, func(g *GetFlowsResponse) error {
		got = append(got, g.Flow.UUID)
		return nil
	})
	if err != nil || fmt.Sprint(got) != "[c]" {
		t.Errorf("Fetch last 1: %v %v", got, err)
	}
	got = nil
	err = Fetch(context.Background(), srv.Client(), srv.URL, Filter{Nodes: []string{"other-*"}}, func(g *GetFlowsResponse) error {
		got = append(got, g.Flow.UUID)
		return nil
	})
	if err != nil || len(got) != 0 {
		t.Errorf("Fetch other node: %v %v", got, err)
	}
}

func TestHandlerBadParameter(t *testing.T) {
	srv := httptest.NewServer(Handler(NewRing(1), "n"))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/flows?verdict=MAYBE")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || strings.Count(string(body), "\n") != 1 || !strings.Contains(string(body), `"verdict"`) {
		t.Errorf("%d %q", resp.StatusCode, body)
	}
	err = Fetch(context.Background(), nil, srv.URL, Filter{Protocols: []string{"gre"}}, func(*GetFlowsResponse) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), `"protocol"`) {
		t.Errorf("Fetch error %v", err)
	}
	resp, err = http.Post(srv.URL+"/flows", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}

func TestHandlerFollowStreamsAndClientLeaves(t *testing.T) {
	base := runtime.NumGoroutine()
	r := NewRing(63)
	r.Add(&GetFlowsResponse{Flow: &Flow{UUID: "old", Verdict: Forwarded}})
	srv := httptest.NewServer(Handler(r, "n"))

	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan *GetFlowsResponse, 10)
	done := make(chan error, 1)
	go func() {
		done <- Fetch(ctx, srv.Client(), srv.URL, Filter{Follow: true, Last: 1, Verdicts: []string{"FORWARDED"}},
			func(g *GetFlowsResponse) error {
				got <- g
				return nil
			})
	}()
	next := func() *GetFlowsResponse {
		t.Helper()
		select {
		case g := <-got:
			return g
		case <-time.After(5 * time.Second):
			t.Fatal("no record streamed")
			return nil
		}
	}
	if g := next(); g.Flow.UUID != "old" {
		t.Fatalf("replayed %+v", g.Flow)
	}
	r.Add(&GetFlowsResponse{Flow: &Flow{UUID: "skip", Verdict: Dropped}})
	r.Add(&GetFlowsResponse{Flow: &Flow{UUID: "new", Verdict: Forwarded}})
	if g := next(); g.Flow.UUID != "new" || g.NodeName != "n" {
		t.Fatalf("streamed %+v node %q", g.Flow, g.NodeName)
	}
	r.AddLost(PerfEventRingBuffer, Int32(1), 9)
	if g := next(); g.LostEvents == nil || g.LostEvents.NumEventsLost != 9 {
		t.Fatalf("lost events not streamed: %+v", g)
	}

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Fetch returned %v", err)
	}
	// The server's follower ends with the client.
	waitFor(t, func() bool { return r.Followers() == 0 }, "follower still running")
	srv.Close()
	waitFor(t, func() bool { return runtime.NumGoroutine() <= base }, "goroutines leaked")
}

func waitFor(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStream(t *testing.T) {
	in := `{"flow":{"uuid":"a"}}` + "\n\n" + realDropped + "\n"
	var got []string
	err := Stream(context.Background(), strings.NewReader(in), func(g *GetFlowsResponse) error {
		got = append(got, g.Flow.UUID)
		return nil
	})
	if err != nil || fmt.Sprint(got) != "[a x]" {
		t.Errorf("Stream: %v %v", got, err)
	}
	err = Stream(context.Background(), strings.NewReader("{\"flow\":{}}\nnot json\n"), func(*GetFlowsResponse) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad line: %v", err)
	}
	stop := errors.New("stop")
	if err := Stream(context.Background(), strings.NewReader(in), func(*GetFlowsResponse) error { return stop }); err != stop {
		t.Errorf("fn error: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Stream(ctx, strings.NewReader(in), func(*GetFlowsResponse) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}
