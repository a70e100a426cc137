package kafkaproxy

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// FuzzParseRequest: whatever a client sends, parsing returns a request or an error, never
// panics; a request it returns has the topics and denied answer of its kind without panicking.
func FuzzParseRequest(f *testing.F) {
	for _, req := range []kmsg.Request{metadata(9, "orders"), metadata(1, "a", "b"), kmsg.NewPtrProduceRequest(),
		kmsg.NewPtrFetchRequest(), kmsg.NewPtrOffsetFetchRequest(), kmsg.NewPtrFindCoordinatorRequest()} {
		f.Add(requestFrame(req, 1, "client")[4:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, req, err := parseRequest(b)
		if err != nil {
			return
		}
		named, _ := topics(req)
		if f, ok := req.(*kmsg.FetchRequest); ok {
			var s sessions
			s.fetchTopics(f, named)
		}
		deniedAnswer(h, req)
	})
}
