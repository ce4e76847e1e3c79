// Package pty serves PTY sessions: a command started on a new terminal
// over HTTP, attached to over WebSocket by any number of clients, kept
// alive across disconnects, as the PTY section of the sandbox API
// specifies. Manager is the capability the agent wires in; it owns every
// session, client and timer it starts, and Close ends them all.
//
// The design and its measurements are in docs/pty.md.
package pty

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/config"
	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Config tunes the manager. Zero fields take the defaults of
// DefaultConfig; a negative one is refused (Validate).
type Config struct {
	// User is who sessions run as when a request names nobody: the
	// sandbox user, resolved once by the caller. Nil: identity.DefaultUser,
	// looked up at each request.
	User *identity.User

	MaxSessions  int           // live sessions; more get 429 (spec: 64)
	IdleTimeout  time.Duration // kill a session with no client for this long (spec: 300 s)
	KeepEnded    time.Duration // an ended session stays queryable this long (spec: ≥ 60 s)
	MaxEnded     int           // ended sessions kept at once; the oldest go first beyond
	KeepOutput   int           // bytes of output kept per session (spec: ≥ 1 MiB)
	KillGrace    time.Duration // SIGHUP, then SIGKILL after this (spec: 5 s)
	MaxClients   int           // WebSocket clients per session
	PingInterval time.Duration // server pings each client this often
	PongTimeout  time.Duration // and drops it when the pong is this late
	StallTimeout time.Duration // a client holding back output this long is dropped

	// Pause is the agent's running clock: every timer above counts running
	// time, so a frozen sandbox does not kill its detached sessions on
	// thaw. Nil: a detector that is not ticking, i.e. plain elapsed time.
	Pause *pause.Detector
}

// DefaultConfig returns the spec's values and ours.
func DefaultConfig() Config {
	return Config{
		MaxSessions:  64,
		IdleTimeout:  300 * time.Second,
		KeepEnded:    60 * time.Second,
		MaxEnded:     1024,
		KeepOutput:   1<<20 + 64<<10, // a read may evict before it lands: keep ≥ 1 MiB
		KillGrace:    5 * time.Second,
		MaxClients:   16,
		PingInterval: 15 * time.Second,
		PongTimeout:  10 * time.Second,
		StallTimeout: 5 * time.Second,
	}
}

// Validate refuses a negative bound or timeout; zero takes the default.
func (c Config) Validate() error {
	err := config.NonNegative(
		config.Int("MaxSessions", c.MaxSessions), config.Int("MaxEnded", c.MaxEnded),
		config.Int("KeepOutput", c.KeepOutput), config.Int("MaxClients", c.MaxClients),
		config.Duration("IdleTimeout", c.IdleTimeout), config.Duration("KeepEnded", c.KeepEnded),
		config.Duration("KillGrace", c.KillGrace), config.Duration("PingInterval", c.PingInterval),
		config.Duration("PongTimeout", c.PongTimeout), config.Duration("StallTimeout", c.StallTimeout),
	)
	if err != nil {
		return fmt.Errorf("pty config: %w", err)
	}
	return nil
}

// withDefaults fills the zero fields of a valid config.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(v *int, dv int) {
		if *v == 0 {
			*v = dv
		}
	}
	setD := func(v *time.Duration, dv time.Duration) {
		if *v == 0 {
			*v = dv
		}
	}
	set(&c.MaxSessions, d.MaxSessions)
	set(&c.MaxEnded, d.MaxEnded)
	set(&c.KeepOutput, d.KeepOutput)
	set(&c.MaxClients, d.MaxClients)
	setD(&c.IdleTimeout, d.IdleTimeout)
	setD(&c.KeepEnded, d.KeepEnded)
	setD(&c.KillGrace, d.KillGrace)
	setD(&c.PingInterval, d.PingInterval)
	setD(&c.PongTimeout, d.PongTimeout)
	setD(&c.StallTimeout, d.StallTimeout)
	if c.Pause == nil {
		c.Pause = pause.New(0, 0)
	}
	return c
}

// keptOutputEnded is how many of the most recently ended sessions keep
// their output for a late client; older ended sessions keep only their
// S object, which bounds memory when sessions churn.
const keptOutputEnded = 16

// Manager owns the PTY sessions.
type Manager struct {
	cfg    Config
	log    zerolog.Logger
	reaper *supervisor.Reaper

	mu       sync.Mutex
	sessions map[string]*Session // guarded by mu; live and ended
	ended    []*Session          // guarded by mu; oldest first
	live     int                 // guarded by mu; includes starts in progress
	closing  bool                // guarded by mu
	frozen   bool                // guarded by mu; between Freeze and Thaw (handover.go)
	released chan struct{}       // closed by tests only: ends a frozen manager's goroutines
	held     []*os.File          // fds a failed Restore took: kept from the GC's close for the rollback
	wg       sync.WaitGroup      // session and client goroutines
	dropped  atomic.Int64        // clients dropped by the agent (slow, no pong, shutdown)
	created  atomic.Int64        // sessions started
	endings  endCounts           // sessions ended, by reason
}

