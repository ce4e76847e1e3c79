package process

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/reqid"
)

// sseFinalGrace is how long, after a run client was found stalled, the
// events already queued and the final event may still wait for it.
const sseFinalGrace = 5 * time.Second

// sseStallConfirm is how long a run client's writes must still be blocked
// after the stall timeout fired before it counts as stalled.
const sseStallConfirm = time.Second

// One wake-up sends at most this many lines, about this many bytes,
// before flushing.
const (
	sseBatchLines = 256
	sseBatchBytes = 256 << 10
)

// errStalled: the run client took no events for the stall timeout.
var errStalled = errors.New("client stalled")

type lineEvent struct {
	Line      string `json:"line"`
	Timestamp int64  `json:"timestamp"`
	Stream    string `json:"stream,omitempty"`
}

// skippedEvent tells a follower how many lines it missed at this point
// (they were dropped from the kept output before it read them). It has no
// "line", so the SDKs, which take every event whose data has one as
// output, pass over it.
type skippedEvent struct {
	SkippedLines uint64 `json:"skipped_lines"`
}

// sse writes server-sent events with a bounded buffer. A client that takes
// nothing for stall is dropped: by a write deadline, or, with onStall set
// (run), by a watchdog that calls onStall and leaves sseFinalGrace for the
// queued events and a final one.
type sse struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	bw      *bufio.Writer
	stall   time.Duration
	onStall func()
}

func newSSE(w http.ResponseWriter, stall time.Duration) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w), bw: bufio.NewWriterSize(w, 32<<10), stall: stall}
}

// done clears the write deadline: the connection may serve another request.
func (s *sse) done() { _ = s.rc.SetWriteDeadline(time.Time{}) }

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

func (s *sse) flushNow() error {
	if err := s.bw.Flush(); err != nil {
		return err
	}
	return s.rc.Flush()
}

// send runs queue (which queues events; the buffer may write some) and
// flushes, all under the stall guard. With onStall it returns errStalled
// once the watchdog found the client stalled, whether or not the writes
// went through later.
func (s *sse) send(queue func() error) error {
	if s.onStall == nil {
		_ = s.rc.SetWriteDeadline(time.Now().Add(s.stall))
		if err := queue(); err != nil {
			return err
		}
		return s.flushNow()
	}
	var mu sync.Mutex
	finished, stalled := false, false
	fired := make(chan struct{})
	timer := time.AfterFunc(s.stall, func() {
		defer close(fired)
		// A frozen sandbox (cgroup freeze, VM pause) runs overdue timers at
		// thaw, though the client was reading: the writes still blocked a
		// moment later say the client really stalled.
		time.Sleep(sseStallConfirm)
		mu.Lock()
		if finished {
			mu.Unlock()
			return
		}
		stalled = true
		mu.Unlock()
		s.onStall()
		_ = s.rc.SetWriteDeadline(time.Now().Add(sseFinalGrace))
	})
	err := queue()
	if err == nil {
		err = s.flushNow()
	}
	mu.Lock()
	finished = true
	st := stalled
	mu.Unlock()
	timer.Stop()
	if st {
		<-fired
		return errStalled
	}
	return err
}

// follower is one reader of a process's output and what it has seen.
type follower struct {
	filter    string // Stdout, Stderr, or "" for both
	name      string // event name of lines ("" on run)
	tagStream bool   // lines carry "stream"
	owner     bool   // the run client: reads pin the log
	want      uint64 // number of the next line the client should get
}

// number is l's place in what the follower reads: Seq for both streams, N
// for one.
func (f *follower) number(l Line) uint64 {
	if f.filter == "" {
		return l.Seq
	}
	return l.N
}

// queue queues b's lines for f, each gap in their numbers first as a
// skipped event; at the end, lines dropped after the last one too.
func (f *follower) queue(s *sse, b batch) error {
	for _, l := range b.lines {
		if f.filter != "" && l.Stream != f.filter {
			continue
		}
		if err := f.skipTo(s, f.number(l)); err != nil {
			return err
		}
		ev := lineEvent{Line: l.Text, Timestamp: l.At.UnixMilli()}
		if f.tagStream {
			ev.Stream = l.Stream
		}
		if err := s.event(f.name, ev); err != nil {
			return err
		}
		f.want = f.number(l) + 1
	}
	if !b.eof {
		return nil
	}
	end := b.next
	if f.filter != "" {
		end = b.ends[streamIndex(f.filter)]
	}
	return f.skipTo(s, end)
}

func (f *follower) skipTo(s *sse, n uint64) error {
	if n <= f.want {
		return nil
	}
	err := s.event("skipped", skippedEvent{SkippedLines: n - f.want})
	f.want = n
	return err
}

