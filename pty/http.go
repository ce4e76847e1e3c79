package pty

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sort"
	"strings"

	"github.com/coder/websocket"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/reqid"
	"github.com/tensorlake/tl-agent/launch"
)

// Routes adds the PTY API to mux (agent.Capability).
func (m *Manager) Routes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/v1/pty", m.handleCreate)
	mux.HandleFunc("GET /api/v1/pty", m.handleList)
	mux.HandleFunc("GET /api/v1/pty/{id}", m.handleGet)
	mux.HandleFunc("POST /api/v1/pty/{id}/resize", m.handleResize)
	mux.HandleFunc("DELETE /api/v1/pty/{id}", m.handleKill)
	mux.HandleFunc("GET /api/v1/pty/{id}/ws", m.handleWS)
}

type createRequest struct {
	Command    string            `json:"command"`
	Args       []string          `json:"args"`
	Env        map[string]string `json:"env"`
	WorkingDir string            `json:"working_dir"`
	Rows       *int              `json:"rows"`
	Cols       *int              `json:"cols"`
	User       identity.Spec     `json:"user"`
}

// Default terminal size when the request gives none.
const (
	defaultRows = 24
	defaultCols = 80
)

func (m *Manager) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if !httpx.DecodeJSON(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.Command) == "" {
		httpx.WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", "command is required")
		return
	}
	u := m.cfg.User
	if !req.User.IsZero() || u == nil {
		var err error
		if u, err = launch.Resolve(req.User); err != nil {
			status, code := createError(err)
			httpx.WriteError(w, status, code, err.Error())
			return
		}
	}
	rows, cols := defaultRows, defaultCols
	if req.Rows != nil {
		rows = *req.Rows
	}
	if req.Cols != nil {
		cols = *req.Cols
	}
	sp := startSpec{command: req.Command, args: req.Args, env: req.Env, workingDir: req.WorkingDir, user: u}
	sp.rows, sp.cols = clampSize(rows, cols)
	s, err := m.create(sp)
	if err != nil {
		status, code := createError(err)
		if status >= 500 {
			log := reqid.Logger(r.Context(), m.log)
			log.Error().Err(err).Msg("pty create failed")
		}
		httpx.WriteError(w, status, code, err.Error())
		return
	}
	// The request's event, with its ids; the session's later events
	// (idle kill, exit) carry the session id, which this one names too.
	log := reqid.Logger(r.Context(), s.log)
	log.Info().Str("command", sp.command).Str("user", sp.user.Name).Int("rows", int(sp.rows)).Int("cols", int(sp.cols)).Msg("pty session started")
	httpx.WriteJSON(w, http.StatusCreated, map[string]string{"session_id": s.id, "token": s.token})
}

// createError maps a create failure to the API's status and code.
func createError(err error) (int, string) {
	switch {
	case errors.Is(err, ErrTooManySessions):
		return http.StatusTooManyRequests, "TOO_MANY_SESSIONS"
	case errors.Is(err, ErrClosing):
		return http.StatusServiceUnavailable, "SHUTTING_DOWN"
	case errors.Is(err, ErrFrozen):
		return http.StatusServiceUnavailable, "UPGRADING"
	}
	// Why a command cannot start: the launcher's one set of codes
	// (docs/processes.md), shared with the process API.
	if status, code, ok := launch.APIError(err); ok {
		return status, code
	}
	if errors.Is(err, errStart) {
		return http.StatusBadRequest, "START_FAILED"
	}
	return http.StatusInternalServerError, "PTY_UNAVAILABLE"
}

func (m *Manager) handleList(w http.ResponseWriter, r *http.Request) {
	sessions := m.list()
	out := make([]Info, 0, len(sessions))
	for _, s := range sessions {
		out = append(out, s.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt < out[j].CreatedAt })
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"sessions": out})
}

// lookup finds the session of the request's {id}, or answers 404.
func (m *Manager) lookup(w http.ResponseWriter, r *http.Request) *Session {
	s, err := m.get(r.PathValue("id"))
	if err != nil {
		httpx.WriteError(w, http.StatusNotFound, "SESSION_NOT_FOUND", "pty session "+r.PathValue("id")+" not found")
		return nil
	}
	return s
}

func (m *Manager) handleGet(w http.ResponseWriter, r *http.Request) {
	if s := m.lookup(w, r); s != nil {
		httpx.WriteJSON(w, http.StatusOK, s.info())
	}
}

