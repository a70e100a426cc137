package kafkaproxy

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/netpact/netpact/api/ciliumv2"
)

// rawConn is a client speaking the wire protocol itself, through the world's proxy.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (w *world) raw(t *testing.T) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", w.proxied)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

// send writes a request with a v1/v2 header.
func (r *rawConn) send(req kmsg.Request, corr int32, clientID string) {
	r.t.Helper()
	r.write(requestFrame(req, corr, clientID))
}

// requestFrame is a request with its size and a v1/v2 header.
func requestFrame(req kmsg.Request, corr int32, clientID string) []byte {
	b := make([]byte, 4, 256)
	b = binary.BigEndian.AppendUint16(b, uint16(req.Key()))
	b = binary.BigEndian.AppendUint16(b, uint16(req.GetVersion()))
	b = binary.BigEndian.AppendUint32(b, uint32(corr))
	b = binary.BigEndian.AppendUint16(b, uint16(len(clientID)))
	b = append(b, clientID...)
	if req.IsFlexible() {
		b = append(b, 0)
	}
	b = req.AppendTo(b)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

func (r *rawConn) write(b []byte) {
	r.t.Helper()
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

// answer reads one response frame into resp (whose version is the request's) and returns its
// correlation ID.
func (r *rawConn) answer(resp kmsg.Response) int32 {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var head [8]byte
	if _, err := io.ReadFull(r.br, head[:]); err != nil {
		r.t.Fatalf("read an answer: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(head[:4])-4)
	if _, err := io.ReadFull(r.br, body); err != nil {
		r.t.Fatal(err)
	}
	if resp.IsFlexible() && resp.Key() != 18 {
		body = body[1:] // the header's empty tags
	}
	if err := resp.ReadFrom(body); err != nil {
		r.t.Fatalf("parse the answer: %v", err)
	}
	return int32(binary.BigEndian.Uint32(head[4:]))
}

// closed says whether the proxy closed the connection (EOF or reset) within a few seconds.
func (r *rawConn) closed() bool {
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := r.br.ReadByte()
	return err != nil && !strings.Contains(err.Error(), "timeout")
}

func (w *world) lastRefusal() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.seen) - 1; i >= 0; i-- {
		if w.seen[i].Refused != "" {
			return w.seen[i].Refused
		}
	}
	return ""
}

func metadata(version int16, topics ...string) *kmsg.MetadataRequest {
	m := kmsg.NewPtrMetadataRequest()
	m.Version = version
	for _, t := range topics {
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(t)
		m.Topics = append(m.Topics, mt)
	}
	return m
}

// TestDeniedAnswersKeepOrder: a denied request's answer (error 29) comes after the broker's
// answer to the allowed request before it, and before the one after it, each with its own
// correlation ID: a client reading answers in order gets each its own.
func TestDeniedAnswersKeepOrder(t *testing.T) {
	w := newWorld(t, seedRules)
	r := w.raw(t)
	r.send(metadata(9, "orders"), 1, "c")
	r.send(metadata(9, "payments"), 2, "c")
	r.send(metadata(9, "orders"), 3, "c")
	for _, want := range []struct {
		corr int32
		code int16
	}{{1, 0}, {2, 29}, {3, 0}} {
		resp := kmsg.NewPtrMetadataResponse()
		resp.Version = 9
		if got := r.answer(resp); got != want.corr {
			t.Fatalf("answer for correlation ID %d, want %d", got, want.corr)
		}
		if len(resp.Topics) != 1 || resp.Topics[0].ErrorCode != want.code {
			t.Errorf("correlation ID %d: topics %+v, want error %d", want.corr, resp.Topics, want.code)
		}
	}
}

// TestDeniedKindWithoutTopicsCloses: a denied request of a kind the proxy does not answer
// (InitProducerID, in no role) closes the connection, after the answers due before it, and says
// why; Cilium's proxy left it unanswered, and the client waited for its timeout.
func TestDeniedKindWithoutTopicsCloses(t *testing.T) {
	w := newWorld(t, seedRules)
	r := w.raw(t)
	r.send(metadata(9, "orders"), 1, "c")
	ipid := kmsg.NewPtrInitProducerIDRequest()
	ipid.Version = 2
	r.send(ipid, 2, "c")
	resp := kmsg.NewPtrMetadataResponse()
	resp.Version = 9
	if got := r.answer(resp); got != 1 {
		t.Fatalf("answer for %d, want 1", got)
	}
	if !r.closed() {
		t.Fatal("the connection is still open after a denied InitProducerID")
	}
	if why := w.lastRefusal(); !strings.Contains(why, "denied initproducerid request") {
		t.Errorf("refusal %q", why)
	}
}

// TestProduceAcksZero: a denied Produce with acks 0 gets no answer, as Kafka gives none; the
// next request's answer is the next the client reads.
func TestProduceAcksZero(t *testing.T) {
	w := newWorld(t, seedRules)
	r := w.raw(t)
	p := kmsg.NewPtrProduceRequest()
	p.Version, p.Acks, p.TimeoutMillis = 7, 0, 1000
	pt := kmsg.NewProduceRequestTopic()
	pt.Topic = "payments"
	pp := kmsg.NewProduceRequestTopicPartition()
	pt.Partitions = append(pt.Partitions, pp)
	p.Topics = append(p.Topics, pt)
	r.send(p, 1, "c")
	r.send(metadata(9, "payments"), 2, "c")
	resp := kmsg.NewPtrMetadataResponse()
	resp.Version = 9
	if got := r.answer(resp); got != 2 || resp.Topics[0].ErrorCode != 29 {
		t.Fatalf("answer %d %+v, want the metadata's (2) with error 29", got, resp.Topics)
	}
}

// TestRefusals: what the proxy cannot judge, or will not hold, closes the connection and says
// why.
func TestRefusals(t *testing.T) {
	w := newWorld(t, []ciliumv2.PortRuleKafka{{Topic: "orders"}})
	header := func(key, version int16, size int) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(size))
		b = binary.BigEndian.AppendUint16(b, uint16(key))
		b = binary.BigEndian.AppendUint16(b, uint16(version))
		b = binary.BigEndian.AppendUint32(b, 7)
		return binary.BigEndian.AppendUint16(b, 0)
	}
	for _, tc := range []struct {
		name string
		send func(r *rawConn)
		want string
	}{
		{"unknown key", func(r *rawConn) { r.write(header(9999, 0, 10)) }, "API key 9999, which the proxy does not know"},
		{"version past kmsg", func(r *rawConn) { r.write(header(3, 99, 10)) }, "metadata request of version 99"},
		{"too short", func(r *rawConn) { r.write([]byte{0, 0, 0, 3, 1, 2, 3}) }, "too short for a request header"},
		{"over the bound", func(r *rawConn) { r.write(header(3, 9, 2<<20)) }, "over the proxy's bound of 1048576"},
		{"garbage body", func(r *rawConn) { r.write(append(header(3, 4, 10+6), 0x7f, 0xff, 0xff, 0xff, 1, 2)) }, "metadata v4 request that does not parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := w.raw(t)
			tc.send(r)
			if !r.closed() {
				t.Fatal("the connection is still open")
			}
			if why := w.lastRefusal(); !strings.Contains(why, tc.want) {
				t.Errorf("refusal %q, want %q", why, tc.want)
			}
		})
	}
}

