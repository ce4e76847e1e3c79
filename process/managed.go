package process

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tensorlake/tl-agent/internal/backoff"
	"github.com/tensorlake/tl-agent/internal/pause"
)

// RestartPolicy is the `restart` field of a supervised process.
type RestartPolicy struct {
	Policy           string `json:"policy"`
	MaxRestarts      *int   `json:"max_restarts"`
	InitialBackoffMs int64  `json:"initial_backoff_ms"`
	MaxBackoffMs     int64  `json:"max_backoff_ms"`
}

// HealthCheck is the `health_check` field of a supervised process, and
// the readiness probe of a boot service (package services). Types: http
// (a 2xx or 3xx from 127.0.0.1:Port+Path), tcp (a connection to
// 127.0.0.1:Port), exec (Command with Args, run as the process's user in
// its folder and environment, exits 0).
type HealthCheck struct {
	Type             string   `json:"type"`
	Port             int      `json:"port,omitempty"`
	Path             string   `json:"path,omitempty"`
	Command          string   `json:"command,omitempty"`
	Args             []string `json:"args,omitempty"`
	InitialDelayMs   int64    `json:"initial_delay_ms"`
	IntervalMs       int64    `json:"interval_ms"`
	TimeoutMs        int64    `json:"timeout_ms"`
	FailureThreshold int      `json:"failure_threshold"`
}

// Restart policies.
const (
	PolicyNever     = "never"
	PolicyOnFailure = "on_failure"
	PolicyAlways    = "always"
)

// stableRun is how long an instance must run for its exit not to count
// toward the back-off: a service that crashes once a day restarts at once.
const stableRun = 10 * time.Second

func normalizeRestart(r *RestartPolicy) (RestartPolicy, error) {
	out := RestartPolicy{Policy: PolicyOnFailure, InitialBackoffMs: 500, MaxBackoffMs: 30000}
	if r == nil {
		return out, nil
	}
	switch r.Policy {
	case "":
	case PolicyNever, PolicyOnFailure, PolicyAlways:
		out.Policy = r.Policy
	default:
		return out, refuse(ErrBadRestart, "restart.policy must be never, on_failure or always, not %q", r.Policy)
	}
	if r.MaxRestarts != nil {
		if *r.MaxRestarts < 0 {
			return out, refuse(ErrBadRestart, "restart.max_restarts must not be negative")
		}
		n := *r.MaxRestarts
		out.MaxRestarts = &n
	}
	if r.InitialBackoffMs < 0 || r.MaxBackoffMs < 0 {
		return out, refuse(ErrBadRestart, "restart back-off must not be negative")
	}
	if r.InitialBackoffMs > 0 {
		out.InitialBackoffMs = r.InitialBackoffMs
	}
	if r.MaxBackoffMs > 0 {
		out.MaxBackoffMs = r.MaxBackoffMs
	}
	if out.MaxBackoffMs < out.InitialBackoffMs {
		out.MaxBackoffMs = out.InitialBackoffMs
	}
	return out, nil
}

// backoff is the policy's restart back-off: initial_backoff_ms doubling
// per consecutive short-lived exit, capped at max_backoff_ms, no jitter
// (the SDKs document the exact waits).
func (r RestartPolicy) backoff() backoff.Backoff {
	return backoff.Backoff{
		Initial: time.Duration(r.InitialBackoffMs) * time.Millisecond,
		Max:     time.Duration(r.MaxBackoffMs) * time.Millisecond,
	}
}

func normalizeHealth(h *HealthCheck) (*HealthCheck, error) {
	if h == nil {
		return nil, nil
	}
	out := *h
	switch out.Type {
	case "http":
		if out.Path == "" {
			out.Path = "/"
		}
		if err := validHealthPath(out.Path); err != nil {
			return nil, err
		}
	case "tcp":
	case "exec":
		if err := validProbeCommand(&out); err != nil {
			return nil, err
		}
	default:
		return nil, refuse(ErrInvalid, "health_check.type must be http, tcp or exec, not %q", h.Type)
	}
	if out.Type != "exec" && (out.Port < 1 || out.Port > 65535) {
		return nil, refuse(ErrInvalid, "health_check.port must be 1..65535")
	}
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	if out.InitialDelayMs < 0 || out.IntervalMs < 0 || out.TimeoutMs < 0 || out.FailureThreshold < 0 {
		return nil, refuse(ErrInvalid, "health_check values must not be negative")
	}
	def(&out.InitialDelayMs, 5000)
	def(&out.IntervalMs, 1000)
	def(&out.TimeoutMs, 500)
	if out.FailureThreshold == 0 {
		out.FailureThreshold = 3
	}
	return &out, nil
}

