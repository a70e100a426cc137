package observe

import (
	"encoding/json"
	"net/http"
	"strings"
)

// ContentTypeNDJSON is the media type of a flow stream: one JSON
// GetFlowsResponse per line.
const ContentTypeNDJSON = "application/x-ndjson"

// Handler serves the ring's records as GET /flows?<Filter.Query()>: the
// records the filter selects, one GetFlowsResponse per line (NDJSON). Without
// follow=1 it writes the last `last` records (all kept when last is 0) and
// ends; with it, it writes the last `last` and then every new record, flushing
// each line, until the client goes away. A bad parameter gets a 400 with a
// one-line reason. node fills the node_name of records that have none.
func Handler(r *Ring, node string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !strings.HasSuffix(req.URL.Path, "/flows") {
			http.NotFound(w, req)
			return
		}
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		f, err := ParseFilterQuery(req.URL.Query())
		if err != nil {
			http.Error(w, oneLine(err.Error()), http.StatusBadRequest)
			return
		}
		// Records kept here carry this node's name or none: the node
		// condition is settled once, not per record.
		otherNode := len(f.Nodes) > 0 && !f.nodeMatch(node)
		f.Nodes = nil

		w.Header().Set("Content-Type", ContentTypeNDJSON)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		if req.Method == http.MethodHead || otherNode {
			return
		}
		flusher, _ := w.(http.Flusher)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		write := func(rec *GetFlowsResponse) error {
			if rec.NodeName == "" && node != "" {
				c := *rec
				c.NodeName = node
				rec = &c
			}
			return enc.Encode(rec)
		}

		if !f.Follow {
			for _, rec := range r.Last(f, f.Last) {
				if err := write(rec); err != nil {
					return
				}
			}
			return
		}
		if flusher != nil {
			// Tell the client the stream is open before the first record.
			flusher.Flush()
		}
		// The stream ends when the client leaves (the request's context ends)
		// or a write fails; both are normal ends with nothing to report.
		_ = r.Follow(req.Context(), f, func(rec *GetFlowsResponse) error {
			if err := write(rec); err != nil {
				return err
			}
			if flusher != nil {
				flusher.Flush()
			}
			return nil
		})
	})
}

func oneLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}
