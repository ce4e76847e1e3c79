package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tensorlake/tl-agent/internal/backoff"
	"github.com/tensorlake/tl-agent/internal/netx"
	"github.com/tensorlake/tl-agent/uplink"
)

// Reconnect back-off: the first retry comes well under a second (a proxy
// restart should cost users little), doubling to a cap of a few seconds so
// a long outage is neither hammered nor waited out for minutes.
const (
	backoffMin = 200 * time.Millisecond
	backoffMax = 5 * time.Second
	// handshakeTimeout bounds dial plus handshake; a proxy that accepts and
	// says nothing must not wedge the loop.
	handshakeTimeout = 10 * time.Second
)

// redialBackoff is the uplink's: jittered in [d/2, d], so sandboxes cut
// off by one proxy restart do not all redial in the same instant.
func redialBackoff() backoff.Backoff {
	return backoff.Backoff{Initial: backoffMin, Max: backoffMax, Jitter: true}
}

// linkState is what the operator sees of the uplink.
type linkState struct {
	mu         sync.Mutex
	state      string // connecting, connected, refused, disconnected
	since      time.Time
	connects   int
	reconnects int
	upFor      time.Duration // connected time of the links that ended
	lastErr    string
	remote     string
}

func (l *linkState) set(state, remote string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == "connected" && state != "connected" {
		l.upFor += time.Since(l.since)
	}
	if state == "connected" {
		if !l.since.IsZero() {
			l.reconnects++
		}
		l.connects++
		l.since = time.Now()
		l.remote = remote
	}
	l.state = state
	if err != nil {
		l.lastErr = err.Error()
	}
}

func (l *linkState) snapshot() UplinkStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := UplinkStatus{State: l.state, Connects: l.connects, Reconnects: l.reconnects, LastError: l.lastErr, Remote: l.remote}
	up := l.upFor
	if l.state == "connected" {
		up += time.Since(l.since)
	}
	u.ConnectedSecs = up.Seconds()
	if !l.since.IsZero() {
		u.ConnectedSince = l.since.UTC().Format(time.RFC3339)
	}
	return u
}

// dialLoop keeps one uplink to the proxy until ctx ends.
func (a *Agent) dialLoop(ctx context.Context) {
	bo := redialBackoff()
	tlsConf, err := a.tlsConfig()
	if err != nil {
		// A broken CA file is a configuration error that retrying will not
		// fix; still keep serving nothing rather than exit: PID 1 stays up.
		a.log.Error().Err(err).Msg("uplink TLS configuration")
		<-ctx.Done()
		return
	}
	defer a.early.drop() // shut down before the first attempt took it
	for ctx.Err() == nil {
		a.link.set("connecting", "", nil)
		var up bool
		if e := a.early.take(ctx); e != nil {
			up, err = a.runEarly(ctx, e)
		} else {
			var conn net.Conn
			if conn, err = a.dial(ctx, tlsConf); err == nil {
				up, err = a.runUplink(ctx, conn)
			}
		}
		if up {
			bo.Reset()
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errRetryNow) {
			continue // a stale link secret was dropped, or a pause ended the link
		}
		var ref *uplink.RefusedError
		if errors.As(err, &ref) {
			a.link.set("refused", "", err)
			a.log.Error().Str("code", ref.Code).Str("reason", ref.Msg).Msg("proxy refused uplink")
		} else {
			a.link.set("disconnected", "", err)
			a.log.Warn().Err(err).Msg("uplink down")
		}
		d := bo.Next()
		a.log.Debug().Dur("retry_in", d).Msg("uplink retry")
		if !a.sleepUnlessPaused(ctx, d) {
			bo.Reset() // a pause ended the wait: the network may be back
		}
	}
}

// sleepUnlessPaused waits d, or less when a pause is detected meanwhile (a
// back-off counted across a freeze is stale). It reports whether it slept
// the whole d.
func (a *Agent) sleepUnlessPaused(ctx context.Context, d time.Duration) bool {
	gaps, unsub := a.pause.Subscribe()
	defer unsub()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
		return true
	case <-gaps:
	}
	return false
}

func (a *Agent) dial(ctx context.Context, tlsConf *tls.Config) (net.Conn, error) {
	return dialProxy(ctx, a.cfg.ProxyAddr, tlsConf)
}

// dialProxy dials the proxy's uplink port (and does TLS with tlsConf when
// not nil), within handshakeTimeout.
func dialProxy(ctx context.Context, addr string, tlsConf *tls.Config) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: uplink.TCPKeepAlive}
	c, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetNoDelay(true) // keystrokes must not wait for Nagle
	}
	if tlsConf == nil {
		return c, nil
	}
	tc := tls.Client(c, tlsConf)
	if err := tc.HandshakeContext(dctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return tc, nil
}