// Reasons a session ended, as Stats.Ended counts them.
const (
	EndExit      = "exit"       // its process exited by itself (or by a signal not ours)
	EndOOMKilled = "oom_killed" // the OOM killer ended it
	EndIdle      = "idle"       // no client attached for the idle timeout
	EndDeleted   = "deleted"    // deleted through the API
	EndShutdown  = "shutdown"   // the agent shut down
)

// endCounts counts ended sessions for each reason; the set is fixed, so
// reading needs no lock.
type endCounts struct{ exit, oom, idle, deleted, shutdown atomic.Int64 }

func (e *endCounts) count(reason string) { e.add(reason, 1) }

func (e *endCounts) add(reason string, n int64) {
	switch reason {
	case EndOOMKilled:
		e.oom.Add(n)
	case EndIdle:
		e.idle.Add(n)
	case EndDeleted:
		e.deleted.Add(n)
	case EndShutdown:
		e.shutdown.Add(n)
	default:
		e.exit.Add(n)
	}
}

func (e *endCounts) snapshot() map[string]int64 {
	return map[string]int64{EndExit: e.exit.Load(), EndOOMKilled: e.oom.Load(), EndIdle: e.idle.Load(),
		EndDeleted: e.deleted.Load(), EndShutdown: e.shutdown.Load()}
}

// NewManager returns a manager that starts children through reaper, or
// the reason cfg is not valid.
func NewManager(cfg Config, log zerolog.Logger, reaper *supervisor.Reaper) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Manager{
		cfg:      cfg.withDefaults(),
		log:      log.With().Str("component", "pty").Logger(),
		reaper:   reaper,
		sessions: map[string]*Session{},
		released: make(chan struct{}),
	}, nil
}

// Errors of create.
var (
	ErrTooManySessions = errors.New("too many live pty sessions")
	ErrClosing         = errors.New("pty sessions are shutting down")
	ErrFrozen          = errors.New("pty sessions are frozen for an agent upgrade: retry")
	ErrNotFound        = errors.New("pty session not found")
	errTooManyClients  = errors.New("too many clients on this session")
)

// create starts sp on a new PTY and registers the session.
func (m *Manager) create(sp startSpec) (*Session, error) {
	m.mu.Lock()
	switch {
	case m.closing:
		m.mu.Unlock()
		return nil, ErrClosing
	case m.frozen:
		m.mu.Unlock()
		return nil, ErrFrozen
	case m.live >= m.cfg.MaxSessions:
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: limit %d", ErrTooManySessions, m.cfg.MaxSessions)
	}
	m.live++ // reserved: concurrent creates cannot overshoot
	m.mu.Unlock()
	s, err := m.start(sp)
	m.mu.Lock()
	if err != nil {
		m.live--
		m.mu.Unlock()
		return nil, err
	}
	m.sessions[s.id] = s
	m.created.Add(1)
	if m.frozen { // a Freeze came while it started; under m.mu, so no Thaw slips in
		s.freeze()
	}
	m.mu.Unlock()
	return s, nil
}

func (m *Manager) start(sp startSpec) (*Session, error) {
	c, err := build(sp)
	if err != nil {
		return nil, err
	}
	master := c.Master
	proc, err := launch.Start(c, m.reaper.Start)
	if _, _, refused := launch.APIError(err); refused {
		return nil, err // the launcher's words, as every door says them
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errStart, err)
	}
	raw, err := master.SyscallConn()
	if err != nil { // not reachable for an *os.File
		master.Close()
		_ = proc.SignalGroup(syscall.SIGKILL)
		return nil, err
	}
	s := &Session{
		id: newID(), token: newToken(), command: sp.command, args: sp.args,
		created: time.Now(), pid: proc.Pid, m: m, proc: proc, master: master, raw: raw,
		readerDone: make(chan struct{}), done: make(chan struct{}),
		progress: make(chan struct{}, 1), rows: sp.rows, cols: sp.cols,
		out: newRing(m.cfg.KeepOutput), clients: map[*client]struct{}{},
	}
	s.log = m.log.With().Str("session", s.id).Int("pid", s.pid).Logger()
	s.armIdleLocked(m.cfg.IdleTimeout) // s is not shared yet
	m.run(s)
	return s, nil
}

// run starts the session's reader and waiter.
func (m *Manager) run(s *Session) {
	m.wg.Add(2)
	go func() { defer m.wg.Done(); s.readLoop() }()
	go func() { defer m.wg.Done(); s.waitLoop() }()
}

var errStart = errors.New("cannot start command")

// get returns a live or recently ended session.
func (m *Manager) get(id string) (*Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.sessions[id]; ok {
		return s, nil
	}
	return nil, ErrNotFound
}

func (m *Manager) list() []*Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		out = append(out, s)
	}
	return out
}

