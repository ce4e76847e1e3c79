package process

import (
	"bufio"
	"encoding/json"
	"net/http"
	"time"

	"github.com/tensorlake/tl-agent/internal/httpx"
)

// sseWriteTimeout drops a follower whose client has not taken a batch of
// events for this long; the process never waits on a follower.
const sseWriteTimeout = 30 * time.Second

// sseBatch bounds how many lines one wake-up sends before flushing.
const sseBatch = 256

type lineEvent struct {
	Line      string `json:"line"`
	Timestamp int64  `json:"timestamp"`
	Stream    string `json:"stream,omitempty"`
}

// sse writes server-sent events with a bounded buffer and deadline.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	bw *bufio.Writer
}

func newSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w), bw: bufio.NewWriterSize(w, 32<<10)}
}

// event queues one event; name may be empty (a plain `data:` event).
func (s *sse) event(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if name != "" {
		s.bw.WriteString("event: ")
		s.bw.WriteString(name)
		s.bw.WriteByte('\n')
	}
	s.bw.WriteString("data: ")
	s.bw.Write(data)
	_, err = s.bw.WriteString("\n\n")
	return err
}

func (s *sse) flush() error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
	if err := s.bw.Flush(); err != nil {
		return err
	}
	return s.rc.Flush()
}

// follow streams p's output (filtered to stream, "" for both) from the
// start of what is kept until the output ends or the client goes away.
// It returns false when the client is gone.
func (p *Process) follow(r *http.Request, s *sse, filter, eventName string, tagStream bool) bool {
	var seq uint64
	for {
		lines, next, wake, eof := p.out.since(seq, sseBatch)
		seq = next
		for _, l := range lines {
			if filter != "" && l.Stream != filter {
				continue
			}
			ev := lineEvent{Line: l.Text, Timestamp: ms(l.At)}
			if tagStream {
				ev.Stream = l.Stream
			}
			if s.event(eventName, ev) != nil {
				return false
			}
		}
		if len(lines) > 0 && s.flush() != nil {
			return false
		}
		if eof {
			return true
		}
		if len(lines) == sseBatch {
			continue
		}
		select {
		case <-wake:
		case <-r.Context().Done():
			return false
		}
	}
}

func (t *Table) handleFollow(w http.ResponseWriter, r *http.Request) {
	filter, ok := streamFilter(r.PathValue("stream"))
	if !ok {
		httpx.WriteError(w, http.StatusNotFound, codeNotFound, "no route for "+r.URL.Path)
		return
	}
	p, _, err := t.lookup(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	s := newSSE(w)
	if err := s.flush(); err != nil {
		return
	}
	if !p.follow(r, s, filter, "output", filter == "") {
		return
	}
	_ = s.event("eof", struct{}{})
	_ = s.flush()
}

// maxTimeout bounds run's timeout (one year), keeping the conversion to a
// Duration far from overflow.
const maxTimeout = 365 * 24 * 3600

// handleRun starts a command with stdin closed and streams its output and
// exit as events. The timeout, and a client that goes away before the
// exit, kill the whole tree.
func (t *Table) handleRun(w http.ResponseWriter, r *http.Request) {
	var req StartRequest
	if !httpx.DecodeJSON(w, r, &req) {
		return
	}
	if req.Timeout < 0 || req.Timeout > maxTimeout {
		writeErr(w, badRequest(codeInvalid, "timeout must be from 0 (none) to %d seconds", maxTimeout))
		return
	}
	req.StdinMode, req.StdoutMode, req.StderrMode = "", "", ""
	s, err := prepare(&req, t.cfg.User)
	if err != nil {
		writeErr(w, err)
		return
	}
	p, err := t.start(s, nil)
	if err != nil {
		writeErr(w, err)
		return
	}
	if req.Timeout > 0 {
		timer := time.AfterFunc(time.Duration(req.Timeout*float64(time.Second)), func() {
			t.log.Info().Int("pid", p.pid).Float64("timeout_s", req.Timeout).Msg("run timed out: killing the tree")
			p.kill()
		})
		defer timer.Stop()
	}
	ev := newSSE(w)
	_ = ev.event("", map[string]any{"handle": p.handle, "pid": p.pid, "started_at": ms(p.startedAt)})
	if ev.flush() != nil || !p.follow(r, ev, "", "", true) {
		p.kill()
		return
	}
	select {
	case <-p.done:
	case <-r.Context().Done():
		p.kill()
		return
	}
	p.mu.Lock()
	e := p.exitInfo()
	p.mu.Unlock()
	end := map[string]any{}
	if e.Signal != nil {
		end["signal"] = *e.Signal
	} else {
		end["exit_code"] = *e.ExitCode
	}
	if e.OOMKilled {
		end["oom_killed"] = true
	}
	_ = ev.event("", end)
	_ = ev.flush()
}
