package process

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/reqid"
)

// Info is the API's P object.
type Info struct {
	Handle        int          `json:"handle"`
	Pid           int          `json:"pid"`
	Status        string       `json:"status"`
	ExitCode      *int         `json:"exit_code"`
	Signal        *int         `json:"signal"`
	OOMKilled     bool         `json:"oom_killed"`
	StdinWritable bool         `json:"stdin_writable"`
	Command       string       `json:"command"`
	Args          []string     `json:"args"`
	StartedAt     int64        `json:"started_at"`
	EndedAt       *int64       `json:"ended_at"`
	Managed       *ManagedInfo `json:"managed,omitempty"`
}

// ManagedInfo is P's `managed` block.
type ManagedInfo struct {
	ID                        string        `json:"id"`
	Name                      *string       `json:"name"`
	Status                    string        `json:"status"`
	RestartCount              int           `json:"restart_count"`
	Restart                   RestartPolicy `json:"restart"`
	HealthCheck               *HealthCheck  `json:"health_check"`
	HealthStatus              string        `json:"health_status"`
	ConsecutiveHealthFailures int           `json:"consecutive_health_failures"`
	LastExit                  *ExitInfo     `json:"last_exit"`
	LastError                 *string       `json:"last_error"`
	NextRestartAt             *int64        `json:"next_restart_at"`
}

func (p *Process) exitInfo() ExitInfo {
	e := ExitInfo{OOMKilled: p.oom, EndedAt: p.endedAt.UnixMilli()}
	if p.lost {
		return e // ended during an upgrade's hand-over: exit_code and signal null
	}
	if p.exit.Signal != 0 {
		sig := int(p.exit.Signal)
		e.Signal = &sig
	} else {
		code := p.exit.Code
		e.ExitCode = &code
	}
	return e
}

// info describes p; an instance of a supervised process carries its
// supervisor's current managed block.
func (p *Process) info() Info {
	in := Info{
		Handle: p.handle, Pid: p.pid, Status: "running", Command: p.spec.command,
		Args: p.spec.args, StartedAt: p.startedAt.UnixMilli(),
	}
	in.StdinWritable = p.stdinOpen.Load()
	p.mu.Lock()
	if p.ended {
		e := p.exitInfo()
		in.ExitCode, in.Signal, in.OOMKilled, in.EndedAt = e.ExitCode, e.Signal, e.OOMKilled, &e.EndedAt
		switch {
		case p.oom:
			in.Status = "oom_killed"
		case p.exit.Signal != 0:
			in.Status = "signaled"
		default:
			in.Status = "exited"
		}
	}
	p.mu.Unlock()
	if p.managed != nil {
		mi := p.managed.info()
		in.Managed = &mi
	}
	return in
}

func (m *managed) info() ManagedInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	mi := ManagedInfo{
		ID: m.id, Status: m.status, RestartCount: m.restarts, Restart: m.policy,
		HealthCheck: m.health, HealthStatus: m.healthStatus,
		ConsecutiveHealthFailures: m.healthFails, LastExit: m.lastExit,
	}
	if m.named {
		mi.Name = &m.id
	}
	if m.lastErr != "" {
		e := m.lastErr
		mi.LastError = &e
	}
	if !m.nextRestart.IsZero() {
		n := m.nextRestart.UnixMilli()
		mi.NextRestartAt = &n
	}
	return mi
}

// Routes adds the Processes section of the API.
func (t *Table) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/processes", t.handleStart)
	mux.HandleFunc("POST /api/v1/processes/run", t.handleRun)
	mux.HandleFunc("GET /api/v1/processes", t.handleList)
	mux.HandleFunc("GET /api/v1/processes/{id}", t.handleGet)
	mux.HandleFunc("DELETE /api/v1/processes/{id}", t.handleKill)
	mux.HandleFunc("POST /api/v1/processes/{id}/signal", t.handleSignal)
	mux.HandleFunc("POST /api/v1/processes/{id}/stdin", t.handleStdin)
	mux.HandleFunc("POST /api/v1/processes/{id}/stdin/close", t.handleStdinClose)
	mux.HandleFunc("GET /api/v1/processes/{id}/{stream}", t.handleOutput)
	mux.HandleFunc("GET /api/v1/processes/{id}/{stream}/follow", t.handleFollow)
	mux.HandleFunc("POST /api/v1/processes/{id}/restart", t.handleRestart)
}

// Start validates req and starts it, supervised when it has a name, a
// restart policy or a health check (as the SDKs document).
func (t *Table) Start(req *StartRequest) (*Process, error) {
	return t.startFrom(context.Background(), req)
}