func (m *Manager) handleResize(w http.ResponseWriter, r *http.Request) {
	s := m.lookup(w, r)
	if s == nil {
		return
	}
	var req struct {
		Rows *int `json:"rows"`
		Cols *int `json:"cols"`
	}
	if !httpx.DecodeJSON(w, r, &req) {
		return
	}
	if req.Rows == nil || req.Cols == nil {
		httpx.WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", "rows and cols are both required")
		return
	}
	if err := s.resize(*req.Rows, *req.Cols); err != nil {
		if errors.Is(err, errEnded) {
			httpx.WriteError(w, http.StatusConflict, "SESSION_ENDED", "pty session has ended")
			return
		}
		if errors.Is(err, ErrFrozen) {
			httpx.WriteError(w, http.StatusServiceUnavailable, "UPGRADING", err.Error())
			return
		}
		httpx.WriteError(w, http.StatusInternalServerError, "RESIZE_FAILED", err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (m *Manager) handleKill(w http.ResponseWriter, r *http.Request) {
	if s := m.lookup(w, r); s != nil {
		s.kill(EndDeleted, "deleted through the API")
		w.WriteHeader(http.StatusNoContent)
	}
}

// handleWS attaches a WebSocket client. The token is the credential (the
// proxy has already checked the API key), so any Origin is accepted: a
// browser terminal on another origin must work, and a cross-site page
// cannot know the token.
func (m *Manager) handleWS(w http.ResponseWriter, r *http.Request) {
	s := m.lookup(w, r)
	if s == nil {
		return
	}
	tok := r.Header.Get("X-PTY-Token")
	if tok == "" {
		tok = r.URL.Query().Get("token")
	}
	if !s.checkToken(tok) {
		httpx.WriteError(w, http.StatusForbidden, "INVALID_TOKEN", "missing or invalid pty token: send X-PTY-Token or ?token=")
		return
	}
	if !headerHas(r.Header, "Connection", "upgrade") || !headerHas(r.Header, "Upgrade", "websocket") {
		httpx.WriteError(w, http.StatusUpgradeRequired, "UPGRADE_REQUIRED", "this endpoint is a WebSocket")
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{s: s, remote: r.RemoteAddr, ctx: ctx, cancel: cancel, wake: make(chan struct{}, 1),
		log: reqid.Logger(r.Context(), s.log).With().Str("client", r.RemoteAddr).Logger()}
	m.mu.Lock()
	closing, frozen := m.closing, m.frozen
	if !closing && !frozen {
		m.wg.Add(1)
	}
	m.mu.Unlock()
	if closing || frozen {
		cancel()
		err := ErrClosing
		if frozen {
			err = ErrFrozen
		}
		status, code := createError(err)
		httpx.WriteError(w, status, code, err.Error())
		return
	}
	defer m.wg.Done()
	if err := s.attach(c); err != nil {
		cancel()
		status, code := http.StatusTooManyRequests, "TOO_MANY_CLIENTS"
		if errors.Is(err, ErrFrozen) {
			status, code = createError(err)
		}
		httpx.WriteError(w, status, code, err.Error())
		return
	}
	defer s.detach(c)
	conn, err := websocket.Accept(bufferedHijack{w}, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		cancel()
		return // Accept has answered
	}
	conn.SetReadLimit(maxMessage)
	c.conn = conn
	c.log.Debug().Msg("pty client attached")
	m.serveClient(c)
	c.log.Debug().Msg("pty client detached")
}

// serveClient runs c's goroutines until the connection ends.
func (m *Manager) serveClient(c *client) {
	done := make(chan struct{}, 2)
	go func() { c.writeLoop(); done <- struct{}{} }()
	go func() { c.pingLoop(); done <- struct{}{} }()
	code, reason := c.readLoop()
	if code != 0 {
		c.log.Info().Int("code", int(code)).Str("reason", reason).Msg("closing pty client")
		_ = c.conn.Close(code, reason)
	}
	c.cancel()
	<-done
	<-done
	_ = c.conn.CloseNow()
}

// bufferedHijack gives the WebSocket a write buffer that holds a whole
// output message. net/http hands a hijacker a 4 KiB writer, so a 32 KiB
// message went out as two writes, i.e. two uplink frames; with this, one.
// It costs 32 KiB per attached client, nothing per idle session.
type bufferedHijack struct{ http.ResponseWriter }

func (b bufferedHijack) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(b.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if brw.Writer.Buffered() == 0 {
		brw.Writer = bufio.NewWriterSize(c, 1+frameData+16)
	}
	return c, brw, nil
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
