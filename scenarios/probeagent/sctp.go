package probeagent

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// SCTP probes work on hosts with no SCTP sockets (this kernel has no SCTP module; kind nodes
// share it): the source pod sends a crafted INIT chunk on a raw socket, and the destination pod's
// raw SCTP socket says whether it arrived, by the INIT's initiate tag. A raw socket receives the
// packet whatever its port; the datapath's policy is what decides whether it gets there.

// SCTPSent is the outcome of an SCTP probe in the source pod: the INIT left, from the Result's
// SPort with its Tag. Whether it arrived, the destination's probe server says (AskSCTPArrivals).
const SCTPSent = "sctp-sent"

// SCTPSocket is where a probe server with SCTP ports answers which INITs arrived.
const SCTPSocket = "/tmp/netpact-sctp.sock"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SCTPInitPacket is an SCTP packet of one INIT chunk from sport to dport with initiate tag tag.
func SCTPInitPacket(sport, dport uint16, tag uint32) []byte {
	b := make([]byte, 12+20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	// verification tag 0 in an INIT; the chunk carries the initiate tag
	b[12] = 1 // INIT
	binary.BigEndian.PutUint16(b[14:], 20)
	binary.BigEndian.PutUint32(b[16:], tag)
	binary.BigEndian.PutUint32(b[20:], 65536) // a_rwnd
	binary.BigEndian.PutUint16(b[24:], 1)     // outbound streams
	binary.BigEndian.PutUint16(b[26:], 1)     // inbound streams
	binary.BigEndian.PutUint32(b[28:], 1)     // initial TSN
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b, castagnoli))
	return b
}

// SCTPInit names an INIT: its source address and port, its destination port and its initiate
// tag. A probe's INIT is known by all four, so that another pod's INITs, with whatever tags, never
// count for it: forging its source address is what the datapath's anti-spoofing drops.
type SCTPInit struct {
	Src   netip.Addr `json:"src"`
	SPort uint16     `json:"sport"`
	DPort uint16     `json:"dport"`
	Tag   uint32     `json:"tag"`
}

// sctpArrivals holds the INITs a pod received, the last maxArrivals of them (whoever sends to the
// pod cannot grow it), and who waits for which.
type sctpArrivals struct {
	mu      sync.Mutex
	seen    map[SCTPInit]bool
	ring    []SCTPInit
	next    int
	waiting map[SCTPInit][]chan struct{}
	err     error // why the raw sockets' reader stopped, when it did
}

const maxArrivals = 1 << 16

func newSCTPArrivals() *sctpArrivals {
	return &sctpArrivals{seen: map[SCTPInit]bool{}, ring: make([]SCTPInit, 0, maxArrivals),
		waiting: map[SCTPInit][]chan struct{}{}}
}

func (a *sctpArrivals) arrived(in SCTPInit) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen[in] {
		return
	}
	if len(a.ring) < maxArrivals {
		a.ring = append(a.ring, in)
	} else {
		delete(a.seen, a.ring[a.next])
		a.ring[a.next] = in
		a.next = (a.next + 1) % maxArrivals
	}
	a.seen[in] = true
	for _, ch := range a.waiting[in] {
		close(ch)
	}
	delete(a.waiting, in)
}

// failed records that the reader stopped: from then on questions get the error, not a timeout.
func (a *sctpArrivals) failed(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.err = err
}