// startFrom is Start for a request whose ids (ctx) the start's event
// carries.
func (t *Table) startFrom(ctx context.Context, req *StartRequest) (*Process, error) {
	s, err := prepare(req, t.cfg.User)
	if err != nil {
		return nil, err
	}
	if _, ok := reqid.FromContext(ctx); ok {
		l := reqid.Logger(ctx, t.log)
		s.startLog = &l
	}
	if req.Name == nil && req.Restart == nil && req.HealthCheck == nil {
		return t.start(s, nil)
	}
	m := &managed{t: t, spec: s}
	if m.policy, err = normalizeRestart(req.Restart); err != nil {
		return nil, err
	}
	m.backoff = m.policy.backoff()
	if m.health, err = normalizeHealth(req.HealthCheck); err != nil {
		return nil, err
	}
	if req.Name != nil {
		if err := validName(*req.Name); err != nil {
			return nil, err
		}
		m.id, m.named = *req.Name, true
	}
	if err := t.reserve(m); err != nil {
		return nil, err
	}
	m.mu.Lock()
	err = m.launch()
	m.mu.Unlock()
	if err != nil {
		t.mu.Lock()
		if t.byName[m.id] == m {
			delete(t.byName, m.id)
		}
		t.mu.Unlock()
		return nil, err
	}
	return m.current(), nil
}

// reserve enters m in byName under its id (a fresh one when unnamed),
// replacing a stopped supervisor of that name; an active one is a
// conflict. A supervisor's lock is never taken under t.mu (restarts take
// them the other way round), hence the check and re-check.
func (t *Table) reserve(m *managed) error {
	for {
		t.mu.Lock()
		if !m.named {
			t.nextManaged++
			m.id = "managed-" + strconv.Itoa(t.nextManaged)
		}
		old := t.byName[m.id]
		t.mu.Unlock()
		if old != nil && !old.isStopped() {
			return refuse(ErrNameInUse, "a supervised process named %s is active; kill it first", m.id)
		}
		t.mu.Lock()
		if t.byName[m.id] != old {
			t.mu.Unlock()
			continue // taken or replaced meanwhile: look again
		}
		t.byName[m.id] = m
		t.mu.Unlock()
		if old != nil {
			old.setCurrent(nil) // its last instance stays in the table by pid
		}
		return nil
	}
}

func (m *managed) isStopped() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status == mStopped
}

func (t *Table) handleStart(w http.ResponseWriter, r *http.Request) {
	var req StartRequest
	if !httpx.DecodeJSON(w, r, &req) {
		return
	}
	p, err := t.startFrom(r.Context(), &req)
	if err != nil {
		writeErr(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusCreated, p.info())
}

func (t *Table) handleList(w http.ResponseWriter, r *http.Request) {
	procs := t.list()
	out := make([]Info, 0, len(procs))
	for _, p := range procs {
		out = append(out, p.info())
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"processes": out})
}

func (t *Table) handleGet(w http.ResponseWriter, r *http.Request) {
	p, _, err := t.lookup(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, p.info())
}

