package agent

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/reqid"
)

// TestAPIRequestIDs: the agent's API answers with the request's ids and
// logs the request with them; a request without ids gets new ones.
func TestAPIRequestIDs(t *testing.T) {
	var buf bytes.Buffer
	a := New(Config{}, zerolog.New(&buf).Level(zerolog.DebugLevel), "test", Parts{})
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req := httptest.NewRequest("GET", "/api/v1/health", nil)
	req.Header.Set(reqid.HeaderRequestID, "rid-agent-1")
	req.Header.Set(reqid.HeaderTraceparent, tp)
	rec := httptest.NewRecorder()
	a.api.Handler.ServeHTTP(rec, req)
	if got := rec.Header().Get(reqid.HeaderRequestID); got != "rid-agent-1" {
		t.Fatalf("response X-Request-Id %q, want the request's", got)
	}
	trace, span, _, err := reqid.ParseTraceparent(rec.Header().Get(reqid.HeaderTraceparent))
	if err != nil || trace != "4bf92f3577b34da6a3ce929d0e0e4736" || span == "00f067aa0ba902b7" {
		t.Fatalf("response traceparent %q: want the trace kept, a span of the agent's own", rec.Header().Get(reqid.HeaderTraceparent))
	}
	var ev map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(buf.String(), "\n", 2)[0]), &ev); err != nil {
		t.Fatalf("log %q: %v", buf.String(), err)
	}
	if ev["request_id"] != "rid-agent-1" || ev["trace_id"] != trace || ev["message"] != "api request" {
		t.Fatalf("the request's log event lacks its ids: %v", ev)
	}

	rec = httptest.NewRecorder()
	a.api.Handler.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/health", nil))
	if !reqid.ValidRequestID(rec.Header().Get(reqid.HeaderRequestID)) {
		t.Fatalf("no ids sent: response X-Request-Id %q, want a new one", rec.Header().Get(reqid.HeaderRequestID))
	}
}
