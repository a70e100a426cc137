package kafkaproxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Fetch sessions (KIP-227, Fetch v7 and later): a client opens a session with a full fetch that
// names every partition it reads, and then sends incremental fetches that name only the
// partitions that changed, while the broker answers for all of the session's. The proxy judges an
// incremental fetch by every topic its session reads: the topics of the fetch that opened it
// and of each fetch since, on this connection. A session the proxy did not see opened on this
// connection (another client's session ID) is refused.

// maxSessions bounds the fetch sessions the proxy keeps per connection (a client has one per
// broker connection; the broker's own cache is small too).
const maxSessions = 8

// sessions are a connection's fetch sessions, by the ID the broker gave each, with the topics
// each reads.
type sessions struct {
	mu sync.Mutex
	m  map[int32][]string
}

// fetchSession is what the answer to a forwarded fetch tells the proxy: the session it opened
// (open) or continued (id), and the topics the session reads from then on.
type fetchSession struct {
	open   bool
	id     int32
	close  bool
	topics []string
}

// fetchTopics are the topics a fetch is judged by, with the session it opens or continues; refuse
// says why it is refused (a session this connection did not open, an epoch the protocol does not
// have).
func (s *sessions) fetchTopics(f *kmsg.FetchRequest, named []string) (judged []string, fs *fetchSession, refuse string) {
	if f.Version < 7 {
		return named, nil, ""
	}
	switch {
	case f.SessionEpoch == 0:
		// A full fetch that opens a session, closing the one it names if any (a client does
		// that after an error): it reads what it names.
		if f.SessionID != 0 {
			s.mu.Lock()
			delete(s.m, f.SessionID)
			s.mu.Unlock()
		}
		return named, &fetchSession{open: true, topics: union(nil, named)}, ""
	case f.SessionEpoch == -1:
		// A fetch outside any session, closing the one it names: it reads what it names.
		if f.SessionID != 0 {
			return named, &fetchSession{id: f.SessionID, close: true}, ""
		}
		return named, nil, ""
	case f.SessionID != 0 && f.SessionEpoch > 0:
		s.mu.Lock()
		defer s.mu.Unlock()
		known, ok := s.m[f.SessionID]
		if !ok {
			return named, nil, fmt.Sprintf("fetch continuing session %d, which was not opened on this connection: the proxy cannot tell which topics it reads", f.SessionID)
		}
		all := union(known, named)
		if len(all) > MaxTopics {
			return named, nil, fmt.Sprintf("fetch session %d reading more than %d topics", f.SessionID, MaxTopics)
		}
		// Recorded now: a fetch sent before this one's answer reads these topics too.
		s.m[f.SessionID] = all
		return all, &fetchSession{id: f.SessionID, topics: all}, ""
	}
	return named, nil, fmt.Sprintf("fetch with session %d and epoch %d, which the protocol does not have", f.SessionID, f.SessionEpoch)
}

// answered records what the broker's answer to a fetch says of its session: the head of the
// answer's body is peeked (never consumed), after its correlation ID.
func (s *sessions) answered(fs *fetchSession, version int16, body *bufio.Reader, size int32) {
	if fs == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if fs.close {
		delete(s.m, fs.id)
		return
	}
	code, id, ok := fetchAnswerHead(body, version, size)
	switch {
	case !ok || code != 0:
		// The broker refused the session (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH):
		// the client opens another.
		delete(s.m, fs.id)
	case fs.open && id != 0:
		if s.m == nil {
			s.m = map[int32][]string{}
		}
		if len(s.m) >= maxSessions {
			for k := range s.m {
				delete(s.m, k)
				break
			}
		}
		s.m[id] = fs.topics
	}
}

// fetchAnswerHead reads a fetch answer's error code and session ID (v7+), after the response
// header's tagged fields (flexible versions, v12+), without consuming them; size is the body's,
// which a peek never reads past.
func fetchAnswerHead(r *bufio.Reader, version int16, size int32) (int16, int32, bool) {
	const need = 4 + 2 + 4 // throttle, error code, session ID
	skip := 0
	if size < need+1 {
		return 0, 0, false
	}
	if version >= 12 {
		b, err := r.Peek(1)
		if err != nil || b[0] != 0 {
			// Tagged fields in a response header: none exist today; read no further.
			return 0, 0, false
		}
		skip = 1
	}
	b, err := r.Peek(skip + need)
	if err != nil {
		return 0, 0, false
	}
	b = b[skip:]
	return int16(binary.BigEndian.Uint16(b[4:])), int32(binary.BigEndian.Uint32(b[6:])), true
}

// union is the topics of a and b, each once, sorted.
func union(a, b []string) []string {
	seen := make(map[string]bool, len(a)+len(b))
	out := make([]string, 0, len(a)+len(b))
	for _, t := range append(slices.Clip(a), b...) {
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}
