package kafkaproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/netpact/netpact/policy"
)

// header is a request header (v1, or v2 for flexible versions).
type header struct {
	key, version int16
	corr         int32
	clientID     string
}

// parseRequest reads a request (the bytes after its size) with kmsg: the header, then the body
// at the header's version. A key kmsg does not know, a version past what it reads, or bytes that
// do not parse are an error: the proxy judges only what it read.
func parseRequest(b []byte) (h header, req kmsg.Request, err error) {
	defer func() {
		if r := recover(); r != nil { // kmsg bounds its reads; this is the last line of defence
			err = fmt.Errorf("%s v%d request that does not parse", policy.KafkaKeyName(h.key), h.version)
		}
	}()
	if len(b) < 10 {
		return h, nil, errors.New("a request too short for its header")
	}
	h.key = int16(binary.BigEndian.Uint16(b))
	h.version = int16(binary.BigEndian.Uint16(b[2:]))
	h.corr = int32(binary.BigEndian.Uint32(b[4:]))
	n := int16(binary.BigEndian.Uint16(b[8:]))
	b = b[10:]
	if n > 0 {
		if int(n) > len(b) {
			return h, nil, errors.New("a request header whose client ID runs past the request")
		}
		h.clientID, b = string(b[:n]), b[n:]
	}
	req = kmsg.RequestForKey(h.key)
	if req == nil {
		return h, nil, fmt.Errorf("a request of API key %d, which the proxy does not know", h.key)
	}
	if h.version < 0 || h.version > req.MaxVersion() {
		return h, nil, fmt.Errorf("a %s request of version %d: the proxy reads versions 0 to %d", policy.KafkaKeyName(h.key), h.version, req.MaxVersion())
	}
	req.SetVersion(h.version)
	if req.IsFlexible() {
		if b, err = skipTags(b); err != nil {
			return h, nil, fmt.Errorf("a %s v%d request header: %w", policy.KafkaKeyName(h.key), h.version, err)
		}
	}
	if h.key == policy.KafkaProduce {
		if err := checkProduce(b, h.version); err != nil {
			return h, nil, err
		}
	}
	if err := req.ReadFrom(b); err != nil {
		return h, nil, fmt.Errorf("a %s v%d request that does not parse: %w", policy.KafkaKeyName(h.key), h.version, err)
	}
	return h, req, nil
}

// skipTags skips a flexible header's tagged fields.
func skipTags(b []byte) ([]byte, error) {
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, errors.New("bad tagged fields")
	}
	b = b[n:]
	for range count {
		if _, n = binary.Uvarint(b); n <= 0 {
			return nil, errors.New("bad tagged field")
		}
		b = b[n:]
		size, n := binary.Uvarint(b)
		if n <= 0 || size > uint64(len(b)-n) {
			return nil, errors.New("bad tagged field")
		}
		b = b[n+int(size):]
	}
	return b, nil
}

// MaxTopics bounds the distinct topics a request may name (and a fetch session read): more is
// refused, as no client sends them and each costs the proxy memory and time.
const MaxTopics = 10000

// topics are the distinct topics of the request kinds whose topics Cilium reads (produce, fetch,
// offsets, metadata, offsetcommit, offsetfetch), as policy.KafkaRequest takes them, sorted; a
// topic named only by ID, and "every topic" (a metadata or an offsetfetch group with a null
// list), is "", which no rule's topic matches. ok is false past MaxTopics.
func topics(req kmsg.Request) (out []string, ok bool) {
	seen := map[string]bool{}
	add := func(name string, id [16]byte) {
		if id != ([16]byte{}) {
			name = "" // by ID: a broker reads the ID when one is given
		}
		seen[name] = true
	}
	none := [16]byte{}
	switch r := req.(type) {
	case *kmsg.ProduceRequest:
		for _, t := range r.Topics {
			add(t.Topic, t.TopicID)
		}
	case *kmsg.FetchRequest:
		for _, t := range r.Topics {
			add(t.Topic, t.TopicID)
		}
	case *kmsg.ListOffsetsRequest:
		for _, t := range r.Topics {
			add(t.Topic, none)
		}
	case *kmsg.MetadataRequest:
		for _, t := range r.Topics {
			name := ""
			if t.Topic != nil {
				name = *t.Topic
			}
			add(name, t.TopicID)
		}
	case *kmsg.OffsetCommitRequest:
		for _, t := range r.Topics {
			add(t.Topic, t.TopicID)
		}
	case *kmsg.OffsetFetchRequest:
		for _, t := range r.Topics {
			add(t.Topic, none)
		}
		for _, g := range r.Groups {
			if g.Topics == nil {
				add("", none) // every topic of the group
			}
			for _, t := range g.Topics {
				add(t.Topic, t.TopicID)
			}
		}
	}
	if len(seen) > MaxTopics {
		return nil, false
	}
	for t := range seen {
		out = append(out, t)
	}
	slices.Sort(out)
	return out, true
}