// Managed statuses and health statuses, as the API spells them.
const (
	mStarting   = "starting"
	mRunning    = "running"
	mBackingOff = "backing_off"
	mStopped    = "stopped"

	hDisabled  = "disabled"
	hStarting  = "starting"
	hHealthy   = "healthy"
	hUnhealthy = "unhealthy"
)

// managed supervises a named (or restart/health-configured) process:
// it restarts instances per its policy with exponential back-off and
// runs the health check against the current instance.
type managed struct {
	t      *Table
	id     string
	named  bool
	spec   *spec
	policy RestartPolicy
	health *HealthCheck

	mu           sync.Mutex
	cur          *Process // guarded by mu; the latest instance
	status       string
	restarts     int
	backoff      backoff.Backoff // counts consecutive short-lived exits
	healthStatus string
	healthFails  int
	lastExit     *ExitInfo
	lastErr      string
	nextRestart  time.Time          // when the back-off ends, as of its start (a pause moves it later)
	timer        *pause.Timer       // the back-off, in running time
	pausedAt     time.Duration      // paused time detected when the current instance started
	stopped      bool               // by the user or shutdown: no more restarts
	restarting   bool               // an API restart is between kill and launch
	cancelHealth context.CancelFunc // ends the current instance's health loop

	// A live upgrade's freeze holds the restart timer and the health loop
	// (Table.Freeze); Thaw, or the new binary's Restore, re-arms them.
	held       bool          // a restart is due after left
	left       time.Duration // the back-off remaining when held
	healthHeld bool          // the current instance's health loop is to restart
}

// ExitInfo is `managed.last_exit`.
type ExitInfo struct {
	ExitCode  *int  `json:"exit_code"`
	Signal    *int  `json:"signal"`
	OOMKilled bool  `json:"oom_killed"`
	EndedAt   int64 `json:"ended_at"`
}

func (m *managed) current() *Process {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur
}

// setCurrentLocked makes p the current instance, holding its output for
// as long as it is; called with m.mu held.
func (m *managed) setCurrentLocked(p *Process) {
	if p != nil {
		p.hold()
	}
	if m.cur != nil {
		m.cur.unhold()
	}
	m.cur = p
}

func (m *managed) setCurrent(p *Process) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setCurrentLocked(p)
}

// wallClock is the clock of a table built without Config.Pause: a
// detector that never ticks detects nothing, so it reads elapsed time.
var wallClock = pause.New(0, 0)

// clock is the running clock the back-offs and health checks count in.
func (m *managed) clock() *pause.Detector {
	if c := m.t.cfg.Pause; c != nil {
		return c
	}
	return wallClock
}

// launch starts a new instance; called with m.mu held.
func (m *managed) launch() error {
	m.pausedAt, _ = m.clock().Paused()
	p, err := m.t.start(m.spec, m)
	if err != nil {
		m.lastErr = err.Error()
		return err
	}
	m.setCurrentLocked(p)
	m.status = mRunning
	m.healthStatus = hDisabled
	m.healthFails = 0
	if m.health != nil {
		m.status, m.healthStatus = mStarting, hStarting
		m.startHealthLocked(p, time.Duration(m.health.InitialDelayMs)*time.Millisecond)
	}
	return nil
}

// startHealthLocked runs the health loop of instance p, its first check
// after first; called with m.mu held.
func (m *managed) startHealthLocked(p *Process, first time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancelHealth = cancel
	m.t.wg.Add(1)
	go func() {
		defer m.t.wg.Done()
		m.healthLoop(ctx, p, first)
	}()
}

