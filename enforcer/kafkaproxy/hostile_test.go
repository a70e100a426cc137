package kafkaproxy

import (
	"encoding/binary"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/netpact/netpact/api/ciliumv2"
)

// What a hostile client sends, from the proxy's review: each is refused or denied, and costs the
// proxy little.

// TestProduceClaimingMillionsOfTopics: a Produce whose topic array claims about as many entries
// as it has bytes is refused before kmsg allocates them.
func TestProduceClaimingMillionsOfTopics(t *testing.T) {
	w := newWorld(t, seedRules)
	r := w.raw(t)
	const size = 8 << 20
	b := binary.BigEndian.AppendUint32(nil, uint32(10+2+2+4+4+size))
	b = binary.BigEndian.AppendUint16(b, 0) // produce
	b = binary.BigEndian.AppendUint16(b, 7)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint16(b, 0)      // client ID
	b = binary.BigEndian.AppendUint16(b, 0xffff) // transactional ID: null
	b = binary.BigEndian.AppendUint16(b, 1)      // acks
	b = binary.BigEndian.AppendUint32(b, 1000)   // timeout
	b = binary.BigEndian.AppendUint32(b, size)   // topics claimed
	b = append(b, make([]byte, size)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r.write(b)
	if !r.closed() {
		t.Fatal("the connection is still open")
	}
	runtime.ReadMemStats(&after)
	if why := w.lastRefusal(); !strings.Contains(why, "naming 8388608 topics, more than 10000") {
		t.Errorf("refusal %q", why)
	}
	// The frame itself (8 MiB, and the test's copy) is all it may take, not kmsg's structs.
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 64<<20 {
		t.Errorf("the refusal allocated %d MiB", grown>>20)
	}
}

// TestHostileTopics: an allowed name paired with another topic's ID, an OffsetFetch group asking
// for every topic, and a key past Cilium's list are not let through by a rule's topic.
func TestHostileTopics(t *testing.T) {
	w := newWorld(t, []ciliumv2.PortRuleKafka{{Topic: "notifications"}})
	r := w.raw(t)
	m := metadata(12, "notifications")
	m.Topics[0].TopicID = [16]byte{1}
	r.send(m, 1, "")
	resp := kmsg.NewPtrMetadataResponse()
	resp.Version = 12
	if r.answer(resp); len(resp.Topics) != 1 || resp.Topics[0].ErrorCode != 29 {
		t.Errorf("metadata by name and ID: %+v, want error 29", resp.Topics)
	}
	of := kmsg.NewPtrOffsetFetchRequest()
	of.Version = 8
	g := kmsg.NewOffsetFetchRequestGroup()
	g.Group = "victim" // Topics nil: every topic of the group
	of.Groups = append(of.Groups, g)
	r.send(of, 2, "")
	oresp := kmsg.NewPtrOffsetFetchResponse()
	oresp.Version = 8
	if r.answer(oresp); len(oresp.Groups) != 1 || oresp.Groups[0].ErrorCode != 29 {
		t.Errorf("offsetfetch of a whole group: %+v, want error 29", oresp.Groups)
	}
	dtp := kmsg.NewPtrDescribeTopicPartitionsRequest()
	dtp.Version = 0
	tp := kmsg.NewDescribeTopicPartitionsRequestTopic()
	tp.Topic = "payments"
	dtp.Topics = append(dtp.Topics, tp)
	r.send(dtp, 3, "")
	if !r.closed() {
		t.Fatal("DescribeTopicPartitions under a rule with a topic was not refused")
	}
}

// TestSessionReopened: a full fetch naming an old session (epoch 0), which a client sends after
// an error, opens a new session; it is not refused.
func TestSessionReopened(t *testing.T) {
	w := newWorld(t, seedRules)
	w.seed(t, "notifications")
	r := w.raw(t)
	f := kmsg.NewPtrFetchRequest()
	f.Version, f.SessionID, f.SessionEpoch, f.MaxBytes, f.MaxWaitMillis = 12, 12345, 0, 1<<20, 10
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = "notifications"
	p := kmsg.NewFetchRequestTopicPartition()
	p.PartitionMaxBytes = 1 << 20
	ft.Partitions = append(ft.Partitions, p)
	f.Topics = append(f.Topics, ft)
	r.send(f, 1, "")
	resp := kmsg.NewPtrFetchResponse()
	resp.Version = 12
	r.answer(resp)
	w.mu.Lock()
	defer w.mu.Unlock()
	if last := w.seen[len(w.seen)-1]; !last.Verdict.Allowed {
		t.Errorf("a fetch reopening a session was judged %+v", last)
	}
}

// TestClientThatNeverReads: a client that sends denied requests and reads none of the answers is
// cut off once it has not read for the idle timeout, and Close does not wait on it.
func TestClientThatNeverReads(t *testing.T) {
	w := newWorldLimits(t, seedRules, Limits{IdleTimeout: time.Second})
	r := w.raw(t)
	for i := range 2000 {
		r.c.SetWriteDeadline(time.Now().Add(3 * time.Second))
		if _, err := r.c.Write(requestFrame(metadata(9, strings.Repeat("p", 200)), int32(i), "")); err != nil {
			break
		}
	}
	// It reads now: what the proxy wrote before giving up, then the end.
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, r.br); err != nil {
		t.Fatalf("the connection of a client that read nothing did not end: %v", err)
	}
	start := time.Now()
	w.p.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
}
