package observe

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRingCapacity is the number of records a ring keeps when asked for
// none in particular: 16383, a 2^n-1 value as Hubble's ring sizes are
// (Hubble's own default is 4095). See the package doc for the memory this
// bounds.
const DefaultRingCapacity = 16383

// followBatch bounds how many records a follower takes per lock, so a reader
// far behind does not hold the lock while it copies the whole ring.
const followBatch = 256

// Ring keeps the most recent flow records for readers. Adding never waits
// for a reader: a reader that falls more than the capacity behind is told how
// many records it missed (a HUBBLE_RING_BUFFER lost-events record) and goes
// on from the oldest one kept.
//
// Records are shared between readers: once added, a record must not be
// modified, by the producer or by a reader.
type Ring struct {
	mask uint64 // len(buf)-1; len(buf) is a power of two
	cap  uint64 // records readable: len(buf)-1, as Hubble's ring

	mu     sync.Mutex
	buf    []*GetFlowsResponse
	next   uint64        // sequence number of the next record; records are next-cap..next-1
	notify chan struct{} // closed (and replaced) on each Add, to wake followers

	followers atomic.Int64
}

// NewRing returns a ring keeping capacity records, rounded up to the next
// 2^n-1 (1, 3, 7, ..., 16383, ...) as Hubble rounds its ring's capacity; a
// capacity below 1 gives DefaultRingCapacity.
func NewRing(capacity int) *Ring {
	if capacity < 1 {
		capacity = DefaultRingCapacity
	}
	size := uint64(1)
	for size-1 < uint64(capacity) {
		size <<= 1
	}
	return &Ring{
		mask:   size - 1,
		cap:    size - 1,
		buf:    make([]*GetFlowsResponse, size),
		notify: make(chan struct{}),
	}
}

// Cap is the number of records the ring keeps.
func (r *Ring) Cap() int { return int(r.cap) }

// Len is the number of records the ring holds now.
func (r *Ring) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int(min(r.next, r.cap))
}

// Seen is the number of records ever added.
func (r *Ring) Seen() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

// Followers is the number of Follow calls running, for tests and metrics.
func (r *Ring) Followers() int { return int(r.followers.Load()) }

// Add stores a record, dropping the oldest when the ring is full. A record
// without a time gets the current time. Add only waits for other Add calls
// and for readers copying record pointers, never for a reader's processing.
func (r *Ring) Add(resp *GetFlowsResponse) {
	if resp == nil {
		return
	}
	if resp.Time == nil {
		resp.Time = TimestampOf(time.Now())
	}
	r.mu.Lock()
	r.buf[r.next&r.mask] = resp
	r.next++
	ch := r.notify
	r.notify = make(chan struct{})
	r.mu.Unlock()
	close(ch)
}

// AddLost stores a lost-events record: n events lost at source, on cpu when
// the loss is per CPU (nil otherwise).
func (r *Ring) AddLost(source LostEventSource, cpu *int32, n uint64) {
	if n == 0 {
		return
	}
	r.Add(&GetFlowsResponse{
		LostEvents: &LostEvent{Source: source, NumEventsLost: n, CPU: cpu},
		Time:       TimestampOf(time.Now()),
	})
}

// oldest is the sequence number of the oldest record kept. Callers hold mu.
func (r *Ring) oldest() uint64 {
	if r.next > r.cap {
		return r.next - r.cap
	}
	return 0
}

// snapshot copies the pointers of the records from sequence number from on.
func (r *Ring) snapshot(from uint64) ([]*GetFlowsResponse, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	from = max(from, r.oldest())
	out := make([]*GetFlowsResponse, 0, r.next-from)
	for s := from; s < r.next; s++ {
		out = append(out, r.buf[s&r.mask])
	}
	return out, from
}

// Last returns the n most recent records the filter selects, oldest first;
// n < 1 returns all it selects.
func (r *Ring) Last(f Filter, n int) []*GetFlowsResponse {
	recs, _ := r.snapshot(0)
	return lastMatching(recs, f, n)
}

func lastMatching(recs []*GetFlowsResponse, f Filter, n int) []*GetFlowsResponse {
	var out []*GetFlowsResponse
	for i := len(recs) - 1; i >= 0; i-- {
		if n > 0 && len(out) == n {
			break
		}
		if f.MatchResponse(recs[i]) {
			out = append(out, recs[i])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Follow calls fn with the records the filter selects: first the last
// f.Last stored ones (or all stored since f.Since when f.Since is set and
// f.Last is 0), then each new one as it is added, until ctx ends or fn
// returns an error. When it falls behind by more than the ring's capacity
// it calls fn with a HUBBLE_RING_BUFFER lost-events record counting the
// records it missed, then goes on. It returns ctx's error or fn's.
func (r *Ring) Follow(ctx context.Context, f Filter, fn func(*GetFlowsResponse) error) error {
	r.followers.Add(1)
	defer r.followers.Add(-1)

	recs, from := r.snapshot(0)
	next := from + uint64(len(recs))
	var replay []*GetFlowsResponse
	switch {
	case f.Last > 0:
		replay = lastMatching(recs, f, f.Last)
	case !f.Since.IsZero():
		replay = lastMatching(recs, f, 0)
	}
	for _, rec := range replay {
		if err := fn(rec); err != nil {
			return err
		}
	}
	recs = nil

	batch := make([]*GetFlowsResponse, 0, followBatch)
	for {
		var lost uint64
		batch = batch[:0]
		r.mu.Lock()
		if old := r.oldest(); next < old {
			lost = old - next
			next = old
		}
		for ; next < r.next && len(batch) < followBatch; next++ {
			batch = append(batch, r.buf[next&r.mask])
		}
		wait := r.notify
		r.mu.Unlock()

		if lost > 0 {
			le := &GetFlowsResponse{
				LostEvents: &LostEvent{Source: HubbleRingBuffer, NumEventsLost: lost},
				Time:       TimestampOf(time.Now()),
			}
			if err := fn(le); err != nil {
				return err
			}
		}
		for _, rec := range batch {
			if !f.MatchResponse(rec) {
				continue
			}
			if err := fn(rec); err != nil {
				return err
			}
		}
		if len(batch) == followBatch {
			// More may be waiting; check the context, then read on.
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("follow: %w", err)
			}
			continue
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("follow: %w", ctx.Err())
		case <-wait:
		}
	}
}
