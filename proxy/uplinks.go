package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tensorlake/tl-agent/internal/netx"
	"github.com/tensorlake/tl-agent/uplink"
)

// handshakeTimeout bounds an agent's hello: a client that connects and
// says nothing must not hold a goroutine.
const handshakeTimeout = 10 * time.Second

// ServeUplinks accepts agents on ln until ctx ends. Temporary accept
// errors (EMFILE and the like) are retried with back-off for as long as
// the proxy runs; connections over the caps are closed at once.
func (p *Proxy) ServeUplinks(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	lim := &netx.Limiter{Total: p.cfg.Limits.UplinkConns, PerSource: p.cfg.Limits.UplinkConnsPerSource}
	for {
		c, err := netx.Accept(ctx, ln, p.log)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("uplink accept: %w", err)
		}
		release, ok := lim.Acquire(c.RemoteAddr())
		if !ok {
			lim.LogRefusal(p.log, c.RemoteAddr(), "uplink refused: at the connection limit")
			c.Close()
			continue
		}
		p.track(func() { defer release(); p.serveUplink(ctx, c) })
	}
}

// ConnectAgent keeps an uplink to an agent in listen mode until ctx ends,
// redialing with capped back-off when it drops; the handshake is the same
// as for an agent that dials in.
func (p *Proxy) ConnectAgent(ctx context.Context, network, addr string) {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		c, err := d.DialContext(dctx, network, addr)
		cancel()
		if err == nil {
			start := time.Now()
			p.serveUplink(ctx, c)
			if time.Since(start) > 10*time.Second {
				wait = 100 * time.Millisecond // it was up: retry quickly
			}
		} else {
			p.log.Warn().Err(err).Str("addr", addr).Msg("dial agent")
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

func (p *Proxy) serveUplink(ctx context.Context, c net.Conn) {
	defer c.Close()
	log := p.log.With().Str("remote", c.RemoteAddr().String()).Logger()
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
		_ = tcp.SetKeepAlivePeriod(5 * time.Second)
	}
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	hello, err := uplink.ReadHello(c)
	if err != nil {
		log.Warn().Err(err).Msg("bad uplink hello")
		_ = uplink.WriteWelcome(c, uplink.Welcome{Code: uplink.CodeBadHandshake, Error: "malformed hello"})
		return
	}
	log = log.With().Str("sandbox", hello.SandboxID).Logger()
	refuse := func(code, msg string) {
		log.Warn().Str("code", code).Msg("uplink refused: " + msg)
		_ = uplink.WriteWelcome(c, uplink.Welcome{Code: code, Error: msg})
	}
	if hello.Version != uplink.Version {
		refuse(uplink.CodeBadVersion, "protocol version mismatch: proxy speaks "+strconv.Itoa(uplink.Version)+", agent "+strconv.Itoa(hello.Version))
		return
	}
	want, ok := p.reg.token(hello.SandboxID)
	if !ok {
		refuse(uplink.CodeUnknown, "unknown sandbox id")
		return
	}
	if !uplink.TokenEqual(hello.Token, want) {
		refuse(uplink.CodeBadToken, "wrong token for this sandbox")
		return
	}
	sess, err := yamux.Client(uplink.Coalesce(c), uplink.MuxConfig(p.log))
	if err != nil {
		return
	}
	defer sess.Close()
	l := &Link{ID: hello.SandboxID, Remote: c.RemoteAddr().String(), AgentVersion: hello.AgentVersion, Since: time.Now(), sess: sess}
	if err := p.reg.register(l); err != nil {
		refuse(uplink.CodeDuplicate, err.Error())
		return
	}
	defer p.reg.unregister(l)
	// The welcome goes out after registration so that a request sent as
	// soon as the agent sees it connected finds the link. yamux has not
	// written anything yet: its first frames follow the welcome.
	if err := uplink.WriteWelcome(c, uplink.Welcome{OK: true}); err != nil {
		return
	}
	_ = c.SetDeadline(time.Time{})
	log.Info().Str("agent_version", hello.AgentVersion).Msg("uplink connected")
	select {
	case <-sess.CloseChan():
		log.Warn().Msg("uplink lost")
	case <-ctx.Done():
	}
}
