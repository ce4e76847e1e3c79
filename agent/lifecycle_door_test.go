package agent

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The gate counts a request as in flight until its response shows it is
// an event stream (whatever the client's Accept said) or until it ends;
// the wrapper keeps flushing, deadlines and copies working through the
// agent's own chain (the metrics' wrapper around it).
func TestAPIDoorCountsUntilEventStream(t *testing.T) {
	a, _ := lifecycleAgent(t, false)
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /sse", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.WriteHeader(200)
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("write deadline through the door: %v", err)
		}
		_, _ = io.WriteString(w, "data: {}\n\n")
		if err := rc.Flush(); err != nil {
			t.Errorf("flush through the door: %v", err)
		}
		<-release
	})
	mux.HandleFunc("GET /implicit", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {}\n\n") // no WriteHeader: the header goes with it
		w.(http.Flusher).Flush()
		<-release
	})
	mux.HandleFunc("GET /plain", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.(http.Flusher).Flush() // a header sent early is no event stream
		<-release
	})
	mux.HandleFunc("GET /copy", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(w, strings.NewReader("file bytes"))
	})
	srv := httptest.NewServer(a.apiDoor(a.met.instrumentAPI(mux)))
	defer srv.Close()
	defer close(release)

	wait := func(want int64) {
		t.Helper()
		for i := 0; i < 500 && a.gate.inflight.Load() != want; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if n := a.gate.inflight.Load(); n != want {
			t.Fatalf("in flight %d, want %d", n, want)
		}
	}
	get := func(path string) *http.Response {
		t.Helper()
		resp, err := http.Get(srv.URL + path) // no Accept header
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	for _, p := range []string{"/sse", "/implicit"} {
		resp := get(p)
		if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || line != "data: {}\n" {
			t.Fatalf("%s: %q %v", p, line, err)
		}
	}
	wait(0) // two event streams open, neither in flight
	get("/plain")
	wait(1)
	if b, err := io.ReadAll(get("/copy").Body); err != nil || string(b) != "file bytes" {
		t.Fatalf("copy through the door: %q %v", b, err)
	}
	wait(1) // the copy came and went; the plain request is still in flight
}
