package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/uplink"
)

// The platform's lifecycle calls on the operator door (docs/lifecycle.md):
// POST /sandboxes/{id}/prepare, /resume and /upgrade, GET
// /sandboxes/{id}/lifecycle.
// Each is one lifecycle stream to the sandbox's agent (a kind no user
// route opens), under the door's credential, one call per sandbox at a
// time, bounded in bytes both ways and in time.

// LifecycleCallTimeout bounds one call through the door: the agent's
// longest prepare (60 s) and its answer.
const LifecycleCallTimeout = 90 * time.Second

// lifecycleCalls is the set of sandboxes with a call in flight.
type lifecycleCalls struct {
	mu   sync.Mutex
	busy map[string]bool
}

var lifecycleBusy = &lifecycleCalls{busy: map[string]bool{}}

func (l *lifecycleCalls) take(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.busy[id] {
		return false
	}
	l.busy[id] = true
	return true
}

func (l *lifecycleCalls) release(id string) {
	l.mu.Lock()
	delete(l.busy, id)
	l.mu.Unlock()
}

// lifecycleRoutes adds the calls to the operator door's mux.
func (p *Proxy) lifecycleRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /sandboxes/{id}/prepare", p.lifecycleHandler("prepare"))
	mux.HandleFunc("POST /sandboxes/{id}/resume", p.lifecycleHandler("resume"))
	mux.HandleFunc("POST /sandboxes/{id}/upgrade", p.lifecycleHandler("upgrade")) // docs/upgrade.md
	mux.HandleFunc("GET /sandboxes/{id}/lifecycle", p.lifecycleHandler("status"))
}

func (p *Proxy) lifecycleHandler(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if !ValidSandboxID(id) || !p.reg.Known(id) {
			httpx.WriteError(w, http.StatusNotFound, "UNKNOWN_SANDBOX", fmt.Sprintf("no sandbox %q", id))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, uplink.MaxLifecycleBody))
		if err != nil {
			httpx.WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", fmt.Sprintf("invalid JSON body: over %d bytes, or unreadable", uplink.MaxLifecycleBody))
			return
		}
		if len(bytes.TrimSpace(body)) == 0 {
			body = nil
		} else if !json.Valid(body) {
			httpx.WriteError(w, http.StatusBadRequest, "INVALID_REQUEST", "invalid JSON body: send one JSON object")
			return
		}
		if !lifecycleBusy.take(id) {
			httpx.WriteError(w, http.StatusConflict, "BUSY", "another lifecycle call is running for this sandbox; retry when it has answered")
			return
		}
		defer lifecycleBusy.release(id)
		ctx, cancel := context.WithTimeout(r.Context(), LifecycleCallTimeout)
		defer cancel()
		start := time.Now()
		ans, err := p.lifecycleCall(ctx, id, uplink.LifecycleCall{Op: op, Request: body})
		if err != nil {
			status, code := http.StatusBadGateway, "AGENT_UNAVAILABLE"
			switch {
			case errors.Is(err, ErrNotConnected):
				status, code = http.StatusServiceUnavailable, "SANDBOX_NOT_CONNECTED"
			case ctx.Err() != nil || isTimeout(err):
				status, code = http.StatusGatewayTimeout, "AGENT_TIMEOUT"
			}
			p.log.Warn().Str("sandbox", id).Str("op", op).Err(err).Msg("lifecycle call failed")
			httpx.WriteError(w, status, code, fmt.Sprintf("lifecycle %s: %v", op, err))
			return
		}
		p.log.Info().Str("sandbox", id).Str("op", op).Int("status", ans.Status).Dur("took", time.Since(start)).Msg("lifecycle call")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(ans.Status)
		_, _ = w.Write(append(ans.Body, '\n'))
	}
}

// lifecycleCall sends one call on a lifecycle stream and reads the answer
// (bounded; an answer that is not a valid one is the agent's fault: 502).
func (p *Proxy) lifecycleCall(ctx context.Context, id string, call uplink.LifecycleCall) (uplink.LifecycleAnswer, error) {
	var ans uplink.LifecycleAnswer
	if p.reg.WaitLink(ctx, id, LinkWait) == nil {
		return ans, ErrNotConnected
	}
	c, err := p.reg.Open(ctx, id, uplink.Header{Kind: uplink.KindLifecycle})
	if err != nil {
		return ans, err
	}
	defer c.Close()
	d, _ := ctx.Deadline()
	_ = c.SetDeadline(d)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(c).Encode(call); err != nil {
		return ans, err
	}
	data, err := io.ReadAll(io.LimitReader(c, uplink.MaxLifecycleBody+1))
	if err != nil {
		return ans, err
	}
	if len(data) > uplink.MaxLifecycleBody {
		return ans, fmt.Errorf("the agent's answer is over %d bytes", uplink.MaxLifecycleBody)
	}
	if err := json.Unmarshal(data, &ans); err != nil || ans.Status < 200 || ans.Status > 599 || !json.Valid(ans.Body) {
		return ans, fmt.Errorf("the agent's answer is not a lifecycle answer")
	}
	return ans, nil
}