// sessionEnded frees the live slot and schedules forgetting.
func (m *Manager) sessionEnded(s *Session) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.live--
	m.ended = append(m.ended, s)
	if n := len(m.ended); n > keptOutputEnded {
		m.ended[n-1-keptOutputEnded].releaseOutput()
	}
	for len(m.ended) > m.cfg.MaxEnded {
		m.forgetLocked(m.ended[0])
	}
	if !m.closing {
		m.armForgetLocked(s, m.cfg.KeepEnded)
	}
}

// armForgetLocked forgets the ended session s after d; a frozen manager
// only records the deadline (Thaw arms it).
func (m *Manager) armForgetLocked(s *Session, d time.Duration) {
	s.forgetDue = m.cfg.Pause.Now() + d
	if !m.frozen {
		s.forget = m.cfg.Pause.AfterFunc(d, func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.forgetLocked(s)
		})
	}
}

func (m *Manager) forgetLocked(s *Session) {
	if m.sessions[s.id] != s {
		return
	}
	delete(m.sessions, s.id)
	for i, e := range m.ended {
		if e == s {
			m.ended = append(m.ended[:i], m.ended[i+1:]...)
			break
		}
	}
	s.dropAll("session forgotten")
}

// releaseOutput frees the kept output of an ended session nobody watches.
func (s *Session) releaseOutput() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.clients) == 0 {
		end := s.out.end
		s.out = newRing(s.out.max)
		s.out.start, s.out.end = end, end
	}
}

// dropAll disconnects every client with close 1001 and why.
func (s *Session) dropAll(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		s.dropLocked(c, websocket.StatusGoingAway, why)
	}
}

// closeWait bounds how long Close waits for its killed sessions to end
// before it drops their clients; a session ends once its leader is reaped
// and its output drained (drainMax).
const closeWait = 5 * time.Second

// Close refuses new sessions, ends what is left of every session at once
// (SIGKILL to its terminal session), disconnects every client and returns
// when all the manager's goroutines have ended. It runs no grace timer:
// at shutdown the supervisor's sweep has already hung up every terminal
// and waited out the grace. It is safe to call twice.
func (m *Manager) Close() {
	m.Thaw() // a frozen session cannot end
	m.mu.Lock()
	m.closing = true
	var sessions []*Session
	for _, s := range m.sessions {
		sessions = append(sessions, s)
	}
	m.mu.Unlock()
	var live []supervisor.Scope
	for _, s := range sessions {
		s.mu.Lock()
		if !s.ended {
			s.killed = true
			s.killCause = EndShutdown
			live = append(live, s.scope())
		}
		if s.idle != nil {
			s.idle.Stop()
		}
		s.mu.Unlock()
	}
	if len(live) > 0 {
		supervisor.Kill(syscall.SIGKILL, live...) // one walk of /proc for all
	}
	waitAll(sessions, closeWait)
	m.mu.Lock()
	for _, s := range m.sessions {
		if s.forget != nil {
			s.forget.Stop()
		}
	}
	m.mu.Unlock()
	for _, s := range sessions {
		s.dropAll("agent shutting down")
		s.mu.Lock()
		if s.killTimer != nil {
			s.killTimer.Stop()
		}
		s.mu.Unlock()
	}
	m.wg.Wait()
}

func waitAll(sessions []*Session, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for _, s := range sessions {
		select {
		case <-s.done:
		case <-deadline.C:
			return false
		}
	}
	return true
}

// scope is every process of the session's terminal session: the leader,
// its group and the groups job control made (a group kill alone misses an
// interactive shell's background jobs). Processes that called setsid
// themselves have left the session, as with a hang-up.
func (s *Session) scope() supervisor.Scope { return supervisor.Scope{Session: s.pid} }

// signal sends sig to the session's scope.
func (s *Session) signal(sig syscall.Signal) { supervisor.Kill(sig, s.scope()) }

// idAlphabet is the URL-safe alphabet of session ids (nanoid's).
const idAlphabet = "useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict"

// newID returns 21 characters of the URL-safe alphabet: 126 random bits.
func newID() string {
	var b [21]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = idAlphabet[b[i]&63]
	}
	return string(b[:])
}

// newToken returns 64 hex characters (32 random bytes).
func newToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Stats are counts for the operator's status (fields in key order: the
// JSON and `tl-agent status` list them so).
type Stats struct {
	Clients        int              `json:"clients"`         // attached clients
	ClientsDropped int              `json:"clients_dropped"` // clients the agent dropped since it started
	Created        int64            `json:"created"`         // sessions started
	Ended          map[string]int64 `json:"ended"`           // sessions ended, by reason (the End constants)
	Kept           int              `json:"kept"`            // ended sessions still kept for queries
	Live           int              `json:"live"`            // live sessions
}

// Stats reports counts for the operator's status.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	sessions := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		sessions = append(sessions, s)
	}
	live := m.live
	m.mu.Unlock()
	clients := 0
	for _, s := range sessions {
		s.mu.Lock()
		clients += len(s.clients)
		s.mu.Unlock()
	}
	return Stats{Live: live, Kept: len(sessions) - live, Clients: clients, ClientsDropped: int(m.dropped.Load()),
		Created: m.created.Load(), Ended: m.endings.snapshot()}
}
