package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/services"
)

// serveControl serves the operator's door: a root-only unix socket with
// GET /status (what `tl-agent status` prints), GET /metrics (Prometheus
// text, what `tl-agent metrics` prints), the log level (loglevel.go),
// POST /hooks/{phase}, the lifecycle calls
// (/lifecycle/{prepare,resume,upgrade,status}, docs/lifecycle.md), POST
// /upgrade (docs/upgrade.md) and
// /debug/pprof/. It is the
// way an operator who execs into a sandbox sees what the agent is doing;
// nothing on it is reachable through the uplink.
func (a *Agent) serveControl(ctx context.Context) {
	path := a.cfg.ControlSocket
	if path == "" {
		return
	}
	ln, err := listenPrivateUnix(path)
	if err != nil {
		a.log.Error().Err(err).Str("path", path).Msg("control socket")
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteJSON(w, http.StatusOK, a.Status())
	})
	mux.HandleFunc("POST /hooks/{phase}", a.handleHooks)
	a.logLevelRoutes(mux)
	mux.HandleFunc("POST /lifecycle/{op}", a.handleLifecycle)
	mux.HandleFunc("POST /upgrade", func(w http.ResponseWriter, r *http.Request) { // tl-agent upgrade
		r.SetPathValue("op", "upgrade")
		a.handleLifecycle(w, r)
	})
	mux.HandleFunc("GET /lifecycle/{op}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("op") != "status" { // a GET never changes the sandbox
			httpx.WriteError(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "prepare and resume are POST")
			return
		}
		a.handleLifecycle(w, r)
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_ = a.writeMetrics(w)
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

// listenPrivateUnix listens on a unix socket at path that only root can
// connect to, with no window where anyone else could, and without
// touching the umask: the umask is process-wide, and changing it while
// another goroutine forks gives that child the wrong one (a main command
// once started with 0177). fchmod on the socket's fd does not reach the
// file bind creates, so the socket is bound inside a fresh 0700 folder
// beside path (unreachable to others whatever its own mode), made 0600
// there, and renamed onto path: rename is atomic and keeps the socket
// bound.
func listenPrivateUnix(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	private, err := os.MkdirTemp(dir, ".s") // mode 0700
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The name moves: the listener must not unlink tmp (gone) at close,
	// and the caller removes path itself.
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	// A stale socket from a previous run is replaced by the rename.
	if err := unix.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, &os.LinkError{Op: "rename", Old: tmp, New: path, Err: err}
	}
	return ln, nil
}

// handleHooks runs a phase's hooks now and answers how each ended: the
// operator's (and later the lifecycle API's) way to run pre-snapshot.
func (a *Agent) handleHooks(w http.ResponseWriter, r *http.Request) {
	phase := r.PathValue("phase")
	if !services.ValidPhase(phase) {
		httpx.WriteError(w, http.StatusBadRequest, "INVALID_PHASE",
			fmt.Sprintf("unknown hook phase %q: one of %s", phase, strings.Join(services.Phases, ", ")))
		return
	}
	res := []services.HookResult{}
	if a.hooks != nil {
		res = append(res, a.hooks.Run(r.Context(), phase)...)
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"phase": phase, "hooks": res})
}