// exited is called by the watcher when instance p has ended.
func (m *managed) exited(p *Process) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p != m.cur {
		return // replaced by a manual restart
	}
	if m.cancelHealth != nil {
		m.cancelHealth()
		m.cancelHealth = nil
	}
	info := p.exitInfo()
	m.lastExit = &info
	failed := p.lost || p.exit.Code != 0 || p.exit.Signal != 0
	switch {
	case m.stopped:
		m.status = mStopped
		return
	case m.policy.Policy == PolicyNever, m.policy.Policy == PolicyOnFailure && !failed:
		m.status = mStopped
		return
	case m.policy.MaxRestarts != nil && m.restarts >= *m.policy.MaxRestarts:
		m.status = mStopped
		m.lastErr = fmt.Sprintf("not restarted: max_restarts (%d) reached", *m.policy.MaxRestarts)
		return
	}
	// Running time: an instance that crashes at once after a long freeze
	// did not run stably for the frozen time.
	paused, _ := m.clock().Paused()
	if p.exit.At.Sub(p.startedAt)-(paused-m.pausedAt) >= stableRun {
		m.backoff.Reset()
	}
	m.scheduleLocked()
}

// scheduleLocked arms the restart timer with the next back-off.
func (m *managed) scheduleLocked() { m.armLocked(m.backoff.Next()) }

// armLocked restarts the process after d.
func (m *managed) armLocked(d time.Duration) {
	m.status = mBackingOff
	m.nextRestart = time.Now().Add(d)
	m.timer = m.clock().AfterFunc(d, m.autoRestart)
	m.t.log.Info().Str("name", m.id).Dur("backoff", d).Int("restarts", m.restarts).Msg("supervised process will restart")
}

func (m *managed) autoRestart() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || m.status != mBackingOff {
		return
	}
	m.timer = nil
	if m.t.fz.wait() != nil {
		m.held, m.left = true, 0 // due: Thaw or Restore restarts it
		return
	}
	m.nextRestart = time.Time{}
	m.restarts++
	m.t.counts.restarts.Add(1)
	if err := m.launch(); err != nil {
		if errors.Is(err, ErrFrozen) {
			// Frozen since the check: this restart is due, not done.
			m.restarts--
			m.t.counts.restarts.Add(-1)
			m.held, m.left = true, 0
			return
		}
		if errors.Is(err, ErrShuttingDown) {
			// The shutdown sweep has begun: nothing restarts any more.
			m.status = mStopped
			return
		}
		m.t.log.Warn().Err(err).Str("name", m.id).Msg("restart failed")
		if m.policy.MaxRestarts == nil || m.restarts < *m.policy.MaxRestarts {
			m.scheduleLocked()
		} else {
			m.status = mStopped
		}
	}
}

// restart replaces the current instance now (the API's restart): the old
// tree is killed and waited for, so a port it held is free again.
func (m *managed) restart() (*Process, error) {
	m.mu.Lock()
	if m.restarting {
		m.mu.Unlock()
		return nil, refuse(ErrRestarting, "a restart of %s is in progress", m.id)
	}
	m.restarting = true
	old := m.cur
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	if m.cancelHealth != nil {
		m.cancelHealth()
		m.cancelHealth = nil
	}
	if old != nil {
		old.hold() // kept across the swap, given back below
	}
	m.setCurrentLocked(nil) // its exit no longer drives the policy
	m.mu.Unlock()
	if old != nil {
		defer old.unhold()
		old.kill()
		sleepRunning(context.Background(), m.clock(), killWait, old.done)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.restarting = false
	m.stopped = false
	m.nextRestart = time.Time{}
	m.backoff.Reset()
	if m.t.fz.wait() != nil {
		// A live upgrade froze the table meanwhile: the restart is due
		// (Thaw or the new binary's Restore does it); this call drops.
		m.status, m.held, m.left = mBackingOff, true, 0
		return nil, ErrFrozen
	}
	m.restarts++
	m.t.counts.restarts.Add(1)
	if err := m.launch(); err != nil {
		m.setCurrentLocked(old)
		m.status = mStopped
		return nil, err
	}
	return m.cur, nil
}

// stopAndKill ends supervision and kills the current instance (DELETE).
func (m *managed) stopAndKill() {
	m.mu.Lock()
	m.stopped = true
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.nextRestart = time.Time{}
	cur := m.cur
	if cur == nil || !cur.running() {
		m.status = mStopped
	}
	m.mu.Unlock()
	if cur != nil {
		cur.kill()
	}
}

// shutdown stops restarts and health checks; the table ends the processes.
func (m *managed) shutdown() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopped = true
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	if m.cancelHealth != nil {
		m.cancelHealth()
		m.cancelHealth = nil
	}
}