func (a *Agent) tlsConfig() (*tls.Config, error) { return tlsConfigFor(a.cfg) }

// tlsConfigFor is the uplink's TLS configuration (nil without --tls).
func tlsConfigFor(cfg Config) (*tls.Config, error) {
	if !cfg.TLS {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.ServerName}
	if conf.ServerName == "" {
		host, _, _ := net.SplitHostPort(cfg.ProxyAddr)
		conf.ServerName = host
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no certificates", cfg.CAFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

// errRetryNow ends a link whose successor should be dialed without a
// back-off: a link secret the proxy no longer holds (the next attempt uses
// the next secret or the token), or a detected pause.
var errRetryNow = errors.New("retry at once")

// runUplink does the handshake on conn and serves its streams until the
// link dies. up reports whether the handshake succeeded.
func (a *Agent) runUplink(ctx context.Context, conn net.Conn) (up bool, err error) {
	return a.runUplinkHook(ctx, conn, func() {})
}

// runUplinkHook is runUplink calling authed once the handshake is over.
func (a *Agent) runUplinkHook(ctx context.Context, conn net.Conn, authed func()) (up bool, err error) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	err = a.handshake(conn)
	authed()
	if err != nil {
		return false, err
	}
	return a.serveLink(ctx, conn)
}

// serveLink serves the streams of conn, an authenticated uplink, until the
// link dies; it closes conn.
func (a *Agent) serveLink(ctx context.Context, conn net.Conn) (up bool, err error) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	// The proxy opens streams; to yamux the agent is the server side.
	sess, err := yamux.Server(uplink.Coalesce(conn), uplink.MuxConfig(a.log))
	if err != nil {
		return false, err
	}
	defer sess.Close()
	a.takeLink(sess)
	remote := conn.RemoteAddr().String()
	a.link.set("connected", remote, nil)
	a.log.Info().Str("remote", remote).Msg("uplink connected")
	stop := context.AfterFunc(ctx, func() { sayBye(sess); sess.Close() })
	defer stop()
	// After a pause (a frozen cgroup, a stopped VM) the link is most likely
	// dead on the proxy's side: redial now rather than wait out keepalives.
	gaps, unsub := a.pause.Subscribe()
	defer unsub()
	paused := make(chan struct{})
	go func() {
		select {
		case g := <-gaps:
			a.log.Warn().Dur("paused", g.Length).Msg("sandbox was paused: redialing the uplink")
			close(paused)
			sess.Close()
		case <-sess.CloseChan():
		}
	}()
	a.serveSession(ctx, sess)
	if ctx.Err() != nil {
		return true, ctx.Err()
	}
	select {
	case <-paused:
		return true, errRetryNow
	default:
	}
	if a.wasKicked(sess) { // a resume: a new identity, or a pause it announced
		return true, errRetryNow
	}
	return true, errors.New("uplink session closed")
}

// byeTimeout bounds the goodbye at shutdown.
const byeTimeout = time.Second

// sayBye tells the proxy the agent is shutting down in order, and waits
// (at most byeTimeout) for it to close the stream, which it does once it
// has noted the goodbye.
func sayBye(sess *yamux.Session) {
	st, err := sess.OpenStream()
	if err != nil {
		return
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(byeTimeout))
	if uplink.WriteHeader(st, uplink.Header{Kind: uplink.KindBye}) == nil {
		_, _ = io.Copy(io.Discard, st)
	}
}

// handshake proves the agent to its peer with protocol v2, resuming with
// the newest link secret it holds, else the token; the token itself never
// crosses the wire.
func (a *Agent) handshake(conn net.Conn) error {
	id, token := a.identity()
	key, link := a.secrets.pick([]byte(token))
	next, err := uplink.AgentHandshake(conn, uplink.AgentAuth{
		SandboxID: id, Key: key, Link: link, AgentVersion: a.version,
	})
	return a.handshakeDone(key, link, next, err)
}

// handshakeDone keeps the link secrets up to date after a handshake made
// with key (a link secret when link) that returned next and err.
func (a *Agent) handshakeDone(key []byte, link bool, next []byte, err error) error {
	if err == nil {
		a.secrets.set(next)
		return nil
	}
	var ref *uplink.RefusedError
	if link && errors.As(err, &ref) && (ref.Code == uplink.CodeResumeRefused || errors.Is(err, uplink.ErrPeerProof)) {
		a.secrets.drop(key)
		a.log.Info().Str("code", ref.Code).Msg("link secret not accepted: retrying with the next secret or the token")
		return errRetryNow
	}
	if next != nil && !errors.As(err, &ref) {
		// Lost after the agent proved itself: the proxy may have adopted
		// next. Try it first, then what was used.
		a.secrets.push(next)
	}
	return err
}

