package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/uplink"
)

// The lifecycle's doors (the uplink's lifecycle stream, the control
// socket), its gate on new work and the activity the API records.

const (
	// gateWait bounds how long a new stream or API request waits at a
	// closed gate (a prepared sandbox) before it is refused, retryable.
	gateWait = 10 * time.Second
	// lifecycleStreamTimeout bounds a lifecycle stream: the longest
	// prepare and its answer.
	lifecycleStreamTimeout = maxPrepareTimeout + 30*time.Second
	// answerReadWait bounds waiting for the proxy to close a lifecycle
	// stream after the answer, before the call's after-steps run anyway.
	answerReadWait = 2 * time.Second
)

// gate holds new work back while the sandbox is prepared for a snapshot
// and counts the API requests in flight, for the prepare's drain.
type gate struct {
	mu       sync.Mutex
	shut     chan struct{} // non-nil while closed; closed when it opens
	inflight atomic.Int64
}

func (g *gate) close() {
	g.mu.Lock()
	if g.shut == nil {
		g.shut = make(chan struct{})
	}
	g.mu.Unlock()
}

func (g *gate) open() {
	g.mu.Lock()
	if g.shut != nil {
		close(g.shut)
		g.shut = nil
	}
	g.mu.Unlock()
}

// wait waits for the gate to be open, at most d; it reports whether it is.
func (g *gate) wait(ctx context.Context, d time.Duration) bool {
	g.mu.Lock()
	ch := g.shut
	g.mu.Unlock()
	if ch == nil {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// drain waits until no counted request is in flight, at most d, and
// returns how many still are.
func (g *gate) drain(ctx context.Context, d time.Duration) int64 {
	deadline := time.Now().Add(d)
	for n := g.inflight.Load(); ; n = g.inflight.Load() {
		if n <= 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return max(n, 0)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// apiDoor wraps the API: each request waits at the gate, counts as in
// flight until it ends or, for a long-lived one the drain cannot wait for,
// until that shows (a WebSocket by its Upgrade header; an event stream by
// its response's Content-Type, whatever the client's Accept said), and
// counts as activity (but health and info, which platforms poll).
func (a *Agent) apiDoor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		long := r.Header.Get("Upgrade") != ""
		for {
			if !long {
				a.gate.inflight.Add(1)
			}
			if a.gate.wait(r.Context(), 0) {
				break
			}
			if !long {
				a.gate.inflight.Add(-1)
			}
			if !a.gate.wait(r.Context(), gateWait) {
				w.Header().Set("Retry-After", "1")
				httpx.WriteError(w, http.StatusServiceUnavailable, "SNAPSHOT_IN_PROGRESS", "the sandbox is being snapshotted: retry shortly")
				return
			}
		}
		if !(r.Method == http.MethodGet && (r.URL.Path == "/api/v1/health" || r.URL.Path == "/api/v1/info")) {
			defer a.activity.Hold()()
		}
		if long { // hijacked: the server's own writer, unwrapped
			next.ServeHTTP(w, r)
			return
		}
		dw := &doorWriter{ResponseWriter: w, inflight: &a.gate.inflight}
		defer dw.leave()
		next.ServeHTTP(dw, r)
	})
}

// doorWriter leaves the in-flight count when its response turns out to be
// an event stream (its header written with that Content-Type), or when
// the request ends, once.
type doorWriter struct {
	http.ResponseWriter
	inflight *atomic.Int64
	once     sync.Once
	headed   bool
}

func (d *doorWriter) leave() { d.once.Do(func() { d.inflight.Add(-1) }) }

// header is called before the response's header goes out.
func (d *doorWriter) header(code int) {
	if d.headed || code < 200 { // 1xx: informational, the real one follows
		return
	}
	d.headed = true
	if isEventStream(d.Header().Get("Content-Type")) {
		d.leave()
	}
}

func (d *doorWriter) WriteHeader(code int) {
	d.header(code)
	d.ResponseWriter.WriteHeader(code)
}

func (d *doorWriter) Write(b []byte) (int, error) {
	d.header(http.StatusOK)
	return d.ResponseWriter.Write(b)
}

// Flush keeps http.Flusher visible to wrappers that look for it
// (promhttp's); it writes the header if none was.
func (d *doorWriter) Flush() {
	d.header(http.StatusOK)
	_ = http.NewResponseController(d.ResponseWriter).Flush()
}

// ReadFrom keeps the server's own copy path (io.Copy of a file download).
func (d *doorWriter) ReadFrom(r io.Reader) (int64, error) {
	d.header(http.StatusOK)
	if rf, ok := d.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{d.ResponseWriter}, r)
}

