package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sort"
	"time"
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
		srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10}
		p.track(func() {
			err := srv.Serve(ls.HTTP)
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

// Handler is the HTTP front door plus the proxy's own status route.
func (p *Proxy) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_proxy/sandboxes", p.handleSandboxes)
	mux.Handle("/", p)
	return mux
}

// handleSandboxes lists known sandboxes and their links (API key needed).
func (p *Proxy) handleSandboxes(w http.ResponseWriter, req *http.Request) {
	if _, ok := p.authenticate(req); !ok {
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
	var out []entry
	p.reg.mu.Lock()
	for id := range p.reg.known {
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
