package observe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxLine bounds a stream line, so a broken server cannot make a reader
// buffer without end.
const maxLine = 4 << 20

// Stream decodes an NDJSON flow stream (as Handler writes it) from body and
// calls fn with each record, until the body ends (nil), ctx ends, a line does
// not decode, or fn returns an error (returned as is). A read blocked on the
// body ends only when the body does: make the request with ctx so that the
// transport closes the body when ctx ends.
func Stream(ctx context.Context, body io.Reader, fn func(*GetFlowsResponse) error) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	line := 0
	for sc.Scan() {
		line++
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		var rec GetFlowsResponse
		if err := json.Unmarshal(b, &rec); err != nil {
			return fmt.Errorf("stream: line %d: %w", line, err)
		}
		if err := fn(&rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("stream: %w", ctxErr)
		}
		return fmt.Errorf("stream: read: %w", err)
	}
	return nil
}

// Fetch requests baseURL + "/flows" with the filter's query from a Handler
// and streams the answer to fn, as Stream does. client nil means
// http.DefaultClient. A refused request returns the server's one-line
// reason.
func Fetch(ctx context.Context, client *http.Client, baseURL string, f Filter, fn func(*GetFlowsResponse) error) error {
	if client == nil {
		client = http.DefaultClient
	}
	u, err := url.Parse(strings.TrimSuffix(baseURL, "/") + "/flows")
	if err != nil {
		return fmt.Errorf("fetch flows: %w", err)
	}
	u.RawQuery = f.Query().Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("fetch flows: %w", err)
	}
	req.Header.Set("Accept", ContentTypeNDJSON)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch flows: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("fetch flows: %s: %w", resp.Status, errors.New(strings.TrimSpace(string(msg))))
	}
	return Stream(ctx, resp.Body, fn)
}