// expectsAnswer says whether the broker answers the request: not a Produce with acks 0.
func expectsAnswer(req kmsg.Request) bool {
	p, ok := req.(*kmsg.ProduceRequest)
	return !ok || p.Acks != 0
}

// deniedAnswer is the frame the proxy answers a denied request with, as Cilium's proxy did: the
// request's answer with error 29 TOPIC_AUTHORIZATION_FAILED on every topic and partition, for the
// kinds that carry topics (and FindCoordinator, as Cilium). nil and true: no answer is due (a
// Produce with acks 0). false: the kind gets no answer from the proxy.
func deniedAnswer(h header, req kmsg.Request) ([]byte, bool) {
	const code = ErrTopicAuthorizationFailed
	var resp kmsg.Response
	switch r := req.(type) {
	case *kmsg.ProduceRequest:
		if r.Acks == 0 {
			return nil, true
		}
		out := r.ResponseKind().(*kmsg.ProduceResponse)
		for _, t := range r.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.BaseOffset, rp.LogStartOffset = p.Partition, code, -1, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			out.Topics = append(out.Topics, rt)
		}
		resp = out
	case *kmsg.FetchRequest:
		out := r.ResponseKind().(*kmsg.FetchResponse)
		if r.SessionID != 0 || r.SessionEpoch > 0 {
			// A session's fetch reads partitions it does not name: the error is the session's too.
			out.ErrorCode = code
		}
		for _, t := range r.Topics {
			rt := kmsg.NewFetchResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewFetchResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.HighWatermark, rp.LastStableOffset, rp.LogStartOffset = p.Partition, code, -1, -1, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			out.Topics = append(out.Topics, rt)
		}
		resp = out
	case *kmsg.ListOffsetsRequest:
		out := r.ResponseKind().(*kmsg.ListOffsetsResponse)
		for _, t := range r.Topics {
			rt := kmsg.NewListOffsetsResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewListOffsetsResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.Timestamp, rp.Offset = p.Partition, code, -1, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			out.Topics = append(out.Topics, rt)
		}
		resp = out
	case *kmsg.MetadataRequest:
		out := r.ResponseKind().(*kmsg.MetadataResponse)
		for _, t := range r.Topics {
			rt := kmsg.NewMetadataResponseTopic()
			rt.Topic, rt.TopicID, rt.ErrorCode = t.Topic, t.TopicID, code
			out.Topics = append(out.Topics, rt)
		}
		if len(r.Topics) == 0 && r.Version >= 13 {
			out.ErrorCode = code
		}
		resp = out
	case *kmsg.FindCoordinatorRequest:
		out := r.ResponseKind().(*kmsg.FindCoordinatorResponse)
		out.ErrorCode, out.NodeID = code, -1
		for _, k := range r.CoordinatorKeys {
			c := kmsg.NewFindCoordinatorResponseCoordinator()
			c.Key, c.ErrorCode, c.NodeID = k, code, -1
			out.Coordinators = append(out.Coordinators, c)
		}
		resp = out
	case *kmsg.OffsetCommitRequest:
		out := r.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, t := range r.Topics {
			rt := kmsg.NewOffsetCommitResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewOffsetCommitResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, code
				rt.Partitions = append(rt.Partitions, rp)
			}
			out.Topics = append(out.Topics, rt)
		}
		resp = out
	case *kmsg.OffsetFetchRequest:
		out := r.ResponseKind().(*kmsg.OffsetFetchResponse)
		out.ErrorCode = code
		for _, t := range r.Topics {
			rt := kmsg.NewOffsetFetchResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewOffsetFetchResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.Offset = p, code, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			out.Topics = append(out.Topics, rt)
		}
		for _, g := range r.Groups {
			rg := kmsg.NewOffsetFetchResponseGroup()
			rg.Group, rg.ErrorCode = g.Group, code
			for _, t := range g.Topics {
				rt := kmsg.NewOffsetFetchResponseGroupTopic()
				rt.Topic, rt.TopicID = t.Topic, t.TopicID
				for _, p := range t.Partitions {
					rp := kmsg.NewOffsetFetchResponseGroupTopicPartition()
					rp.Partition, rp.ErrorCode, rp.Offset = p, code, -1
					rt.Partitions = append(rt.Partitions, rp)
				}
				rg.Topics = append(rg.Topics, rt)
			}
			out.Groups = append(out.Groups, rg)
		}
		resp = out
	default:
		return nil, false
	}
	return frame(h.corr, resp), true
}

