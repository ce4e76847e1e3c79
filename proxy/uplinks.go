package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/backoff"
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
// as for an agent that dials in. It returns at once: the dialer is one of
// the proxy's goroutines, which Run (and Wait) wait for. Call it before
// Run, with Run's context.
func (p *Proxy) ConnectAgent(ctx context.Context, network, addr string) {
	if ctx.Err() != nil {
		return // the proxy is stopping: no new work
	}
	p.track(func() { p.connectAgent(ctx, network, addr) })
}

func (p *Proxy) connectAgent(ctx context.Context, network, addr string) {
	bo := dialBackoff()
	for ctx.Err() == nil {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		c, err := d.DialContext(dctx, network, addr)
		cancel()
		if err == nil {
			start := time.Now()
			p.serveLink(ctx, c, true)
			if time.Since(start) > 10*time.Second {
				bo.Reset() // it was up: retry quickly
			}
		} else {
			p.log.Warn().Err(err).Str("addr", addr).Msg("dial agent")
		}
		t := time.NewTimer(bo.Next())
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// dialBackoff paces the --connect dialer: 100 ms doubling to 5 s, reset
// after a link that stayed up.
func dialBackoff() backoff.Backoff {
	return backoff.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second}
}

// serveUplink serves an agent that dialed the uplink port.
func (p *Proxy) serveUplink(ctx context.Context, c net.Conn) { p.serveLink(ctx, c, false) }

// serveLink runs the handshake and the link on c. dialed says the proxy
// dialed the agent itself (--connect): whoever answers at that address is
// the agent it meant, so the base token's quiet window does not apply (a
// stranger who connects to a listen-mode agent can make it forget its link
// secret; that must not lock the real proxy out).
func (p *Proxy) serveLink(ctx context.Context, c net.Conn, dialed bool) {
	defer c.Close()
	// A peer silent in the handshake must not hold the proxy's shutdown
	// for the handshake timeout.
	cut := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { c.Close(); close(cut) })
	defer func() {
		if !stop() {
			<-cut // it ran: wait for it, so Run returns with nothing left running
		}
	}()
	log := p.log.With().Str("remote", c.RemoteAddr().String()).Logger()
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true)
		_ = tcp.SetKeepAlivePeriod(uplink.TCPKeepAlive)
	}
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	hello, err := uplink.ReadHello(c)
	if err != nil {
		p.handshake(hsBadHello)
		log.Warn().Err(err).Msg("bad uplink hello")
		_ = uplink.WriteWelcome(c, uplink.Welcome{Code: uplink.CodeBadHandshake, Error: "malformed hello"})
		return
	}
	log = log.With().Str("sandbox", hello.SandboxID).Int("protocol", hello.Version).Logger()
	refuse := func(code, msg string) {
		log.Warn().Str("code", code).Msg("uplink refused: " + msg)
		_ = uplink.WriteWelcomeV(c, hello.Version, uplink.Welcome{Code: code, Error: msg})
	}
	var register func(*Link) error
	l := &Link{ID: hello.SandboxID, Remote: c.RemoteAddr().String(), Since: time.Now(), Protocol: hello.Version}
	switch hello.Version {
	case uplink.Version:
		register = p.authV2(c, hello, l, log, dialed)
	case uplink.VersionLegacy:
		register = p.authV1(hello, l, log, refuse)
	default:
		p.handshake(hsBadVersion)
		refuse(uplink.CodeBadVersion, "protocol version mismatch: proxy speaks "+strconv.Itoa(uplink.VersionLegacy)+" and "+strconv.Itoa(uplink.Version)+", agent "+strconv.Itoa(hello.Version))
		return
	}
	if register == nil {
		p.handshake(hsBadCredential)
		return // refused, and answered
	}
	// yamux writes through a gate opened once the welcome is out (or the
	// link failed); outside Coalesce, which keeps its writev fast path.
	gate := &welcomeFirst{Conn: uplink.Coalesce(c), sent: make(chan struct{})}
	defer gate.open()
	sess, err := yamux.Client(gate, uplink.MuxConfig(p.log))
	if err != nil {
		p.handshake(hsError)
		return
	}
	defer sess.Close()
	l.sess = sess
	if err := register(l); err != nil {
		code, result := uplink.CodeDuplicate, hsDuplicate
		if errors.Is(err, errResume) {
			code, result = uplink.CodeResumeRefused, hsResumeRefused
		}
		p.handshake(result)
		refuse(code, err.Error())
		return
	}
	defer p.reg.unregister(l)
	if p.beforeWelcome != nil {
		p.beforeWelcome(l)
	}
	// The welcome goes out after registration so that a request sent as
	// soon as the agent sees it connected finds the link. A request the
	// registration woke may open its stream before the welcome is written:
	// its frames wait at the gate, so they follow the welcome.
	err = uplink.WriteWelcomeV(c, hello.Version, uplink.Welcome{OK: true})
	gate.open()
	if err != nil {
		p.handshake(hsError)
		return
	}
	p.handshake(hsOK)
	_ = c.SetDeadline(time.Time{})
	log.Info().Str("agent_version", l.AgentVersion).Bool("resumed", l.Resumed).Msg("uplink connected")
	// The link owns the goroutines that drain the agent's streams: they
	// end with the session, and the link is not over until they have.
	var streams sync.WaitGroup
	defer func() { sess.Close(); streams.Wait() }()
	streams.Add(1)
	go func() {
		defer streams.Done()
		refuseAgentStreams(sess, &streams, log, func() {
			if l.Protocol == uplink.Version {
				p.reg.departed(l)
				log.Info().Msg("the agent said goodbye: a reboot may use the base token at once")
			}
		})
	}()
	select {
	case <-sess.CloseChan():
		log.Warn().Msg("uplink lost")
	case <-ctx.Done():
	}
}

