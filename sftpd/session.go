package sftpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/config"
	"github.com/tensorlake/tl-agent/internal/sftpframe"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// The agent serves SFTP two ways, both through Server.Serve: bare sftp
// streams from the proxy's front door (ServeConn, uplink kind sftp: the
// proxy speaks SSH to the user itself, so the agent's SSH server is not
// involved at all) and the `sftp` subsystem of the agent's own SSH server
// (package sshd, for `ssh` through the agent's server or its in-sandbox
// listener).

// Config is what the SFTP server needs.
type Config struct {
	// User is the sandbox user sessions run as, resolved once by the
	// caller (required).
	User *identity.User
	// Exe is the agent's own binary, re-executed as the sftp-server
	// ("": /proc/self/exe).
	Exe string
	// MaxSessions bounds concurrent SFTP sessions over both ways in (0:
	// DefaultMaxSessions; negative is refused).
	MaxSessions int
}

// DefaultMaxSessions is Config.MaxSessions when zero: the SSH server's
// connection cap, which bare sftp streams used to count against.
const DefaultMaxSessions = 256

// DefaultConfig returns the defaults (no user: the caller sets it).
func DefaultConfig() Config {
	return Config{Exe: "/proc/self/exe", MaxSessions: DefaultMaxSessions}
}

// Validate refuses a config without a user or with a negative bound.
func (c Config) Validate() error {
	if c.User == nil {
		return errors.New("sftp config: User is required")
	}
	if err := config.NonNegative(config.Int("MaxSessions", c.MaxSessions)); err != nil {
		return fmt.Errorf("sftp config: %w", err)
	}
	return nil
}

// ErrClosed is Serve's error once the server is closing.
var ErrClosed = errors.New("sftp server shutting down")

// Server runs SFTP sessions. It owns what they start: Close hangs every
// session up and returns when their goroutines have ended.
type Server struct {
	cfg    Config
	log    zerolog.Logger
	reaper *supervisor.Reaper
	slots  chan struct{}
	total  atomic.Int64 // sessions started, for the operator's status

	mu      sync.Mutex
	closing bool           // guarded by mu
	wg      sync.WaitGroup // sessions and their copies; Add only under mu while !closing
	stop    context.Context
	cancel  context.CancelFunc
}

// New returns a server, or the reason cfg is not valid; its zero Config
// fields take the defaults.
func New(cfg Config, log zerolog.Logger, reaper *supervisor.Reaper) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := DefaultConfig()
	if cfg.Exe == "" {
		cfg.Exe = d.Exe
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = d.MaxSessions
	}
	stop, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, log: log.With().Str("component", "sftpd").Logger(), reaper: reaper,
		slots: make(chan struct{}, cfg.MaxSessions), stop: stop, cancel: cancel}, nil
}

// Session is one SFTP session's ends.
type Session struct {
	// In is the client's bytes; its EOF is the clean end of the session.
	In io.Reader
	// Out takes the server's replies.
	Out io.Writer
	// Stderr takes the sftp-server's messages; nil discards them.
	Stderr io.Writer
	// Env is the server's environment; nil: the user's login environment.
	Env []string
}

// Serve runs one session: an sftp-server as the sandbox user in its home,
// fed from In, answering on Out, until it exits. It exits 0 at In's EOF
// (scp reports failure otherwise, Coder 11786); the end of ctx or a
// failed write to Out hangs it up. The error is for a session that could
// not start (over MaxSessions, closing, unknown user, no fork); the exit
// is the server's own otherwise.
//
// Serve returns once the server has exited and its output is passed on;
// the copy of In ends when the caller closes In (after reporting the exit,
// on SSH), and Close waits for it.
func (s *Server) Serve(ctx context.Context, sess Session) (supervisor.Exit, error) {
	release, err := s.admit()
	if err != nil {
		return supervisor.Exit{}, err
	}
	defer release()
	u := s.cfg.User
	env := sess.Env
	if env == nil {
		env = u.Env("", nil)
	}
	p, err := launch.NewPipes()
	if err != nil {
		return supervisor.Exit{}, fmt.Errorf("sftp-server pipes: %w", err)
	}
	proc, err := Start(s.reaper, s.cfg.Exe, u, env, p)
	if err != nil {
		p.Close()
		return supervisor.Exit{}, err
	}
	p.CloseChild()
	s.total.Add(1)
	s.wg.Add(1) // admit holds a count, so Close cannot be past its Wait
	go func() {
		defer s.wg.Done()
		_, _ = io.CopyBuffer(writerOnly{p.InW}, sess.In, make([]byte, copyBuf))
		p.InW.Close() // the client's EOF is the server's
	}()
	var errs sync.WaitGroup
	errs.Add(1)
	go func() {
		defer errs.Done()
		w := sess.Stderr
		if w == nil {
			w = io.Discard
		}
		_, _ = io.Copy(w, p.ErrR)
	}()
	stopCtx := context.AfterFunc(ctx, func() { hangup(proc) })
	defer stopCtx()
	stopClose := context.AfterFunc(s.stop, func() { hangup(proc) })
	defer stopClose()
	if _, err := io.CopyBuffer(writerOnly{sess.Out}, readerOnly{p.OutR}, make([]byte, copyBuf)); err != nil {
		hangup(proc) // the client is gone
	}
	exit := proc.Wait()
	_ = p.ErrR.SetReadDeadline(time.Now().Add(drainGrace))
	errs.Wait()
	p.OutR.Close()
	p.ErrR.Close()
	return exit, nil
}

