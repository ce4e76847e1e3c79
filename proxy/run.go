package proxy

import (
	"context"
	"errors"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/tensorlake/tl-agent/internal/netx"
)

// Listeners are the proxy's sockets; nil ones are not served.
type Listeners struct {
	Uplink net.Listener
	HTTP   net.Listener
	SSH    net.Listener
}

// Run serves until ctx ends, then closes everything and waits for it.
func (p *Proxy) Run(ctx context.Context, ls Listeners) error {
	errc := make(chan error, 3)
	if ls.Uplink != nil {
		p.track(func() { errc <- p.ServeUplinks(ctx, ls.Uplink) })
	}
	if ls.HTTP != nil {
		lim := p.cfg.Limits
		// No ReadTimeout or WriteTimeout: they bound a whole request, and
		// would cut run's event stream, PTY WebSockets, tunnels and slow
		// big uploads. Idle and header timeouts, the body progress rule
		// (bounds.go) and TCP keep-alive (net.Listen's default, 15 s)
		// bound what a silent or vanished client holds.
		srv := &http.Server{
			Handler:           p.Handler(),
			ReadHeaderTimeout: lim.HTTPHeaderTimeout,
			IdleTimeout:       lim.HTTPIdleTimeout,
			MaxHeaderBytes:    64 << 10,
			// net/http's own complaints (a panicking handler, a bad
			// request line) go to the structured log, not bare stderr.
			ErrorLog: stdlog.New(p.log.With().Str("component", "http").Logger(), "", 0),
		}
		ln := netx.ListenWith(ls.HTTP, &netx.Limiter{Total: lim.HTTPConns, PerSource: lim.HTTPConnsPerSource}, p.log, refuseHTTP)
		p.track(func() {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		})
		p.track(func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			_ = srv.Close()
		})
	}
	if ls.SSH != nil && p.serveSSH != nil {
		p.track(func() { errc <- p.serveSSH(ctx, ls.SSH) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	p.Wait()
	return err
}

// refuseHTTP answers a connection over a cap before it is closed, so the
// client sees why. It never blocks: a fresh socket's send buffer takes it.
func refuseHTTP(c net.Conn) {
	const body = `{"error":"too many connections to the proxy from this address or in all; retry later","code":"TOO_MANY_CONNECTIONS"}` + "\n"
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body)
}

// Handler is the HTTP front door plus the proxy's own status route.
func (p *Proxy) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_proxy/sandboxes", p.handleSandboxes)
	mux.Handle("/", p)
	return mux
}

// handleSandboxes lists known sandboxes and their links (API key needed);
// a scoped key lists only the sandboxes it may reach.
func (p *Proxy) handleSandboxes(w http.ResponseWriter, req *http.Request) {
	_, scope, ok := p.authenticate(req)
	if !ok {
		writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", "missing or invalid API key")
		return
	}
	type entry struct {
		ID           string `json:"id"`
		Connected    bool   `json:"connected"`
		Since        int64  `json:"connected_since,omitempty"`
		Remote       string `json:"remote,omitempty"`
		AgentVersion string `json:"agent_version,omitempty"`
	}
	out := []entry{}
	p.reg.mu.Lock()
	for id := range p.reg.known {
		if !scope.allows(id) {
			continue // a scoped key sees only its sandboxes
		}
		e := entry{ID: id}
		if l := p.reg.links[id]; l != nil && !l.sess.IsClosed() {
			e.Connected, e.Since, e.Remote, e.AgentVersion = true, l.Since.UnixMilli(), l.Remote, l.AgentVersion
		}
		out = append(out, e)
	}
	p.reg.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	w.Header().Set("Content-Type", "application/json")
	writeJSON(w, map[string]any{"sandboxes": out})
}
