// Package sshd is the agent's SSH server, built on gliderlabs/ssh: login
// shells and exec through the user's shell, PTYs, the sftp subsystem
// (served by sftpd, which also serves the proxy's bare sftp streams),
// and every forward (through package forward). It serves connections that
// arrive over the uplink, where the proxy has already authenticated the
// user, and optionally a TCP port inside the sandbox that checks the
// sandbox user's ~/.ssh/authorized_keys.
//
// gliderlabs/ssh gives the connection plumbing; sessions are handled here
// directly on x/crypto channels, because its own session type gets several
// things wrong that OpenSSH clients depend on (see session.go).
package sshd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/netx"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/sftpd"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Config is what the SSH server needs.
type Config struct {
	// User is the sandbox user everything runs as (tl-user).
	User string
	// Listen is an optional TCP address inside the sandbox (e.g.
	// 0.0.0.0:22) that serves clients with keys from the user's
	// ~/.ssh/authorized_keys. Empty: uplink only.
	Listen string
	// SFTP serves the sftp subsystem; nil: sessions asking for it fail.
	SFTP *sftpd.Server
	// HandshakeTimeout bounds the key exchange plus authentication.
	HandshakeTimeout time.Duration
	// MaxSessions bounds concurrent session channels over all connections.
	MaxSessions int
	// MaxConns bounds concurrent connections over the uplink.
	MaxConns int
	// MaxListenConns bounds concurrent connections on the in-sandbox
	// listener, apart from MaxConns: code inside the sandbox can open
	// these freely, and must not take the slots of users coming through
	// the proxy.
	MaxListenConns int
	// MaxChannelsPerConn, MaxUnstartedPerConn and UnstartedTimeout bound
	// the channels of each connection (limits.go).
	MaxChannelsPerConn  int
	MaxUnstartedPerConn int
	UnstartedTimeout    time.Duration
}

// Defaults for the zero fields of Config.
const (
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultMaxSessions      = 512
	DefaultMaxConns         = 256
	DefaultMaxListenConns   = 64
)

// Server is the agent's SSH server. It owns its connections' goroutines:
// Close ends every connection and waits for their handlers.
type Server struct {
	cfg    Config
	log    zerolog.Logger
	reaper *supervisor.Reaper
	signer gossh.Signer
	uplink *ssh.Server // NoClientAuth: the proxy authenticated the user
	direct *ssh.Server // authorized_keys; nil without cfg.Listen
	fwd    *forward.SSHForwards
	slots  chan struct{}

	mu       sync.Mutex
	closing  bool              // guarded by mu
	conns    map[net.Conn]bool // guarded by mu; true: from the listener
	nListen  int               // guarded by mu; listener connections in conns
	served   int               // guarded by mu; connections ever taken, for the status
	ln       net.Listener      // guarded by mu
	wg       sync.WaitGroup    // connections and the accept loop
	sessions sync.WaitGroup    // session handlers and their input copies; Add only under mu while !closing
	channels channelCounts     // channels opened, by type (both servers)
}