// handleKill SIGKILLs the process tree; a supervised process is stopped
// for good (no restart).
func (t *Table) handleKill(w http.ResponseWriter, r *http.Request) {
	p, m, err := t.lookup(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if m != nil && m.current() == p {
		m.stopAndKill()
	} else {
		p.kill()
	}
	w.WriteHeader(http.StatusNoContent)
}

func (t *Table) handleSignal(w http.ResponseWriter, r *http.Request) {
	p, _, err := t.lookup(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	var req struct {
		Signal *int `json:"signal"`
	}
	if !httpx.DecodeJSON(w, r, &req) {
		return
	}
	if req.Signal == nil || *req.Signal < 1 || *req.Signal > 64 {
		writeErr(w, refuse(ErrBadSignal, "signal must be a number from 1 to 64"))
		return
	}
	if !p.running() {
		writeErr(w, refuse(ErrNotRunning, "process %d is not running", p.pid))
		return
	}
	// The group, as a terminal's ^C would: a `sh -c` wrapper's children
	// get it too.
	if err := p.proc.SignalGroup(syscall.Signal(*req.Signal)); err != nil {
		if err := p.proc.Signal(syscall.Signal(*req.Signal)); err != nil {
			writeErr(w, refuse(ErrNotRunning, "signal process %d: %v", p.pid, err))
			return
		}
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]bool{"success": true})
}

// handleStdin reads the whole (bounded) body before touching the process,
// so a client that sends slowly holds nothing but its own request: the
// listing, the exit path and other clients never wait for its bytes. Only
// the write itself is serialized per process, bounded by StdinTimeout.
func (t *Table) handleStdin(w http.ResponseWriter, r *http.Request) {
	p, _, err := t.lookup(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if !p.spec.stdinPipe {
		writeErr(w, refuse(ErrStdinClosed, "process %d was not started with stdin_mode pipe", p.pid))
		return
	}
	data, err := t.readStdinBody(w, r)
	if err != nil {
		writeErr(w, err)
		return
	}
	p.stdinWrite.Lock()
	defer p.stdinWrite.Unlock()
	f := p.stdinFile()
	if f == nil {
		writeErr(w, refuse(ErrStdinClosed, "stdin of process %d is closed", p.pid))
		return
	}
	_ = f.SetWriteDeadline(time.Now().Add(t.cfg.StdinTimeout))
	_, err = writerOnly{f}.Write(data)
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, os.ErrDeadlineExceeded):
		writeErr(w, refuse(ErrStdinBlocked, "the process is not reading its stdin"))
	case errors.Is(err, syscall.EPIPE), errors.Is(err, os.ErrClosed):
		writeErr(w, refuse(ErrStdinClosed, "stdin of process %d is closed", p.pid))
	default:
		writeErr(w, refuse(ErrInvalid, "stdin: %v", err))
	}
}

// readStdinBody reads a stdin request's body: at most MaxStdinBytes, all
// of it within StdinTimeout (a client that stalls mid-body is answered 408
// and holds only its own bytes read so far). On failure the deadline
// stays: the server's discard of the unread rest must not wait forever.
//
// A body over the limit is read to its end (up to stdinDiscardMax more,
// dropped as it comes) before the 413: answering while the client still
// sends makes the connection close under unread data, and the client may
// then see a reset instead of the answer.
func (t *Table) readStdinBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(t.cfg.StdinTimeout))
	data, err := io.ReadAll(io.LimitReader(r.Body, t.cfg.MaxStdinBytes+1))
	if err == nil && int64(len(data)) > t.cfg.MaxStdinBytes {
		_, err = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, stdinDiscardMax))
		tooLarge := refuse(ErrStdinTooLarge, "stdin request over %d bytes; split it", t.cfg.MaxStdinBytes)
		if err == nil {
			_ = rc.SetReadDeadline(time.Time{})
		}
		return nil, tooLarge
	}
	switch {
	case err == nil:
		_ = rc.SetReadDeadline(time.Time{})
		return data, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, refuse(ErrStdinTimeout, "the stdin body did not arrive within %v", t.cfg.StdinTimeout)
	}
	return nil, refuse(ErrInvalid, "stdin body: %v", err)
}

// stdinDiscardMax bounds what is read and dropped of an oversized stdin
// body so its client gets the 413; past it the connection is closed.
const stdinDiscardMax = 16 << 20

type writerOnly struct{ io.Writer }

func (t *Table) handleStdinClose(w http.ResponseWriter, r *http.Request) {
	p, _, err := t.lookup(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if !p.spec.stdinPipe {
		writeErr(w, refuse(ErrStdinClosed, "process %d was not started with stdin_mode pipe", p.pid))
		return
	}
	p.closeStdin()
	w.WriteHeader(http.StatusNoContent)
}

// streamFilter maps the path's stream to a log filter ("" for both).
func streamFilter(s string) (string, bool) {
	switch s {
	case "stdout":
		return Stdout, true
	case "stderr":
		return Stderr, true
	case "output":
		return "", true
	}
	return "", false
}

func (t *Table) handleOutput(w http.ResponseWriter, r *http.Request) {
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
	lines, dropped := p.out.snapshot(filter)
	texts := make([]string, len(lines))
	for i, l := range lines {
		texts[i] = l.Text
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"pid": p.pid, "lines": texts, "line_count": len(texts), "dropped_lines": dropped,
	})
}

func (t *Table) handleRestart(w http.ResponseWriter, r *http.Request) {
	p, m, err := t.lookup(r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if m != nil {
		np, err := m.restart()
		if err != nil {
			writeErr(w, err)
			return
		}
		httpx.WriteJSON(w, http.StatusOK, np.info())
		return
	}
	// A plain process: kill it and start the same command again.
	p.kill()
	select {
	case <-p.done:
	case <-time.After(killWait):
	}
	np, err := t.start(p.spec, nil)
	if err != nil {
		writeErr(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, np.info())
}