// linkSecrets are the secrets the agent can resume with, newest first: the
// one derived at a welcome that may have been lost, and the last one
// confirmed. They live in memory only: a rebooted agent uses its token.
type linkSecrets struct {
	mu   sync.Mutex
	keys [][]byte
}

func (l *linkSecrets) pick(token []byte) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.keys) == 0 {
		return token, false
	}
	return l.keys[0], true
}

func (l *linkSecrets) set(k []byte) {
	l.mu.Lock()
	l.keys = [][]byte{k}
	l.mu.Unlock()
}

func (l *linkSecrets) clear() {
	l.mu.Lock()
	l.keys = nil
	l.mu.Unlock()
}

// all is a copy of the secrets, newest first (a live upgrade hands them over).
func (l *linkSecrets) all() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([][]byte, 0, len(l.keys))
	for _, k := range l.keys {
		out = append(out, append([]byte(nil), k...))
	}
	return out
}

// restore takes the secrets a live upgrade handed over (at most 2).
func (l *linkSecrets) restore(keys [][]byte) {
	l.mu.Lock()
	l.keys = append([][]byte(nil), keys[:min(len(keys), 2)]...)
	l.mu.Unlock()
}

func (l *linkSecrets) push(k []byte) {
	l.mu.Lock()
	l.keys = append([][]byte{k}, l.keys...)
	if len(l.keys) > 2 {
		l.keys = l.keys[:2]
	}
	l.mu.Unlock()
}

func (l *linkSecrets) drop(k []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.keys {
		if uplink.MACEqual(x, k) {
			l.keys = append(l.keys[:i:i], l.keys[i+1:]...)
			return
		}
	}
}

// listenHandshakes bounds listen-mode connections still in their
// handshake: a stranger may connect (anyone who can reach the socket), so
// unauthenticated peers must not take unbounded goroutines. Each holds a
// slot for at most handshakeTimeout.
const listenHandshakes = 8

// listenLoop accepts uplinks from a runtime that dials in (listen mode).
// Each accepted connection runs the same handshake as a dialed one, so the
// connector must prove it knows the secret before the agent proves or
// serves anything. One link is live at a time: a newer authenticated
// connector replaces the older one (a restarted proxy must not wait for
// its dead predecessor's keepalive to expire).
func (a *Agent) listenLoop(ctx context.Context) error {
	ln, err := a.upg.listener(a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.Listen, err)
	}
	a.log.Info().Str("addr", a.cfg.Listen).Msg("uplink listening")
	a.link.set("listening", "", nil)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, listenHandshakes)
	for {
		c, err := netx.Accept(ctx, ln, a.log)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("uplink accept: %w", err)
		}
		select {
		case slots <- struct{}{}:
		default:
			a.log.Warn().Str("remote", c.RemoteAddr().String()).Msg("uplink connection refused: too many handshakes in progress")
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := a.runUplinkSlot(ctx, c, slots)
			if ctx.Err() != nil {
				return
			}
			a.log.Warn().Err(err).Str("remote", c.RemoteAddr().String()).Msg("uplink down")
			if !a.linkLive() { // a failed stranger or a replaced link leaves the live one's state
				a.link.set("listening", "", err)
			}
		}()
	}
}

// runUplinkSlot is runUplink that frees its handshake slot once the
// handshake is over.
func (a *Agent) runUplinkSlot(ctx context.Context, c net.Conn, slots chan struct{}) (bool, error) {
	var once sync.Once
	free := func() { once.Do(func() { <-slots }) }
	defer free()
	return a.runUplinkHook(ctx, c, free)
}

// linkLive reports whether the agent has a live uplink session.
func (a *Agent) linkLive() bool {
	a.liveMu.Lock()
	defer a.liveMu.Unlock()
	return a.live != nil && !a.live.IsClosed()
}

// takeLink makes sess the agent's one live link, closing the previous one.
func (a *Agent) takeLink(sess *yamux.Session) {
	a.liveMu.Lock()
	old := a.live
	a.live = sess
	a.liveMu.Unlock()
	if old != nil && old != sess {
		a.log.Warn().Msg("a newer authenticated uplink replaces the live one")
		old.Close()
	}
}

func listen(spec string) (net.Listener, error) {
	kind, addr, _ := strings.Cut(spec, ":")
	switch kind {
	case "unix":
		ln, err := listenPrivateUnix(addr)
		if err != nil {
			return nil, err
		}
		return &unlinkListener{Listener: ln, path: addr}, nil
	case "tcp":
		return net.Listen("tcp", addr)
	case "vsock":
		return listenVsock(addr)
	}
	return nil, fmt.Errorf("unknown listen kind %q", kind)
}

// unlinkListener removes its socket at Close, at the path it was renamed to.
type unlinkListener struct {
	net.Listener
	path string
	once sync.Once
}

func (l *unlinkListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
}