// stream sends p's output to f from the start of what is kept until the
// output ends (nil), the client goes away or stalls (an error).
func (p *Process) stream(ctx context.Context, s *sse, f *follower) error {
	var seq uint64
	for {
		b := p.out.read(seq, sseBatchLines, sseBatchBytes, f.owner)
		seq = b.next
		if len(b.lines) > 0 || b.eof {
			if err := s.send(func() error { return f.queue(s, b) }); err != nil {
				return err
			}
		}
		if b.eof {
			return nil
		}
		if b.full {
			continue
		}
		select {
		case <-b.wake:
		case <-ctx.Done():
			return ctx.Err()
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
	if err := t.addFollower(p); err != nil {
		writeErr(w, err)
		return
	}
	defer t.removeFollower(p)
	s := newSSE(w, t.cfg.StallTimeout)
	defer s.done()
	if s.send(func() error { return nil }) != nil {
		return
	}
	f := &follower{filter: filter, name: "output", tagStream: filter == ""}
	if err := p.stream(r.Context(), s, f); err != nil {
		if !errors.Is(err, context.Canceled) {
			log := reqid.Logger(r.Context(), t.log)
			log.Info().Int("pid", p.pid).Err(err).Msg("follower dropped")
		}
		return
	}
	_ = s.send(func() error { return s.event("eof", struct{}{}) })
}

// maxTimeout bounds run's timeout (one year), keeping the conversion to a
// Duration far from overflow.
const maxTimeout = 365 * 24 * 3600

// handleRun starts a command with stdin closed and streams its output and
// exit as events. The client owns the output: the process's pipes are read
// only as fast as it takes events, so every line reaches it. The timeout,
// a client that goes away before the exit, and one that takes no events
// for StallTimeout kill the whole tree; one dropped by a live upgrade does
// not (Table.Freeze).
func (t *Table) handleRun(w http.ResponseWriter, r *http.Request) {
	var req StartRequest
	if !httpx.DecodeJSON(w, r, &req) {
		return
	}
	if req.Timeout < 0 || req.Timeout > maxTimeout {
		writeErr(w, refuse(ErrInvalid, "timeout must be from 0 (none) to %d seconds", maxTimeout))
		return
	}
	req.StdinMode, req.StdoutMode, req.StderrMode = "", "", ""
	s, err := prepare(&req, t.cfg.User)
	if err != nil {
		writeErr(w, err)
		return
	}
	log := reqid.Logger(r.Context(), t.log)
	s.startLog = &log
	var deadline time.Time
	if req.Timeout > 0 {
		deadline = time.Now().Add(time.Duration(req.Timeout * float64(time.Second)))
	}
	p, err := t.startRun(s, deadline)
	if err != nil {
		writeErr(w, err)
		return
	}
	defer p.out.unpin()
	if req.Timeout > 0 {
		timer := time.AfterFunc(time.Until(deadline), func() {
			log.Info().Int("pid", p.pid).Float64("timeout_s", req.Timeout).Msg("run timed out: killing the tree")
			p.kill()
		})
		defer timer.Stop()
	}
	ev := newSSE(w, t.cfg.StallTimeout)
	defer ev.done()
	var killed atomic.Bool
	ev.onStall = func() {
		log.Warn().Int("pid", p.pid).Dur("stall", t.cfg.StallTimeout).Msg("run client takes no events: dropping it and killing the tree")
		p.out.unpin()
		if p.running() && !p.detached.Load() {
			killed.Store(true)
			p.kill()
		}
	}
	err = ev.send(func() error {
		return ev.event("", map[string]any{"handle": p.handle, "pid": p.pid, "started_at": p.startedAt.UnixMilli()})
	})
	if err == nil {
		err = p.stream(r.Context(), ev, &follower{tagStream: true, owner: true})
	}
	if err == nil {
		select {
		case <-p.done:
		case <-r.Context().Done():
			err = r.Context().Err()
		}
	}
	switch {
	case errors.Is(err, errStalled):
		t.endStalledRun(ev, p, killed.Load())
	case err != nil && p.detached.Load():
		// A live upgrade dropped the client: the process goes on as a
		// table entry (docs/processes.md, "Live upgrade").
		log.Info().Int("pid", p.pid).Msg("run client dropped by an upgrade: the process goes on")
	case err != nil:
		p.kill()
	default:
		_ = ev.send(func() error { return ev.event("", exitEvent(p)) })
	}
}

// exitEvent is run's last event for an ended process.
func exitEvent(p *Process) map[string]any {
	p.mu.Lock()
	e := p.exitInfo()
	p.mu.Unlock()
	end := map[string]any{}
	switch {
	case e.Signal != nil:
		end["signal"] = *e.Signal
	case e.ExitCode != nil:
		end["exit_code"] = *e.ExitCode
	}
	if e.OOMKilled {
		end["oom_killed"] = true
	}
	return end
}

// endStalledRun sends a stalled run client, if it reads again within
// sseFinalGrace, a last event saying why its stream ends: the spec's error
// shape, plus the exit (signal 9) when the agent killed the tree. A
// process that had ended by itself gets no exit fields: its output was not
// all delivered, and an exit code 0 would read as success.
func (t *Table) endStalledRun(ev *sse, p *Process, killed bool) {
	end := map[string]any{
		"error": fmt.Sprintf("the client took no events for %v: the stream ends here, lines after this point were not sent", t.cfg.StallTimeout),
		"code":  codeClientTooSlow,
	}
	if killed {
		select {
		case <-p.done:
			for k, v := range exitEvent(p) {
				end[k] = v
			}
		case <-time.After(sseFinalGrace):
		}
	}
	_ = ev.event("", end)
	_ = ev.flushNow()
}