// stale reports a stopped supervisor whose last instance ended before
// cutoff; the table forgets it.
func (m *managed) stale(cutoff time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.status != mStopped || m.cur == nil {
		return false
	}
	m.cur.mu.Lock()
	defer m.cur.mu.Unlock()
	return m.cur.ended && m.cur.endedAt.Before(cutoff)
}

// healthLoop checks instance p until ctx ends. After FailureThreshold
// consecutive failures the instance is killed, and its exit goes through
// the restart policy, unless the policy is never: then it is only marked
// unhealthy. Delays, intervals and timeouts are running time, and a failed
// probe during which the sandbox was paused does not count: at thaw the
// service (frozen too) has had no time to answer.
func (m *managed) healthLoop(ctx context.Context, p *Process, first time.Duration) {
	h := m.health
	clock := m.clock()
	wait := first
	for {
		if !sleepRunning(ctx, clock, wait, p.done) {
			return
		}
		wait = time.Duration(h.IntervalMs) * time.Millisecond
		_, pausesBefore := clock.Paused()
		err := probe(ctx, clock, h, m.execProbe)
		if ctx.Err() != nil {
			return
		}
		if _, pauses := clock.Paused(); err != nil && pauses != pausesBefore {
			m.t.log.Debug().Str("name", m.id).Err(err).Msg("health check failed across a pause: not counted")
			continue
		}
		if m.recordHealth(p, err) {
			p.kill()
			return
		}
	}
}

// recordHealth notes one probe's result for instance p and reports whether
// p must be killed; false as well when p is no longer current.
func (m *managed) recordHealth(p *Process, err error) (kill bool) {
	h := m.health
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur != p {
		return false
	}
	if err == nil {
		m.healthFails = 0
		m.healthStatus = hHealthy
		m.status = mRunning
		return false
	}
	m.healthFails++
	m.t.counts.healthFails.Add(1)
	if m.healthFails >= h.FailureThreshold {
		if m.healthStatus != hUnhealthy {
			m.t.log.Warn().Str("name", m.id).Err(err).Int("failures", m.healthFails).Msg("health check failing")
		}
		m.healthStatus = hUnhealthy
		m.lastErr = "health check failed: " + err.Error()
		kill = m.policy.Policy != PolicyNever
	}
	return kill
}

// sleepRunning waits d of running time; false when ctx ends or done is
// closed first.
func sleepRunning(ctx context.Context, clock *pause.Detector, d time.Duration, done <-chan struct{}) bool {
	fired := make(chan struct{})
	t := clock.AfterFunc(d, func() { close(fired) })
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-done:
		return false
	case <-fired:
		return true
	}
}

// errProbeTimeout ends a probe that had no answer within its timeout.
var errProbeTimeout = errors.New("no answer within timeout_ms")

// probe runs one health check, timed out in running time; run runs the
// exec type's command.
func probe(ctx context.Context, clock *pause.Detector, h *HealthCheck, run func(context.Context, *HealthCheck) error) error {
	timeout := time.Duration(h.TimeoutMs) * time.Millisecond
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	t := clock.AfterFunc(timeout, func() { cancel(errProbeTimeout) })
	defer t.Stop()
	var err error
	if h.Type == "exec" {
		err = run(ctx, h)
	} else {
		err = probeOnce(ctx, h)
	}
	if err != nil && errors.Is(context.Cause(ctx), errProbeTimeout) {
		return fmt.Errorf("no answer within %v", timeout)
	}
	return err
}

func probeOnce(ctx context.Context, h *HealthCheck) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(h.Port))
	if h.Type == "tcp" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+h.Path, nil)
	if err != nil {
		return err
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("http status %d", resp.StatusCode)
	}
	return nil
}

// healthClient never follows redirects (a 3xx is healthy) and keeps no
// idle connections, so probes do not hold sockets of the service.
var healthClient = &http.Client{
	Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}
