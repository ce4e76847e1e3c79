package agent

import (
	"context"
	"net"
	"runtime"
	"time"

	"github.com/tensorlake/tl-agent/uplink"
)

// EarlyUplink is the first uplink, dialed and authenticated while the
// agent is still starting: the dial (and TLS) and the handshake's two
// round trips run beside provisioning and the building of the
// capabilities instead of after them (docs/supervisor.md, "Start-up").
// The proxy counts the sandbox connected at its welcome; a request sent
// before Run serves the link waits for the agent's answer (yamux holds
// the stream, bounded by its accept backlog) instead of being refused.
// The agent's first dial attempt is this one: a failure is handled as
// that attempt's failure (logged, backed off).
type EarlyUplink struct {
	done chan struct{}
	conn net.Conn
	key  []byte // the secret the handshake used: the token
	next []byte // the link secret it derived
	err  error
	// How long the dial and the whole handshake took from DialEarly, for
	// the log.
	dialed, authed time.Duration
}

// DialEarly starts the first uplink's dial and handshake with cfg's
// identity, or returns nil when the agent does not dial (listen mode).
// Hand the result to New (Parts.Uplink).
func DialEarly(cfg Config, version string) *EarlyUplink {
	if cfg.Listen != "" || cfg.ProxyAddr == "" {
		return nil
	}
	tlsConf, err := tlsConfigFor(cfg)
	if err != nil {
		return nil // dialLoop reports it
	}
	e := &EarlyUplink{done: make(chan struct{}), key: []byte(cfg.Token)}
	start := time.Now()
	go func() {
		defer close(e.done)
		e.conn, e.err = dialProxy(context.Background(), cfg.ProxyAddr, tlsConf)
		e.dialed = time.Since(start)
		if e.err != nil {
			return
		}
		_ = e.conn.SetDeadline(time.Now().Add(handshakeTimeout))
		e.next, e.err = uplink.AgentHandshake(e.conn, uplink.AgentAuth{
			SandboxID: cfg.SandboxID, Key: e.key, AgentVersion: version,
		})
		e.authed = time.Since(start)
		if e.err != nil {
			e.conn.Close()
		}
	}()
	// Let the dial start now: a new goroutine waits behind the running one
	// until another P's thread exists to take it (0.1-3 ms measured at
	// start, before the agent has spare threads).
	runtime.Gosched()
	return e
}

// settledOr returns a channel closed once the handshake is over (or
// failed), or after d, whichever comes first; closed at once for nil e.
func (e *EarlyUplink) settledOr(d time.Duration) <-chan struct{} {
	ch := make(chan struct{})
	if e == nil || e.done == nil {
		close(ch)
		return ch
	}
	done := e.done
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
		}
		close(ch)
	}()
	return ch
}

// take returns the early uplink once its handshake is over, the first
// time only (nil after, and for a nil e). ctx ending first drops it.
func (e *EarlyUplink) take(ctx context.Context) *EarlyUplink {
	if e == nil || e.done == nil {
		return nil
	}
	select {
	case <-e.done:
	case <-ctx.Done():
		e.drop()
		return nil
	}
	got := *e
	e.done = nil
	return &got
}

// drop closes an early uplink nobody took (a shutdown during the start).
func (e *EarlyUplink) drop() {
	if e == nil || e.done == nil {
		return
	}
	done := e.done
	e.done = nil
	go func() {
		<-done // bounded by handshakeTimeout
		if e.err == nil {
			e.conn.Close()
		}
	}()
}

// runEarly serves the early uplink as the first dial attempt's link.
func (a *Agent) runEarly(ctx context.Context, e *EarlyUplink) (up bool, err error) {
	a.log.Debug().Err(e.err).Dur("dialed", e.dialed).Dur("authenticated", e.authed).Msg("early uplink")
	if e.conn == nil { // the dial failed
		return false, e.err
	}
	if err := a.handshakeDone(e.key, false, e.next, e.err); err != nil {
		return false, err // conn closed by DialEarly
	}
	return a.serveLink(ctx, e.conn)
}
