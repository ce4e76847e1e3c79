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
	"github.com/tensorlake/tl-agent/internal/config"
	"github.com/tensorlake/tl-agent/internal/netx"
	"github.com/tensorlake/tl-agent/internal/sshalgo"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/sftpd"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Config is what the SSH server needs. Zero bounds take the defaults of
// DefaultConfig; a negative one is refused (Validate).
type Config struct {
	// User is the sandbox user everything runs as, resolved once by the
	// caller (required).
	User *identity.User
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
	// HostKey is the host key to serve with; nil: a fresh one. A live
	// upgrade passes the predecessor's (Server.HostKey), so clients of
	// the listener see no key change.
	HostKey *ed25519.PrivateKey // a pointer: Config stays comparable
}

// Defaults for the zero fields of Config.
const (
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultMaxSessions      = 512
	DefaultMaxConns         = 256
	DefaultMaxListenConns   = 64
)

// DefaultConfig returns the default bounds (no user, no listener, no
// SFTP: the caller sets those).
func DefaultConfig() Config {
	return Config{
		HandshakeTimeout: DefaultHandshakeTimeout, MaxSessions: DefaultMaxSessions,
		MaxConns: DefaultMaxConns, MaxListenConns: DefaultMaxListenConns,
		MaxChannelsPerConn: DefaultMaxChannelsPerConn, MaxUnstartedPerConn: DefaultMaxUnstartedPerConn,
		UnstartedTimeout: DefaultUnstartedTimeout,
	}
}

// Validate refuses a config without a user, and a negative bound or
// timeout; zero takes the default.
func (c Config) Validate() error {
	if c.User == nil {
		return errors.New("ssh config: User is required")
	}
	err := config.NonNegative(
		config.Duration("HandshakeTimeout", c.HandshakeTimeout), config.Int("MaxSessions", c.MaxSessions),
		config.Int("MaxConns", c.MaxConns), config.Int("MaxListenConns", c.MaxListenConns),
		config.Int("MaxChannelsPerConn", c.MaxChannelsPerConn), config.Int("MaxUnstartedPerConn", c.MaxUnstartedPerConn),
		config.Duration("UnstartedTimeout", c.UnstartedTimeout),
	)
	if err != nil {
		return fmt.Errorf("ssh config: %w", err)
	}
	return nil
}

// withDefaults fills the zero fields of a valid config.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	for _, f := range []struct{ v, d *int }{
		{&c.MaxSessions, &d.MaxSessions}, {&c.MaxConns, &d.MaxConns}, {&c.MaxListenConns, &d.MaxListenConns},
		{&c.MaxChannelsPerConn, &d.MaxChannelsPerConn}, {&c.MaxUnstartedPerConn, &d.MaxUnstartedPerConn},
	} {
		if *f.v == 0 {
			*f.v = *f.d
		}
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.UnstartedTimeout == 0 {
		c.UnstartedTimeout = d.UnstartedTimeout
	}
	return c
}

// Server is the agent's SSH server. It owns its connections' goroutines:
// Close ends every connection and waits for their handlers.
type Server struct {
	cfg    Config
	log    zerolog.Logger
	reaper *supervisor.Reaper
	signer *lazySigner
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

// New returns a server with a fresh in-memory ed25519 host key, or the
// reason cfg is not valid. The proxy does not pin the agent's key: the
// uplink is already trusted.
func New(cfg Config, log zerolog.Logger, reaper *supervisor.Reaper) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg: cfg, log: log.With().Str("component", "sshd").Logger(), reaper: reaper, signer: newLazySigner(cfg.HostKey),
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
		// One line per failed connection, at info, with a bounded reason.
		ConnectionFailedCallback: func(c net.Conn, err error) {
			s.log.Info().Str("remote", c.RemoteAddr().String()).Bool("listener", withKeys).
				Str("reason", sshalgo.Reason(err)).Msg("ssh handshake failed")
		},
	}
	g.ServerConfigCallback = func(ctx ssh.Context) *gossh.ServerConfig {
		c := &gossh.ServerConfig{Config: sshalgo.Config()} // internal/sshalgo: what and why
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
			return ctx.User() == s.cfg.User.Name && s.keyAuthorized(key)
		}
	}
	return g
}

// ctxKey is the context key of the raw connection, so authentication can
// lift the handshake deadline.
type ctxKey struct{}

// connCallback runs before the handshake: it arms the handshake deadline
// (gliderlabs v0.3.8 has none) and attaches the per-connection state that
// forwards and agent sockets hang off.
func (s *Server) connCallback(ctx ssh.Context, c net.Conn) net.Conn {
	_ = c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	ctx.SetValue(ctxKey{}, c)
	if pc, ok := c.(peerConn); ok {
		streams.SetPeer(ctx, pc.peer)
	}
	ctx.SetValue(limitsKey{}, &connLimits{maxOpen: s.cfg.MaxChannelsPerConn, maxUnstarted: s.cfg.MaxUnstartedPerConn})
	if !s.fwd.Attach(ctx, s.cfg.User) {
		return nil // closing: gliderlabs closes c
	}
	return ownDeadlines{c}
}

// peerConn carries an uplink connection's peer into its SSH context, so
// the connection's sessions log its request ids (connLog).
type peerConn struct {
	net.Conn
	peer streams.Peer
}

// connLog is the server's logger with the request ids of the connection
// ctx belongs to, when the proxy named them.
func (s *Server) connLog(ctx ssh.Context) zerolog.Logger {
	if p, ok := streams.PeerFrom(ctx); ok {
		return p.LogIDs(s.log)
	}
	return s.log
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
	log := peer.Log(s.log)
	start := time.Now()
	s.uplink.HandleConn(peerConn{Conn: c, peer: peer})
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
