package tproxy

import (
	"net/netip"
	"sync"
)

// Budget counts what a proxy holds (bytes, queries, connections), by source and in all: a source
// is refused more once it, or the node, holds its most.
type Budget struct {
	mu               sync.Mutex
	perSrc           map[netip.Addr]int64
	total            int64
	maxSrc, maxTotal int64
}

// NewBudget is a budget of at most maxSrc for a source and maxTotal in all.
func NewBudget(maxSrc, maxTotal int64) *Budget {
	return &Budget{perSrc: map[netip.Addr]int64{}, maxSrc: maxSrc, maxTotal: maxTotal}
}

// Take counts n more for src; false (and nothing counted) when src or the node would
// then hold more than its most.
func (b *Budget) Take(src netip.Addr, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.perSrc[src]+n > b.maxSrc || b.total+n > b.maxTotal {
		return false
	}
	b.perSrc[src] += n
	b.total += n
	return true
}

// Give returns n that src took.
func (b *Budget) Give(src netip.Addr, n int64) {
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

// Held is what src holds now, and the node in all.
func (b *Budget) Held(src netip.Addr) (int64, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.perSrc[src], b.total
}