// TestInFlightBound: a client that sends requests and never reads the answers makes the proxy
// hold at most MaxInFlight of them and stop reading; the broker's answers wait in the kernel's
// buffers, not the proxy's memory.
func TestInFlightBound(t *testing.T) {
	w := newWorldLimits(t, seedRules, Limits{MaxInFlight: 4})
	r := w.raw(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20000 {
			b := requestFrame(metadata(9, "orders"), int32(i), "")
			r.c.SetWriteDeadline(time.Now().Add(3 * time.Second))
			if _, err := r.c.Write(b); err != nil {
				return // the proxy stopped reading: the kernel's buffers are full
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the writer did not stop")
	}
	w.mu.Lock()
	judged := len(w.seen)
	w.mu.Unlock()
	if judged >= 20000 {
		t.Errorf("the proxy judged all %d requests of a client that reads nothing", judged)
	}
	// The client's answers are still due, in order.
	resp := kmsg.NewPtrMetadataResponse()
	resp.Version = 9
	r.c.SetWriteDeadline(time.Time{})
	if got := r.answer(resp); got != 0 {
		t.Errorf("first answer for %d, want 0", got)
	}
}

// TestFetchSessions: a fetch session opened on a connection is judged, fetch after fetch, by
// every topic it reads, though an incremental fetch names none; the same session ID sent on
// another connection (another client's session) is refused with error 29, at the top and on what
// the fetch names.
func TestFetchSessions(t *testing.T) {
	w := newWorld(t, seedRules)
	w.seed(t, "notifications")
	fetch := func(id, epoch int32, topic string) *kmsg.FetchRequest {
		f := kmsg.NewPtrFetchRequest()
		f.Version, f.SessionID, f.SessionEpoch, f.MaxBytes, f.MaxWaitMillis = 12, id, epoch, 1<<20, 10
		if topic != "" {
			ft := kmsg.NewFetchRequestTopic()
			ft.Topic = topic
			p := kmsg.NewFetchRequestTopicPartition()
			p.PartitionMaxBytes = 1 << 20
			ft.Partitions = append(ft.Partitions, p)
			f.Topics = append(f.Topics, ft)
		}
		return f
	}
	a := w.raw(t)
	a.send(fetch(0, 0, "notifications"), 1, "")
	resp := kmsg.NewPtrFetchResponse()
	resp.Version = 12
	if a.answer(resp); resp.ErrorCode != 0 || resp.SessionID == 0 || len(resp.Topics) != 1 || resp.Topics[0].Partitions[0].ErrorCode != 0 {
		t.Fatalf("opening fetch: %+v", resp)
	}
	id := resp.SessionID
	a.send(fetch(id, 1, ""), 2, "")
	resp = kmsg.NewPtrFetchResponse()
	resp.Version = 12
	if a.answer(resp); resp.ErrorCode != 0 || resp.SessionID != id {
		t.Fatalf("incremental fetch on the session's connection: %+v", resp)
	}
	w.mu.Lock()
	last := w.seen[len(w.seen)-1]
	w.mu.Unlock()
	if !last.Verdict.Allowed || len(last.Topics) != 1 || last.Topics[0] != "notifications" {
		t.Errorf("the incremental fetch was judged %+v, want allowed on the session's notifications", last)
	}

	b := w.raw(t)
	b.send(fetch(id, 2, "notifications"), 1, "")
	resp = kmsg.NewPtrFetchResponse()
	resp.Version = 12
	if got := b.answer(resp); got != 1 || resp.ErrorCode != 29 || len(resp.Topics) != 1 || resp.Topics[0].Partitions[0].ErrorCode != 29 {
		t.Fatalf("another connection's fetch on session %d: answer %d %+v", id, got, resp)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if last := w.seen[len(w.seen)-1]; last.Verdict.Allowed || !strings.Contains(last.Verdict.Reason, "which was not opened on this connection") {
		t.Errorf("reported %+v", last)
	}
}
