package enforcer

import (
	"errors"
	"sync"
	"time"

	"github.com/netpact/netpact/enforcer/datapath"
)

// FlowHub reads the node's flow events once and hands each, in order, to every consumer: the
// flow ring `netpact observe` reads, the metrics, and a local node's probe checks.
type FlowHub struct {
	fr *datapath.FlowReader

	// readMu is held from the read of an event until every consumer has it, so that Sync can
	// tell when nothing is in flight. pendMu orders Sync's look at the ring buffer against its
	// Close (which unmaps it); closed, under pendMu, says the reader is gone.
	readMu sync.Mutex
	pendMu sync.Mutex
	closed bool

	mu        sync.Mutex
	consumers []func(datapath.Flow)

	done chan struct{}
}

// newFlowHub starts reading fr.
func newFlowHub(fr *datapath.FlowReader) *FlowHub {
	h := &FlowHub{fr: fr, done: make(chan struct{})}
	go h.run()
	return h
}

// Subscribe adds a consumer: it gets every event read from now on, on the hub's goroutine (it
// must not block).
func (h *FlowHub) Subscribe(fn func(datapath.Flow)) {
	h.mu.Lock()
	h.consumers = append(h.consumers, fn)
	h.mu.Unlock()
}

// hubPoll bounds how long the hub holds readMu while it waits for an event.
const hubPoll = 20 * time.Millisecond

func (h *FlowHub) run() {
	defer close(h.done)
	for {
		h.readMu.Lock()
		f, err := h.fr.Read(time.Now().Add(hubPoll))
		if err == nil {
			h.mu.Lock()
			consumers := h.consumers
			h.mu.Unlock()
			for _, c := range consumers {
				c(f)
			}
		}
		h.readMu.Unlock()
		if errors.Is(err, datapath.ErrClosed) {
			return
		}
	}
}

// Sync waits until every event the datapath produced before the call was handed to the
// consumers; false when that did not happen within timeout (the reader is far behind, or
// closed).
func (h *FlowHub) Sync(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	if h == nil {
		return false
	}
	for {
		h.readMu.Lock()
		h.pendMu.Lock()
		closed := h.closed
		pending := 0
		if !closed {
			pending = h.fr.Pending()
		}
		h.pendMu.Unlock()
		h.readMu.Unlock()
		if closed {
			return false
		}
		if pending == 0 {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		select {
		case <-h.done:
			return false
		case <-time.After(time.Millisecond):
		}
	}
}

// lost counts the events the reader lost after the datapath wrote them.
func (h *FlowHub) lost() uint64 { return h.fr.Lost() }

// close stops the hub and waits for it.
func (h *FlowHub) close() error {
	// Close interrupts the read the hub waits in (holding readMu, which Close must not wait
	// for); Sync looks at the ring only under pendMu, and sees closed from then on.
	h.pendMu.Lock()
	h.closed = true
	err := h.fr.Close()
	h.pendMu.Unlock()
	<-h.done
	return err
}