// Unwrap lets http.ResponseController reach the server's writer
// (deadlines, hijack).
func (d *doorWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// isEventStream reports whether a Content-Type is text/event-stream (the
// API's streaming responses: process follow and run, sandbox-api.md).
func isEventStream(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// gateStream holds a new stream at the gate (not the platform's own
// kinds) and records a user's connection (ssh, sftp, a port or socket
// relay) as activity for its life. It reports false when the stream was
// refused.
func (a *Agent) gateStream(ctx context.Context, c *countedConn, h uplink.Header, log zerolog.Logger) bool {
	switch h.Kind {
	case uplink.KindMetrics, uplink.KindLifecycle:
		return true
	}
	if !a.gate.wait(ctx, gateWait) {
		why := "the sandbox is being snapshotted: retry shortly"
		log.Info().Msg("refused stream: " + why)
		_ = uplink.WriteReply(c, uplink.StatusUnavailable, why)
		c.Close()
		return false
	}
	if h.Kind != uplink.KindAPI { // api streams are pooled: their requests count
		c.release = append(c.release, a.activity.Hold())
	}
	return true
}

// serveLifecycle answers a lifecycle stream: OK, one call, one answer.
func (a *Agent) serveLifecycle(ctx context.Context, c *countedConn, _ uplink.Header, _ *streamLimits, log zerolog.Logger) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(lifecycleStreamTimeout))
	if uplink.WriteReply(c, uplink.StatusOK, "") != nil {
		return
	}
	var call uplink.LifecycleCall
	code, body, after := 0, any(nil), func() {}
	if err := json.NewDecoder(io.LimitReader(c, uplink.MaxLifecycleBody)).Decode(&call); err != nil {
		code, body = http.StatusBadRequest, errBody("INVALID_REQUEST", "invalid lifecycle call: "+httpx.JSONErrorText(err))
	} else {
		var f func()
		code, body, f = a.lifecycleCall(ctx, call.Op, func(v any) error {
			if len(call.Request) == 0 {
				return nil
			}
			return json.Unmarshal(call.Request, v)
		})
		if f != nil {
			after = f
		}
	}
	raw, _ := json.Marshal(body)
	if err := json.NewEncoder(c).Encode(uplink.LifecycleAnswer{Status: code, Body: raw}); err != nil {
		log.Warn().Err(err).Str("op", call.Op).Msg("lifecycle answer not sent")
	}
	_ = c.CloseWrite()
	// The proxy closes once it has read the answer; then (or after
	// answerReadWait) the call's after-steps may cut the link.
	_ = c.SetReadDeadline(time.Now().Add(answerReadWait))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 4096))
	after()
}

// handleLifecycle is the control socket's door: POST /lifecycle/prepare,
// POST /lifecycle/resume, GET /lifecycle/status, for a runtime on the
// host. An empty body is an empty call.
func (a *Agent) handleLifecycle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, uplink.MaxLifecycleBody))
	if err != nil {
		var mbe *http.MaxBytesError
		msg := err.Error()
		if errors.As(err, &mbe) {
			msg = fmt.Sprintf("over %d bytes, the limit of a lifecycle call", uplink.MaxLifecycleBody)
		}
		httpx.WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", "invalid JSON body: "+msg)
		return
	}
	code, res, after := a.lifecycleCall(r.Context(), r.PathValue("op"), func(v any) error {
		if strings.TrimSpace(string(body)) == "" {
			return nil
		}
		return strictJSON(body, v)
	})
	if after == nil {
		httpx.WriteJSON(w, code, res)
		return
	}
	// A whole answer (its length known) before the after-step, which may
	// end this process (an upgrade's exec) before the handler returns.
	raw, _ := json.Marshal(res)
	raw = append(raw, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", fmt.Sprint(len(raw)))
	w.WriteHeader(code)
	_, _ = w.Write(raw)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	after()
}

// strictJSON decodes exactly one JSON value.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more data after the JSON value: send one JSON object")
	}
	return nil
}

// sandboxIdentity is who the agent registers as: the configured id and
// token until a resume gives a clone its own.
type sandboxIdentity struct {
	mu        sync.Mutex
	id, token string
}

func (a *Agent) identity() (id, token string) {
	a.ident.mu.Lock()
	defer a.ident.mu.Unlock()
	return a.ident.id, a.ident.token
}

// setIdentity takes a new id and/or token; link secrets of the old
// identity are dropped (a clone must not resume its parent's link).
func (a *Agent) setIdentity(id, token string) {
	a.ident.mu.Lock()
	if id != "" {
		a.ident.id = id
	}
	if token != "" {
		a.ident.token = token
	}
	a.ident.mu.Unlock()
	a.secrets.clear()
}

// kickLink ends the live uplink session so it is redialed at once (with
// the current identity).
func (a *Agent) kickLink() {
	a.liveMu.Lock()
	s := a.live
	a.kicked = s
	a.liveMu.Unlock()
	if s != nil {
		s.Close()
	}
}

// wasKicked reports whether sess ended by kickLink.
func (a *Agent) wasKicked(sess any) bool {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	return a.kicked != nil && any(a.kicked) == sess
}

// sandboxID is the id the agent registers as now.
func (a *Agent) sandboxID() string {
	id, _ := a.identity()
	return id
}