// New returns a server with a fresh in-memory ed25519 host key. The proxy
// does not pin the agent's key: the uplink is already trusted.
func New(cfg Config, log zerolog.Logger, reaper *supervisor.Reaper) (*Server, error) {
	if cfg.User == "" {
		cfg.User = identity.DefaultUser
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.MaxListenConns <= 0 {
		cfg.MaxListenConns = DefaultMaxListenConns
	}
	if cfg.MaxChannelsPerConn <= 0 {
		cfg.MaxChannelsPerConn = DefaultMaxChannelsPerConn
	}
	if cfg.MaxUnstartedPerConn <= 0 {
		cfg.MaxUnstartedPerConn = DefaultMaxUnstartedPerConn
	}
	if cfg.UnstartedTimeout <= 0 {
		cfg.UnstartedTimeout = DefaultUnstartedTimeout
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	s := &Server{
		cfg: cfg, log: log.With().Str("component", "sshd").Logger(), reaper: reaper, signer: signer,
		slots: make(chan struct{}, cfg.MaxSessions), conns: map[net.Conn]bool{},
	}
	s.fwd = forward.NewSSHForwards(s.log)
	s.uplink = s.newGlider(false)
	if cfg.Listen != "" {
		s.direct = s.newGlider(true)
	}
	s.channels = countChannels(s.uplink, channelCounts{})
	if s.direct != nil {
		countChannels(s.direct, s.channels)
	}
	return s, nil
}

// newGlider builds one gliderlabs server; withKeys selects authorized_keys
// authentication (the in-sandbox TCP listener) over none (uplink streams).
func (s *Server) newGlider(withKeys bool) *ssh.Server {
	g := &ssh.Server{
		HostSigners: []ssh.Signer{s.signer},
		Version:     "tl-agent",
		ChannelHandlers: map[string]ssh.ChannelHandler{
			"session":                        s.handleSession,
			"direct-tcpip":                   s.limited(forward.DirectTCPIP),
			"direct-streamlocal@openssh.com": s.limited(forward.DirectStreamLocal),
		},
		RequestHandlers: forward.RequestHandlers(),
		ConnCallback:    s.connCallback,
	}
	g.ServerConfigCallback = func(ctx ssh.Context) *gossh.ServerConfig {
		c := &gossh.ServerConfig{Config: gossh.Config{Ciphers: Ciphers}}
		if !withKeys {
			c.NoClientAuth = true
			c.NoClientAuthCallback = func(gossh.ConnMetadata) (*gossh.Permissions, error) { return nil, nil }
		}
		// x/crypto calls this once an attempt is decided, and not for a
		// public-key query (a client asking whether a key would do,
		// without a signature): only success lifts the deadline, so a
		// stranger who merely names a listed key is still dropped.
		c.AuthLogCallback = func(_ gossh.ConnMetadata, _ string, err error) {
			if err == nil {
				authenticated(ctx)
			}
		}
		return c
	}
	if withKeys {
		g.PublicKeyHandler = func(ctx ssh.Context, key ssh.PublicKey) bool {
			return ctx.User() == s.cfg.User && s.keyAuthorized(key)
		}
	}
	return g
}

// Ciphers are the server's ciphers: AES-GCM only, so OpenSSH clients
// (which prefer chacha20-poly1305, then AES-CTR with an HMAC) settle on the
// cipher Go runs fastest with AES instructions (proxy/sshfront.go has the
// figures).
var Ciphers = []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}

// ctxKey is the context key of the raw connection, so authentication can
// lift the handshake deadline.
type ctxKey struct{}

// connCallback runs before the handshake: it arms the handshake deadline
// (gliderlabs v0.3.8 has none) and attaches the per-connection state that
// forwards and agent sockets hang off.
func (s *Server) connCallback(ctx ssh.Context, c net.Conn) net.Conn {
	_ = c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	ctx.SetValue(ctxKey{}, c)
	ctx.SetValue(limitsKey{}, &connLimits{maxOpen: s.cfg.MaxChannelsPerConn, maxUnstarted: s.cfg.MaxUnstartedPerConn})
	u, err := identity.Lookup(s.cfg.User)
	if err != nil {
		s.log.Warn().Err(err).Msg("ssh: sandbox user unknown")
		u = nil
	}
	if !s.fwd.Attach(ctx, u) {
		return nil // closing: gliderlabs closes c
	}
	return ownDeadlines{c}
}

// ownDeadlines hides the connection's deadlines from gliderlabs, whose
// serverConn resets them to "none" on every read when no idle timeout is
// set, which would erase the handshake deadline.
type ownDeadlines struct{ net.Conn }

func (ownDeadlines) SetDeadline(time.Time) error      { return nil }
func (ownDeadlines) SetReadDeadline(time.Time) error  { return nil }
func (ownDeadlines) SetWriteDeadline(time.Time) error { return nil }

// authenticated lifts the handshake deadline once the client is in
// (authentication succeeded, signature checked).
func authenticated(ctx ssh.Context) {
	if c, ok := ctx.Value(ctxKey{}).(net.Conn); ok {
		_ = c.SetDeadline(time.Time{})
	}
}

// ServeConn serves one SSH connection that arrived over the uplink (a
// stream of kind ssh) and returns when it has ended. peer says who the
// proxy authenticated. Over the connection cap, or closing, it refuses
// the stream with the reason (streams.Server).
func (s *Server) ServeConn(ctx context.Context, c net.Conn, peer streams.Peer) error {
	if !s.track(c, false) {
		s.log.Warn().Str("user", peer.User).Msg("ssh connection refused: closing or at the connection limit")
		c.Close()
		return fmt.Errorf("the SSH server is shutting down or at its limit of %d connections", s.cfg.MaxConns)
	}
	defer s.untrack(c)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	log := s.log.With().Str("user", peer.User).Str("remote", peer.Remote).Logger()
	start := time.Now()
	s.uplink.HandleConn(c)
	log.Info().Dur("duration", time.Since(start)).Msg("ssh connection ended")
	return nil
}

// track registers a connection within its own limit: listener and
// uplink connections are counted apart.
func (s *Server) track(c net.Conn, listener bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if listener && s.nListen >= s.cfg.MaxListenConns || !listener && len(s.conns)-s.nListen >= s.cfg.MaxConns {
		return false
	}
	s.conns[c] = listener
	s.served++
	if listener {
		s.nListen++
	}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	if s.conns[c] {
		s.nListen--
	}
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Listen starts the in-sandbox TCP listener when configured.
func (s *Server) Listen() error {
	if s.direct == nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("ssh listen %s: %w", s.cfg.Listen, err)
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return errors.New("ssh server closed")
	}
	s.ln = ln
	s.wg.Add(1)
	s.mu.Unlock()
	s.log.Info().Str("addr", ln.Addr().String()).Msg("ssh listening inside the sandbox")
	go func() {
		defer s.wg.Done()
		s.acceptLoop(ln)
	}()
	return nil
}

// acceptLoop serves the listener until it is closed. Other accept errors
// (EMFILE, ENFILE, ECONNABORTED) are retried after a pause that grows to
// a second, so running out of fds once does not end the listener.
func (s *Server) acceptLoop(ln net.Listener) {
	var lastRefusal time.Time
	for {
		// Temporary errors (EMFILE...) are retried with back-off as at
		// every door; anything else means the listener is gone.
		c, err := netx.Accept(context.Background(), ln, s.log)
		if err != nil {
			return
		}
		if !s.track(c, true) {
			// At most one line a second: a flood must not flood the log.
			if time.Since(lastRefusal) > time.Second {
				lastRefusal = time.Now()
				s.log.Warn().Str("remote", c.RemoteAddr().String()).Int("limit", s.cfg.MaxListenConns).Msg("ssh connection refused: at the listener's connection limit")
			}
			c.Close()
			continue
		}
		go func() {
			defer s.untrack(c)
			s.direct.HandleConn(c)
		}()
	}
}

// Addr is the in-sandbox listener's address, or nil.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Close stops the listener, ends every connection and waits for their
// handlers, sessions (whose programs get SIGHUP, as at a hang-up) and
// forwards. Safe to call twice.
func (s *Server) Close() {
	s.mu.Lock()
	s.closing = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.sessions.Wait()
	s.fwd.Close() // last: the connections are gone, so are their channels
}

// startSession registers a session handler, or a goroutine of one; false
// once closing. Each true is matched by s.sessions.Done.
func (s *Server) startSession() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.sessions.Add(1)
	return true
}

// Stats are the open SSH connections, for the operator's status.
type Stats struct {
	Channels            map[string]int64 `json:"channels"`             // channels clients opened, by type
	Connections         int              `json:"connections"`          // all open connections
	ConnectionsTotal    int              `json:"connections_total"`    // served since start
	ListenerConnections int              `json:"listener_connections"` // of them, via the in-sandbox listener
}

// Stats reports open SSH connections for the operator's status.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Connections: len(s.conns), ListenerConnections: s.nListen, ConnectionsTotal: s.served, Channels: s.channels.snapshot()}
}
