package observe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func numbered(i int) *GetFlowsResponse {
	return &GetFlowsResponse{Flow: &Flow{UUID: fmt.Sprint(i), Verdict: Forwarded}}
}

func uuids(rs []*GetFlowsResponse) []string {
	var out []string
	for _, r := range rs {
		if r.Flow != nil {
			out = append(out, r.Flow.UUID)
		} else {
			out = append(out, fmt.Sprintf("lost:%d", r.LostEvents.NumEventsLost))
		}
	}
	return out
}

func TestRingCapacity(t *testing.T) {
	for in, want := range map[int]int{0: DefaultRingCapacity, -3: DefaultRingCapacity, 1: 1, 2: 3, 3: 3, 4: 7, 4095: 4095, 4096: 8191, 16383: 16383} {
		if got := NewRing(in).Cap(); got != want {
			t.Errorf("NewRing(%d).Cap() = %d, want %d", in, got, want)
		}
	}
}

func TestRingLast(t *testing.T) {
	r := NewRing(7)
	for i := range 10 {
		r.Add(numbered(i))
	}
	if r.Len() != 7 || r.Seen() != 10 {
		t.Errorf("Len %d Seen %d", r.Len(), r.Seen())
	}
	if got := fmt.Sprint(uuids(r.Last(Filter{}, 3))); got != "[7 8 9]" {
		t.Errorf("Last 3 = %s", got)
	}
	if got := fmt.Sprint(uuids(r.Last(Filter{}, 0))); got != "[3 4 5 6 7 8 9]" {
		t.Errorf("Last all = %s", got)
	}
	r.Add(&GetFlowsResponse{Flow: &Flow{UUID: "drop", Verdict: Dropped}})
	r.Add(numbered(11))
	if got := fmt.Sprint(uuids(r.Last(Filter{Verdicts: []string{"DROPPED"}}, 5))); got != "[drop]" {
		t.Errorf("Last dropped = %s", got)
	}
	r.AddLost(PerfEventRingBuffer, Int32(2), 4)
	last := r.Last(Filter{}, 1)
	if len(last) != 1 || last[0].LostEvents == nil || *last[0].LostEvents.CPU != 2 || last[0].Time == nil {
		t.Errorf("AddLost record: %+v", last)
	}
}

func TestRingFollowReplaysThenStreams(t *testing.T) {
	r := NewRing(15)
	for i := range 5 {
		r.Add(numbered(i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 100)
	done := make(chan error, 1)
	go func() {
		done <- r.Follow(ctx, Filter{Last: 2}, func(g *GetFlowsResponse) error {
			got <- g.Flow.UUID
			return nil
		})
	}()
	want := []string{"3", "4", "5", "6"}
	for i, w := range want {
		if i == 2 {
			// Only after the replay, so the new records are new to the follower.
			r.Add(numbered(5))
			r.Add(numbered(6))
		}
		select {
		case g := <-got:
			if g != w {
				t.Fatalf("record %d = %s, want %s", i, g, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("record %d: timeout", i)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Follow returned %v", err)
	}
	if n := r.Followers(); n != 0 {
		t.Errorf("%d followers left", n)
	}
}

func TestRingFollowErrorEnds(t *testing.T) {
	r := NewRing(3)
	r.Add(numbered(1))
	stop := errors.New("stop")
	err := r.Follow(context.Background(), Filter{Last: 1}, func(*GetFlowsResponse) error { return stop })
	if err != stop {
		t.Errorf("Follow returned %v", err)
	}
}

// A follower slower than the producer does not hold the producer up: it is
// told how many records it missed, and the counts add up.
func TestRingSlowFollowerGetsLostEvents(t *testing.T) {
	const total = 5000
	r := NewRing(63)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	started := make(chan struct{})
	release := make(chan struct{})
	var mu sync.Mutex
	var seen, lost uint64
	var lastUUID string
	done := make(chan error, 1)
	go func() {
		first := true
		// Last: 1 sees record 0 whether it came before the follower's
		// snapshot (replayed) or after (streamed).
		done <- r.Follow(ctx, Filter{Last: 1}, func(g *GetFlowsResponse) error {
			if first {
				first = false
				close(started)
				<-release // stall while the producer runs far ahead
			}
			mu.Lock()
			defer mu.Unlock()
			if g.LostEvents != nil {
				if g.LostEvents.Source != HubbleRingBuffer {
					t.Errorf("lost source %s", g.LostEvents.Source)
				}
				lost += g.LostEvents.NumEventsLost
			} else {
				seen++
				lastUUID = g.Flow.UUID
			}
			return nil
		})
	}()
	for r.Followers() == 0 {
		time.Sleep(time.Millisecond)
	}
	r.Add(numbered(0))
	<-started

	addsDone := make(chan struct{})
	go func() {
		for i := 1; i < total; i++ {
			r.Add(numbered(i))
		}
		close(addsDone)
	}()
	select {
	case <-addsDone:
	case <-time.After(10 * time.Second):
		t.Fatal("Add blocked behind a stalled follower")
	}
	close(release)

	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		s, l, last := seen, lost, lastUUID
		mu.Unlock()
		if last == fmt.Sprint(total-1) {
			if s+l != total {
				t.Errorf("seen %d + lost %d != %d", s, l, total)
			}
			if l == 0 {
				t.Error("no loss reported")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower stuck: seen %d lost %d last %s", s, l, last)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}

func TestRingConcurrent(t *testing.T) {
	r := NewRing(127)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.Follow(ctx, Filter{Verdicts: []string{"FORWARDED"}, Last: 10}, func(g *GetFlowsResponse) error {
				_ = g.Flow
				return nil
			})
		}()
	}
	var pw sync.WaitGroup
	for p := range 4 {
		pw.Add(1)
		go func() {
			defer pw.Done()
			for i := range 2000 {
				r.Add(numbered(p*10000 + i))
				if i%100 == 0 {
					r.AddLost(RateLimited, nil, 1)
					_ = r.Last(Filter{}, 5)
				}
			}
		}()
	}
	pw.Wait()
	cancel()
	wg.Wait()
	if r.Seen() != 4*2000+4*20 {
		t.Errorf("Seen %d", r.Seen())
	}
	if r.Followers() != 0 {
		t.Errorf("%d followers left", r.Followers())
	}
}
