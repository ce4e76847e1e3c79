package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/httpx"
)

// serveControl serves the operator's door: a root-only unix socket with
// GET /status (what `tl-agent status` prints) and /debug/pprof/. It is the
// way an operator who execs into a sandbox sees what the agent is doing;
// nothing on it is reachable through the uplink.
func (a *Agent) serveControl(ctx context.Context) {
	path := a.cfg.ControlSocket
	if path == "" {
		return
	}
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	_ = os.Remove(path) // stale from a previous run
	// Create the socket with no access for group and other from the start,
	// so there is no window where it is world-connectable.
	old := umask(0o177)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		a.log.Error().Err(err).Str("path", path).Msg("control socket")
		return
	}
	_ = os.Chmod(path, 0o600)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, a.Status())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		<-ctx.Done()
		_ = srv.Close()
	}()
	a.log.Info().Str("path", path).Msg("control socket listening")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error().Err(err).Msg("control socket stopped")
	}
	_ = os.Remove(path)
}

// Status is the agent's state as the operator sees it.
func (a *Agent) Status() map[string]any {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := map[string]any{
		"version":     a.version,
		"sandbox_id":  a.cfg.SandboxID,
		"pid":         os.Getpid(),
		"uptime_secs": int64(time.Since(a.started).Seconds()),
		"uplink":      a.link.snapshot(),
		"goroutines":  runtime.NumGoroutine(),
		"heap_bytes":  ms.HeapAlloc,
		"sys_bytes":   ms.Sys,
	}
	if a.procs != nil {
		running, total := a.procs.Counts()
		st["processes"] = map[string]int{"running": running, "total": total}
	}
	if a.extra != nil {
		for k, v := range a.extra() {
			st[k] = v
		}
	}
	return st
}

func umask(m int) int { return unix.Umask(m) }