// wait says which of the INITs arrived, once all have or when ctx ends; an error when the reader
// stopped.
func (a *sctpArrivals) wait(ctx context.Context, inits []SCTPInit) ([]bool, error) {
	out := make([]bool, len(inits))
	type pending struct {
		i  int
		ch chan struct{}
	}
	var ps []pending
	a.mu.Lock()
	if a.err != nil {
		a.mu.Unlock()
		return nil, a.err
	}
	for i, in := range inits {
		if a.seen[in] {
			out[i] = true
			continue
		}
		ch := make(chan struct{})
		a.waiting[in] = append(a.waiting[in], ch)
		ps = append(ps, pending{i, ch})
	}
	a.mu.Unlock()
	for _, p := range ps {
		select {
		case <-p.ch:
			out[p.i] = true
		case <-ctx.Done():
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range ps {
		select {
		case <-p.ch:
			out[p.i] = true
		default:
			in := inits[p.i]
			rest := a.waiting[in][:0]
			for _, ch := range a.waiting[in] {
				if ch != p.ch {
					rest = append(rest, ch)
				}
			}
			if len(rest) == 0 {
				delete(a.waiting, in)
			} else {
				a.waiting[in] = rest
			}
		}
	}
	if a.err != nil {
		return nil, a.err
	}
	return out, nil
}

// SCTPQuestion asks a probe server which of Inits arrived, waiting up to TimeoutMS for the rest.
type SCTPQuestion struct {
	Inits     []SCTPInit `json:"inits"`
	TimeoutMS int        `json:"timeoutMS"`
}

// SCTPAnswer says, for each INIT of the question in its order, whether it arrived.
type SCTPAnswer struct {
	Arrived []bool `json:"arrived"`
	Error   string `json:"error,omitempty"`
}

// Bounds on a question, and on those answered at once: a caller of the socket cannot hold the
// server up for long, make it read much or start goroutines without end.
const (
	maxQuestionInits = 4096
	maxQuestionWait  = time.Minute
	maxQuestions     = 64
)

func answerSCTP(ctx context.Context, c net.Conn, a *sctpArrivals) {
	defer c.Close()
	reply := func(ans SCTPAnswer) {
		out, _ := json.Marshal(ans)
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(append(out, '\n'))
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReaderSize(io.LimitReader(c, 1<<20), 1<<20).ReadSlice('\n')
	if err != nil {
		reply(SCTPAnswer{Error: "read the question: " + err.Error()})
		return
	}
	var q SCTPQuestion
	if err := json.Unmarshal(line, &q); err != nil || len(q.Inits) > maxQuestionInits {
		reply(SCTPAnswer{Error: fmt.Sprintf("a question is one JSON line of at most %d INITs", maxQuestionInits)})
		return
	}
	wctx, cancel := context.WithTimeout(ctx, min(time.Duration(q.TimeoutMS)*time.Millisecond, maxQuestionWait))
	defer cancel()
	got, err := a.wait(wctx, q.Inits)
	if err != nil {
		reply(SCTPAnswer{Error: "the raw SCTP sockets' reader stopped: " + err.Error()})
		return
	}
	reply(SCTPAnswer{Arrived: got})
}

// AskSCTPArrivals asks the probe server of this pod (at path) which of the INITs arrived, waiting
// up to timeout for those that have not yet.
func AskSCTPArrivals(path string, inits []SCTPInit, timeout time.Duration) ([]bool, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("ask the pod's SCTP probe server (does it serve an SCTP port?): %w", err)
	}
	defer c.Close()
	q, _ := json.Marshal(SCTPQuestion{Inits: inits, TimeoutMS: int(timeout.Milliseconds())})
	if _, err := c.Write(append(q, '\n')); err != nil {
		return nil, fmt.Errorf("ask the pod's SCTP probe server: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout + 10*time.Second))
	line, err := bufio.NewReaderSize(io.LimitReader(c, 1<<20), 1<<20).ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("read the SCTP probe server's answer: %w", err)
	}
	var ans SCTPAnswer
	if err := json.Unmarshal(line, &ans); err != nil {
		return nil, fmt.Errorf("read the SCTP probe server's answer: %w", err)
	}
	if ans.Error != "" {
		return nil, fmt.Errorf("SCTP probe server: %s", ans.Error)
	}
	if len(ans.Arrived) != len(inits) {
		return nil, fmt.Errorf("SCTP probe server: %d answers to %d INITs", len(ans.Arrived), len(inits))
	}
	return ans.Arrived, nil
}
