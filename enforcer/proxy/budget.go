package proxy

import (
	"errors"
	"net/netip"
	"sync"
)

// budget counts bytes the proxy holds, by source and in all: a source is refused more once it,
// or the node, holds its most.
type budget struct {
	mu               sync.Mutex
	perSrc           map[netip.Addr]int64
	total            int64
	maxSrc, maxTotal int64
}

func newBudget(maxSrc, maxTotal int64) *budget {
	return &budget{perSrc: map[netip.Addr]int64{}, maxSrc: maxSrc, maxTotal: maxTotal}
}

// take counts n more bytes for src; false (and nothing counted) when src or the node would
// then hold more than its most.
func (b *budget) take(src netip.Addr, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.perSrc[src]+n > b.maxSrc || b.total+n > b.maxTotal {
		return false
	}
	b.perSrc[src] += n
	b.total += n
	return true
}

// give returns n bytes src took.
func (b *budget) give(src netip.Addr, n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total -= n
	if b.perSrc[src] -= n; b.perSrc[src] <= 0 {
		delete(b.perSrc, src)
	}
}

// held is what src holds now, and the node in all.
func (b *budget) held(src netip.Addr) (int64, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.perSrc[src], b.total
}

// errOverBudget ends a request header whose bytes the source's or the node's budget cannot hold.
var errOverBudget = errors.New("over the proxy's buffered-bytes budget")
