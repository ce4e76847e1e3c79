package services

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/process"
)

// Table is what services need of the process table: boot services are
// its supervised processes.
type Table interface {
	Start(req *process.StartRequest) (*process.Process, error)
	Probe(ctx context.Context, name string, h *process.HealthCheck) error
	Stop(name string, sig syscall.Signal, wait time.Duration) error
	Managed(name string) (process.ManagedInfo, bool)
}

// States of a boot service, as GET /api/v1/info reports them.
const (
	StateWaiting  = "waiting"  // for its dependencies to be ready
	StateStarting = "starting" // started, its readiness probe not yet passed
	StateReady    = "ready"
	// StateBackingOff: it was ready, and its process has exited and waits
	// out its restart back-off (a ready service counts only while its
	// process runs).
	StateBackingOff = "backing_off"
	StateFailed     = "failed"  // could not start, or a dependency could not
	StateStopped    = "stopped" // by shutdown, or its process is stopped
)

// readyInterval is the readiness probe's interval when the file sets none.
const readyInterval = 500 * time.Millisecond

// Manager boots the services and stops them. Its goroutines end at Stop
// (or Close); Close waits for them.
type Manager struct {
	t    Table
	log  zerolog.Logger
	svcs []Service // boot order

	mu    sync.Mutex
	state map[string]*unit // guarded by mu (the units' fields too)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type unit struct {
	state   string
	err     string
	started bool
	ready   chan struct{} // closed when ready
	dead    chan struct{} // closed when it will never be ready
}

// New returns a manager of svcs (in boot order, as Load returns them).
func New(svcs []Service, t Table, log zerolog.Logger) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{t: t, log: log.With().Str("component", "services").Logger(), svcs: svcs,
		state: make(map[string]*unit, len(svcs)), ctx: ctx, cancel: cancel}
	for _, s := range svcs {
		m.state[s.ServiceName()] = &unit{state: StateWaiting, ready: make(chan struct{}), dead: make(chan struct{})}
	}
	return m
}

// Start boots every service in its own goroutine: each waits until what
// it depends on is ready, starts, then probes until ready. It returns at
// once.
func (m *Manager) Start() {
	for i := range m.svcs {
		s := &m.svcs[i]
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.boot(s)
		}()
	}
}

func (m *Manager) boot(s *Service) {
	name := s.ServiceName()
	u := m.unit(name)
	for _, d := range s.DependsOn {
		du := m.unit(d)
		select {
		case <-du.ready:
		case <-du.dead:
			m.fail(u, "dependency "+d+" will not be ready")
			return
		case <-m.ctx.Done():
			return
		}
	}
	p, err := m.startService(s)
	if err != nil {
		m.log.Error().Err(err).Str("service", name).Msg("service not started")
		m.fail(u, err.Error())
		return
	}
	m.set(u, StateStarting, "", true)
	m.log.Info().Str("service", name).Int("pid", p.PID()).Strs("depends_on", s.DependsOn).Msg("service started")
	m.awaitReady(s, u)
}

// startFrozenRetry is how often a start refused by a live upgrade's
// freeze is tried again (the upgrade execs, or thaws, within seconds).
const startFrozenRetry = 100 * time.Millisecond

// startService starts s's process; while a live upgrade holds the table
// it waits (the exec ends the wait; a failed one thaws).
func (m *Manager) startService(s *Service) (*process.Process, error) {
	for {
		req := s.StartRequest
		p, err := m.t.Start(&req)
		if !errors.Is(err, process.ErrFrozen) {
			return p, err
		}
		t := time.NewTimer(startFrozenRetry)
		select {
		case <-m.ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// awaitReady probes a started service until ready, then marks it so.
func (m *Manager) awaitReady(s *Service, u *unit) {
	name := s.ServiceName()
	if s.Ready != nil && !m.probe(name, s.Ready) {
		return
	}
	m.set(u, StateReady, "", true)
	close(u.ready)
	m.log.Info().Str("service", name).Msg("service ready")
}

// probe tries the readiness probe until it passes (true) or the manager
// stops. A service that restarts meanwhile is probed again: only a pass
// counts.
func (m *Manager) probe(name string, h *process.HealthCheck) bool {
	delay := time.Duration(h.InitialDelayMs) * time.Millisecond
	interval := time.Duration(h.IntervalMs) * time.Millisecond
	if interval <= 0 {
		interval = readyInterval
	}
	check, err := process.NormalizeCheck(h)
	if err != nil { // Load checked it
		return false
	}
	for attempt := 0; ; attempt++ {
		t := time.NewTimer(delay)
		select {
		case <-m.ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		delay = interval
		err := m.t.Probe(m.ctx, name, check)
		if err == nil {
			return true
		}
		if attempt%20 == 0 {
			m.log.Debug().Err(err).Str("service", name).Int("attempt", attempt).Msg("service not ready yet")
		}
	}
}

func (m *Manager) unit(name string) *unit {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state[name]
}

func (m *Manager) set(u *unit, state, why string, started bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u.state, u.err, u.started = state, why, started
}

func (m *Manager) fail(u *unit, why string) {
	m.set(u, StateFailed, why, false)
	close(u.dead)
}

// State is one service in GET /api/v1/info.
type State struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// Status is the services part of GET /api/v1/info: Ready when every
// declared service is ready (true with none).
type Status struct {
	Ready    bool    `json:"ready"`
	Services []State `json:"services"`
}

// Status reports each service in boot order. A ready service is ready
// while its process runs: one that exited since waits out its back-off,
// and one that was stopped (killed through the API) is stopped.
func (m *Manager) Status() Status {
	st := Status{Ready: true, Services: make([]State, 0, len(m.svcs))}
	for _, s := range m.svcs {
		name := s.ServiceName()
		m.mu.Lock()
		u := *m.state[name]
		m.mu.Unlock()
		if u.started {
			switch mi, ok := m.t.Managed(name); {
			case !ok || mi.Status == "stopped":
				u.state = StateStopped
			case u.state == StateReady && mi.Status == "backing_off":
				u.state = StateBackingOff
			}
		}
		st.Ready = st.Ready && u.state == StateReady
		st.Services = append(st.Services, State{Name: name, State: u.state, Error: u.err})
	}
	return st
}

// Stop ends the boot (nothing more starts) and stops the started
// services in reverse boot order, each sent SIGTERM and waited for until
// it exits or deadline passes; what outlives the deadline is left to the
// shutdown sweep, which SIGKILLs it.
func (m *Manager) Stop(deadline time.Time) {
	m.cancel()
	m.wg.Wait()
	for i := len(m.svcs) - 1; i >= 0; i-- {
		name := m.svcs[i].ServiceName()
		u := m.unit(name)
		m.mu.Lock()
		started := u.started
		m.mu.Unlock()
		left := time.Until(deadline)
		if !started || left <= 0 {
			continue
		}
		if err := m.t.Stop(name, syscall.SIGTERM, left); err != nil {
			m.log.Warn().Err(err).Str("service", name).Msg("service stop")
			continue
		}
		m.set(u, StateStopped, "", true)
		m.log.Info().Str("service", name).Msg("service stopped")
	}
}