// admit takes a session slot; release gives it back.
func (s *Server) admit() (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, ErrClosed
	}
	select {
	case s.slots <- struct{}{}:
	default:
		return nil, fmt.Errorf("too many SFTP sessions (max %d)", s.cfg.MaxSessions)
	}
	s.wg.Add(1)
	return func() { <-s.slots; s.wg.Done() }, nil
}

// ServeConn serves a bare sftp stream: the SFTP protocol both ways, ended
// by the client's EOF. A session that cannot start refuses the stream
// with the reason (streams.Server), which the proxy reports as sshd's
// subsystem does: on stderr, exit status 1. Otherwise, when the peer asks
// for it, the server's exit follows its last packet as a trailer
// (internal/sftpframe), so the proxy reports what the server did, as the
// SSH subsystem does; a server that died mid-packet gets none (the stream
// ends mid-packet: a broken session). Then the stream is half-closed.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, peer streams.Peer) error {
	defer c.Close()
	log := peer.Log(s.log)
	out := &sftpframe.Counter{W: c}
	exit, err := s.Serve(ctx, Session{In: c, Out: out})
	if err != nil {
		log.Warn().Err(err).Msg("sftp stream refused")
		return err
	}
	if peer.ExitTrailer && out.AtBoundary() {
		_, _ = c.Write(sftpframe.AppendTrailer(nil, trailerExit(exit)))
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	log.Info().Str("exit", exit.String()).Msg("sftp session over the uplink ended")
	return nil
}

// trailerExit is e as SSH reports it: a status, or a signal's name.
func trailerExit(e supervisor.Exit) sftpframe.Exit {
	if e.Signal != 0 {
		return sftpframe.Exit{Signal: strings.TrimPrefix(unix.SignalName(e.Signal), "SIG"), Core: e.Core}
	}
	return sftpframe.Exit{Status: uint32(e.Code)}
}

// Close refuses new sessions, hangs up the running ones and waits until
// they and their copies have ended. Safe to call twice.
func (s *Server) Close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// Stats are SFTP sessions, for the operator's status.
type Stats struct {
	Sessions      int   `json:"sessions"`       // running now
	SessionsTotal int64 `json:"sessions_total"` // served since start
}

// Stats reports sessions for the operator's status.
func (s *Server) Stats() Stats {
	return Stats{Sessions: len(s.slots), SessionsTotal: s.total.Load()}
}

// hangup ends a session's server as a closed connection would: SIGHUP to
// its group (Start gives it one).
func hangup(p *supervisor.Proc) {
	if _, exited := p.Exited(); !exited {
		_ = p.SignalGroup(unix.SIGHUP)
		_ = p.SignalGroup(unix.SIGCONT)
	}
}

const (
	// copyBuf is the copy size each way: larger than an SSH packet (32
	// KiB), so bulk transfers cost fewer reads and writes.
	copyBuf = 128 << 10
	// drainGrace bounds reading the server's stderr after it exited.
	drainGrace = 2 * time.Second
)

// writerOnly and readerOnly hide ReadFrom and WriteTo, so copies use
// their own buffer.
type (
	writerOnly struct{ io.Writer }
	readerOnly struct{ io.Reader }
)
