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
	"sync"
	"time"
)

// SCTP probes work on hosts with no SCTP sockets (this kernel has no SCTP module; kind nodes
// share it): the source pod sends a crafted INIT chunk on a raw socket, and the destination pod's
// raw SCTP socket says whether it arrived, by the INIT's initiate tag. A raw socket receives the
// packet whatever its port; the datapath's policy is what decides whether it gets there.

// SCTPSent is the outcome of an SCTP probe in the source pod: the INIT left, with the Result's
// Tag. Whether it arrived, the destination's listener says (AskSCTPArrivals).
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

// sctpArrivals holds the initiate tags of the INITs a pod received, the last maxArrivals of
// them: whoever sends to the pod cannot grow it.
type sctpArrivals struct {
	mu      sync.Mutex
	seen    map[uint32]bool
	ring    []uint32
	next    int
	changed chan struct{} // closed and replaced at each arrival
}

const maxArrivals = 1 << 16

func newSCTPArrivals() *sctpArrivals {
	return &sctpArrivals{seen: map[uint32]bool{}, ring: make([]uint32, 0, maxArrivals), changed: make(chan struct{})}
}

func (a *sctpArrivals) arrived(tag uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen[tag] {
		return
	}
	if len(a.ring) < maxArrivals {
		a.ring = append(a.ring, tag)
	} else {
		delete(a.seen, a.ring[a.next])
		a.ring[a.next] = tag
		a.next = (a.next + 1) % maxArrivals
	}
	a.seen[tag] = true
	close(a.changed)
	a.changed = make(chan struct{})
}

// wait returns the tags that arrived, once all have or when ctx ends.
func (a *sctpArrivals) wait(ctx context.Context, tags []uint32) []uint32 {
	for {
		a.mu.Lock()
		var got []uint32
		for _, t := range tags {
			if a.seen[t] {
				got = append(got, t)
			}
		}
		changed := a.changed
		a.mu.Unlock()
		if len(got) == len(tags) {
			return got
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return got
		}
	}
}

// SCTPQuestion asks a probe server which of Tags arrived, waiting up to TimeoutMS for the rest.
type SCTPQuestion struct {
	Tags      []uint32 `json:"tags"`
	TimeoutMS int      `json:"timeoutMS"`
}

// SCTPAnswer is the tags of the question that arrived.
type SCTPAnswer struct {
	Arrived []uint32 `json:"arrived"`
}

// Bounds on a question: a caller of the socket cannot hold the server up for long or make it
// read much.
const (
	maxQuestionTags = 4096
	maxQuestionWait = time.Minute
)

func answerSCTP(ctx context.Context, c net.Conn, a *sctpArrivals) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReaderSize(io.LimitReader(c, 64<<10), 64<<10).ReadSlice('\n')
	if err != nil {
		fmt.Fprintf(c, "{\"error\":%q}\n", "read question: "+err.Error())
		return
	}
	var q SCTPQuestion
	if err := json.Unmarshal(line, &q); err != nil || len(q.Tags) > maxQuestionTags {
		fmt.Fprintf(c, "{\"error\":%q}\n", fmt.Sprintf("a question is one JSON line of at most %d tags", maxQuestionTags))
		return
	}
	wait := min(time.Duration(q.TimeoutMS)*time.Millisecond, maxQuestionWait)
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	out, _ := json.Marshal(SCTPAnswer{Arrived: a.wait(wctx, q.Tags)})
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write(append(out, '\n'))
}

// AskSCTPArrivals asks the probe server of this pod (at path) which of the tags arrived, waiting
// up to timeout for those that have not yet.
func AskSCTPArrivals(path string, tags []uint32, timeout time.Duration) ([]uint32, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("ask the pod's sctp listener (is an SCTP port served here?): %w", err)
	}
	defer c.Close()
	q, _ := json.Marshal(SCTPQuestion{Tags: tags, TimeoutMS: int(timeout.Milliseconds())})
	if _, err := c.Write(append(q, '\n')); err != nil {
		return nil, fmt.Errorf("ask the pod's sctp listener: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout + 10*time.Second))
	line, err := bufio.NewReaderSize(io.LimitReader(c, 1<<20), 1<<20).ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("read the sctp listener's answer: %w", err)
	}
	var ans struct {
		SCTPAnswer
		Error string `json:"error"`
	}
	if err := json.Unmarshal(line, &ans); err != nil {
		return nil, fmt.Errorf("read the sctp listener's answer: %w", err)
	}
	if ans.Error != "" {
		return nil, fmt.Errorf("sctp listener: %s", ans.Error)
	}
	return ans.Arrived, nil
}