// frame is a response with its size and header: the correlation ID, and for a flexible version
// the header's empty tagged fields (never for ApiVersions, whose response header is always v0).
func frame(corr int32, resp kmsg.Response) []byte {
	b := make([]byte, 8, 64)
	binary.BigEndian.PutUint32(b[4:], uint32(corr))
	if resp.IsFlexible() && resp.Key() != policy.KafkaAPIVersions {
		b = append(b, 0)
	}
	b = resp.AppendTo(b)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// advertise is the broker's ApiVersions keys as the proxy gives them to the client: only keys
// the proxy reads (kmsg knows them), at versions it reads and judges by topic name (maxVersion),
// that the flow's rules allow at some version from the client; each key's range is narrowed to
// the versions the rules allow. A key left with no version is left out, and a client does not
// send it (franz-go then produces without InitProducerID, which a produce role does not allow).
func advertise(keys []kmsg.ApiVersionsResponseApiKey, d policy.Decision, clientID string) []kmsg.ApiVersionsResponseApiKey {
	out := keys[:0]
	seen := map[int16]bool{}
	for _, k := range keys {
		req := kmsg.RequestForKey(k.ApiKey)
		if req == nil || seen[k.ApiKey] {
			continue // a key the proxy does not read, or a broker that lists one twice
		}
		seen[k.ApiKey] = true
		maxV := min(k.MaxVersion, req.MaxVersion())
		if c, ok := policy.KafkaMaxVersion(k.ApiKey); ok {
			maxV = min(maxV, c)
		}
		lo, hi := int16(-1), int16(-1)
		for v := k.MinVersion; v <= maxV && v >= 0; v++ {
			if d.AllowsKafkaKey(k.ApiKey, v, clientID) {
				if lo < 0 {
					lo = v
				}
				hi = v
			}
		}
		if lo < 0 {
			continue
		}
		k.MinVersion, k.MaxVersion = lo, hi
		out = append(out, k)
	}
	return out
}

// maxProducePartitions bounds the partitions a Produce request may name, all topics together.
const maxProducePartitions = 100000

// checkProduce walks a Produce request's body (versions 0 to 13) without allocating, and refuses
// one whose topics or partitions are more than the proxy takes: kmsg allocates each array by the
// count the request claims, so a Produce of 16 MiB claiming millions of empty topics would make
// the proxy allocate gigabytes before it found the claim false. Whatever else is wrong is left
// to kmsg.
func checkProduce(b []byte, version int16) error {
	w := wire{b: b, flex: version >= 9}
	if version >= 3 {
		w.nullableString()
	}
	w.skip(2 + 4) // acks, timeout
	topics := w.arrayLen()
	if topics > MaxTopics {
		return fmt.Errorf("a produce request naming %d topics, more than %d", topics, MaxTopics)
	}
	partitions := 0
	for range topics {
		if w.err != nil {
			break
		}
		if version >= 13 {
			w.skip(16) // topic ID
		} else {
			w.nullableString()
		}
		n := w.arrayLen()
		if partitions += n; partitions > maxProducePartitions {
			return fmt.Errorf("a produce request naming more than %d partitions", maxProducePartitions)
		}
		for range n {
			if w.err != nil {
				break
			}
			w.skip(4) // partition
			w.nullableBytes()
			w.tags()
		}
		w.tags()
	}
	return nil
}

// wire reads the Kafka encoding just enough to skip through it; err is set at the first read
// past the end, after which every read is empty.
type wire struct {
	b    []byte
	flex bool
	err  error
}

func (w *wire) skip(n int) {
	if w.err != nil {
		return
	}
	if n < 0 || n > len(w.b) {
		w.err, w.b = errors.New("short"), nil
		return
	}
	w.b = w.b[n:]
}

func (w *wire) uvarint() uint64 {
	if w.err != nil {
		return 0
	}
	v, n := binary.Uvarint(w.b)
	if n <= 0 {
		w.err, w.b = errors.New("bad varint"), nil
		return 0
	}
	w.b = w.b[n:]
	return v
}

func (w *wire) int16() int16 {
	if w.err != nil || len(w.b) < 2 {
		w.skip(2)
		return 0
	}
	v := int16(binary.BigEndian.Uint16(w.b))
	w.b = w.b[2:]
	return v
}

func (w *wire) int32() int32 {
	if w.err != nil || len(w.b) < 4 {
		w.skip(4)
		return 0
	}
	v := int32(binary.BigEndian.Uint32(w.b))
	w.b = w.b[4:]
	return v
}

// arrayLen is an array's claimed count (0 for null), which the bytes left must be able to hold at
// a byte an element at least.
func (w *wire) arrayLen() int {
	var n int
	if w.flex {
		n = int(min(w.uvarint(), 1<<31)) - 1
	} else {
		n = int(w.int32())
	}
	if n < 0 {
		return 0
	}
	if n > len(w.b) {
		w.err, w.b = errors.New("short"), nil
		return 0
	}
	return n
}

func (w *wire) nullableString() {
	if w.flex {
		w.skip(int(min(w.uvarint(), 1<<31)) - 1)
		return
	}
	if n := w.int16(); n > 0 {
		w.skip(int(n))
	}
}

func (w *wire) nullableBytes() {
	if w.flex {
		w.skip(int(min(w.uvarint(), 1<<31)) - 1)
		return
	}
	if n := w.int32(); n > 0 {
		w.skip(int(n))
	}
}

func (w *wire) tags() {
	if !w.flex {
		return
	}
	for range min(w.uvarint(), uint64(len(w.b))) {
		w.uvarint()
		w.skip(int(min(w.uvarint(), 1<<31)))
	}
}
