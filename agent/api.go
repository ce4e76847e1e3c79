package agent

import (
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/services"
)

// Capability is a part of the API served by its own package (pty sessions,
// processes, files, tunnels). The agent owns the router; a capability adds
// its routes with Go's method-and-pattern syntax.
type Capability interface {
	Routes(mux *http.ServeMux)
}

// ProcessCounter is what /api/v1/info needs from the process table.
type ProcessCounter interface {
	Counts() (running, total int)
}

// routes is the API router. A request no route takes gets the spec's
// JSON error: 405 with Allow for a known path, else 404 (httpx.Routes).
func (a *Agent) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/health", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, map[string]bool{"healthy": true})
	})
	mux.HandleFunc("GET /api/v1/info", a.handleInfo)
	for _, c := range a.caps {
		c.Routes(mux)
	}
	return mux
}

func (a *Agent) handleInfo(w http.ResponseWriter, r *http.Request) {
	running, total := 0, 0
	if a.procs != nil {
		running, total = a.procs.Counts()
	}
	info := map[string]any{
		"version":           a.version,
		"uptime_secs":       int64(time.Since(a.started).Seconds()),
		"running_processes": running,
		"total_processes":   total,
		"services_ready":    true,
		"services":          []services.State{},
		"last_activity_at":  nil,
	}
	if t := a.activity.Last(); !t.IsZero() {
		info["last_activity_at"] = t.UTC().Format(time.RFC3339Nano)
	}
	if a.boot != nil {
		st := a.boot.Status()
		info["services_ready"], info["services"] = st.Ready, st.Services
	}
	httpx.WriteJSON(w, http.StatusOK, info)
}

// streamListener hands uplink API streams to an http.Server as if they were
// accepted TCP connections.
type streamListener struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newStreamListener() *streamListener {
	return &streamListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the server, or closes it if the server has stopped.
func (l *streamListener) push(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return uplinkAddr{} }

type uplinkAddr struct{}

func (uplinkAddr) Network() string { return "uplink" }
func (uplinkAddr) String() string  { return "uplink" }