// welcomeFirst holds the link's yamux writes until open: a registered
// link is visible before its welcome is written, and a stream opened in
// that window must not reach the agent ahead of the welcome (it would read
// the frame as a broken handshake, drop the link and redial). The wait is
// bounded by the handshake deadline on the welcome's write.
type welcomeFirst struct {
	net.Conn
	sent chan struct{}
	once sync.Once
}

func (w *welcomeFirst) Write(p []byte) (int, error) {
	<-w.sent
	return w.Conn.Write(p)
}

func (w *welcomeFirst) open() { w.once.Do(func() { close(w.sent) }) }

// ReadConn: only writes wait at the gate (uplink.ReadThrough: a spliced
// download reads the socket underneath).
func (w *welcomeFirst) ReadConn() net.Conn { return w.Conn }

// WriteConn is the connection under the gate once it is open
// (uplink.WriteThrough: a spliced upload writes the socket underneath).
func (w *welcomeFirst) WriteConn() (net.Conn, bool) {
	select {
	case <-w.sent:
		return w.Conn, true
	default:
		return nil, false
	}
}

// handshake counts one uplink handshake's result.
func (p *Proxy) handshake(result string) { p.met.handshakes.WithLabelValues(result).Inc() }

// authV1 checks a version 1 hello (the token in clear). It returns the
// registration to run, or nil after answering a refusal. An unknown id and
// a wrong token get the same answer.
func (p *Proxy) authV1(hello uplink.Hello, l *Link, log zerolog.Logger, refuse func(code, msg string)) func(*Link) error {
	if !uplink.TokenEqual(hello.Token, string(p.reg.tokenOrFake(hello.SandboxID))) || !p.reg.Known(hello.SandboxID) {
		refuse(uplink.CodeBadToken, uplink.BadCredentials)
		return nil
	}
	log.Warn().Str("agent_version", hello.AgentVersion).Msg("protocol v1 uplink: the agent sent its token in clear; upgrade it (v1 is accepted for this release only)")
	l.AgentVersion = hello.AgentVersion
	return p.reg.registerV1
}

// authV2 runs the v2 challenge-response (the proxy proves first). It
// returns the registration to run, or nil when the handshake failed (the
// peer has been answered).
func (p *Proxy) authV2(c net.Conn, hello uplink.Hello, l *Link, log zerolog.Logger, dialed bool) func(*Link) error {
	key, ok := p.reg.v2Key(hello)
	if !ok {
		log.Info().Msg("uplink resume refused: unknown link secret")
		_ = uplink.RefuseChallenge(c, uplink.CodeResumeRefused, "unknown link secret: use the next secret or the token")
		return nil
	}
	agentVersion, next, err := uplink.ProxyChallenge(c, hello, key)
	if err != nil {
		log.Warn().Err(err).Str("key", hello.Key).Msg("uplink authentication failed")
		return nil
	}
	l.AgentVersion = agentVersion
	resumed := hello.Key == uplink.KeyLink
	l.Resumed = resumed
	return func(l *Link) error { return p.reg.registerV2(l, resumed, dialed, key, next) }
}

// agentStreamsMax bounds the streams an agent has opened and the proxy is
// still draining. The proxy opens every stream; a legitimate agent opens
// none. Unaccepted, each would sit in yamux's backlog with up to 256 KiB
// buffered (256 of them took the proxy from 7 to 161 MB).
const agentStreamsMax = 16

// refuseAgentStreams accepts every stream the agent opens and closes it at
// once, reading and discarding what the agent sends until its FIN, so
// nothing is buffered. An agent with more than agentStreamsMax of them
// open loses its link. The one stream an agent may open, a goodbye at its
// orderly shutdown (uplink.KindBye), calls bye. Each stream's goroutine is
// counted in wg, which already counts the caller.
func refuseAgentStreams(sess *yamux.Session, wg *sync.WaitGroup, log zerolog.Logger, bye func()) {
	var open atomic.Int32
	var warned atomic.Bool // once per link: an agent must not flood the log either
	for {
		s, err := sess.AcceptStream()
		if err != nil {
			return
		}
		if open.Add(1) > agentStreamsMax {
			log.Warn().Int("max", agentStreamsMax).Msg("the agent holds too many streams it opened: closing its uplink")
			sess.Close()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			_ = s.SetReadDeadline(time.Now().Add(2 * time.Second))
			h, err := uplink.ReadHeader(s)
			_ = s.SetReadDeadline(time.Time{})
			if err == nil && h.Kind == uplink.KindBye {
				bye()
			} else if !warned.Swap(true) {
				log.Warn().Msg("the agent opened a stream: refused (only the proxy opens streams)")
			}
			_ = s.Close()
			_, _ = io.Copy(io.Discard, s)
		}()
	}
}
