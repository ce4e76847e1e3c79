package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/memtrim"
	"github.com/tensorlake/tl-agent/internal/netx"
	"github.com/tensorlake/tl-agent/internal/reqid"
)

// Listeners are the proxy's sockets; nil ones are not served.
type Listeners struct {
	Uplink   net.Listener
	HTTP     net.Listener
	SSH      net.Listener
	Operator net.Listener // the operator door (operator.go)
}

// Addrs are the proxy's listen addresses; an empty SSH or Operator
// address opens no such door.
type Addrs struct {
	Uplink, HTTP, SSH, Operator string
}

// Listen opens the listeners of a. uplinkTLS, when not nil, wraps the
// uplink listener (agents dial it with TLS). On error nothing stays open.
func Listen(a Addrs, uplinkTLS *tls.Config) (ls Listeners, err error) {
	defer func() {
		if err != nil {
			ls.Close()
		}
	}()
	if ls.Uplink, err = net.Listen("tcp", a.Uplink); err != nil {
		return ls, fmt.Errorf("uplink listener: %w", err)
	}
	if uplinkTLS != nil {
		ls.Uplink = tls.NewListener(ls.Uplink, uplinkTLS)
	}
	if ls.HTTP, err = net.Listen("tcp", a.HTTP); err != nil {
		return ls, fmt.Errorf("http listener: %w", err)
	}
	if a.SSH != "" {
		if ls.SSH, err = net.Listen("tcp", a.SSH); err != nil {
			return ls, fmt.Errorf("ssh listener: %w", err)
		}
	}
	if a.Operator != "" {
		if ls.Operator, err = net.Listen("tcp", a.Operator); err != nil {
			return ls, fmt.Errorf("operator listener: %w", err)
		}
	}
	return ls, nil
}

// Close closes the listeners that are open.
func (ls Listeners) Close() {
	for _, l := range []net.Listener{ls.Uplink, ls.HTTP, ls.SSH, ls.Operator} {
		if l != nil {
			l.Close()
		}
	}
}

// UplinkTLS loads the uplink's certificate and key (PEM files) into a
// server TLS config: TLS 1.2 at least, Go's default cipher suites.
func UplinkTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("uplink TLS: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Run serves until ctx ends, then closes everything and waits for it.
func (p *Proxy) Run(ctx context.Context, ls Listeners) error {
	errc := make(chan error, 4)
	// RSS back down after a burst of transfers (docs/uplink.md, "Memory
	// after work"): the agent does the same.
	p.track(func() { memtrim.New().Run(ctx) })
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
			ConnContext:       clientConnContext, // an upload's splice (splice.go)
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
	if ls.Operator != nil {
		p.serveOperator(ctx, ls.Operator, errc)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	p.Wait()
	return err
}

// serveOperator serves the operator door on ln until ctx ends.
func (p *Proxy) serveOperator(ctx context.Context, ln net.Listener, errc chan<- error) {
	srv := &http.Server{
		Handler:           p.OperatorHandler(p.OperatorOpen(ln)),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          stdlog.New(p.log.With().Str("component", "operator").Logger(), "", 0),
	}
	lim := netx.ListenWith(ln, &netx.Limiter{Total: OperatorConns}, p.log, refuseHTTP)
	p.track(func() {
		err := srv.Serve(lim)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	})
	p.track(func() {
		<-ctx.Done()
		_ = srv.Close()
	})
}

// CheckOperator says why the operator door on ln could not be used: no
// operator key, and not open on loopback.
func (p *Proxy) CheckOperator(ln net.Listener) error {
	if len(p.cfg.OperatorKeys) == 0 && !p.OperatorOpen(ln) {
		return fmt.Errorf("operator door on %s: no operator_keys in the config (or operator_open_loopback on a loopback address): nobody could use it", ln.Addr())
	}
	return nil
}

// refuseHTTP answers a connection over a cap before it is closed, so the
// client sees why. It never blocks: a fresh socket's send buffer takes it.
func refuseHTTP(c net.Conn) {
	const body = `{"error":"too many connections to the proxy from this address or in all; retry later","code":"TOO_MANY_CONNECTIONS"}` + "\n"
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(body))+"\r\n\r\n"+body)
}

// Handler is the HTTP front door plus the proxy's own status route. Every
// request gets its ids first (reqid.Middleware): logged with each of its
// events, passed on to the sandbox, returned to the client.
func (p *Proxy) Handler() http.Handler {
	own := http.NewServeMux()
	own.HandleFunc("GET /_proxy/sandboxes", p.handleSandboxes)
	mux := http.NewServeMux()
	// The proxy's own path, for every method, so a wrong one is 405
	// with Allow (httpx.Routes) and never goes on to a sandbox.
	mux.Handle("/_proxy/sandboxes", httpx.Routes(own))
	mux.Handle("/", p)
	return reqid.Middleware(p.met.instrumentFront(mux, p.routeKind))
}

// handleSandboxes lists known sandboxes and their links (API key needed);
// a scoped key lists only the sandboxes it may reach.
func (p *Proxy) handleSandboxes(w http.ResponseWriter, req *http.Request) {
	r, routeErr := p.selectRoute(req)
	a := p.authenticateRequest(req, cookieRoute(req, r, routeErr))
	if a.refusal != "" {
		httpx.WriteError(w, http.StatusForbidden, "ORIGIN_REFUSED", a.refusal)
		return
	}
	scope, ok := a.scope, a.ok
	if !ok {
		httpx.WriteError(w, http.StatusUnauthorized, "UNAUTHORIZED", "missing or invalid API key")
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"sandboxes": p.reg.Snapshot(scope.allows)})
}
