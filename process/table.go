// Package process owns the sandbox's process table: processes started
// through the API (background, run-to-completion, and supervised named
// ones), their stdin pipes, their captured output and its follow streams,
// restarts with back-off and health checks, and the HTTP routes of the
// Processes section of the sandbox API.
//
// Every process is started through supervisor.Reaper (never cmd.Wait), in
// its own process group, as the requested user; kills reach its whole
// tree (see killTree).
package process

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/config"
	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Config bounds the table. Zero fields take the defaults of
// DefaultConfig; a negative one is refused (Validate).
type Config struct {
	// User runs a process whose request names no user: the sandbox user,
	// resolved once by the caller. Nil: identity.DefaultUser, looked up at
	// each request.
	User                   *identity.User
	MaxLines               int           // output lines kept per process, stdout and stderr together
	MaxBytes               int           // output bytes kept per process
	MaxLineBytes           int           // longer lines are split at this many bytes
	KeepExited             time.Duration // how long an exited process stays queryable
	MaxExited              int           // how many exited processes are kept at most
	ExitedBytes            int           // output bytes kept by exited processes together
	TotalBytes             int           // output bytes kept by all processes together (see budget)
	MaxLive                int           // running API processes at most (429 past it)
	ExitGrace              time.Duration // output still read after the leader exits (pipes held by children)
	StdinTimeout           time.Duration // a stdin write blocked this long fails (503)
	MaxStdinBytes          int64         // one stdin request's body at most
	StallTimeout           time.Duration // a follow or run client that takes no events this long is dropped
	MaxFollowers           int           // follow streams open at once, all processes together (429 past it)
	MaxFollowersPerProcess int           // follow streams open at once on one process (429 past it)

	// Pause is the running clock of back-offs and health checks (nil:
	// elapsed time, no pause detected).
	Pause *pause.Detector
}

// DefaultConfig returns the documented defaults (docs/processes.md).
func DefaultConfig() Config {
	return Config{
		MaxLines:               10000,
		MaxBytes:               4 << 20,
		MaxLineBytes:           64 << 10,
		KeepExited:             10 * time.Minute,
		MaxExited:              256,
		ExitedBytes:            64 << 20,
		TotalBytes:             256 << 20,
		MaxLive:                4096,
		ExitGrace:              time.Second,
		StdinTimeout:           30 * time.Second,
		MaxStdinBytes:          1 << 20,
		StallTimeout:           30 * time.Second,
		MaxFollowers:           256,
		MaxFollowersPerProcess: 32,
	}
}

// Validate refuses a negative bound or timeout; zero takes the default.
func (c Config) Validate() error {
	err := config.NonNegative(
		config.Int("MaxLines", c.MaxLines),
		config.Int("MaxBytes", c.MaxBytes),
		config.Int("MaxLineBytes", c.MaxLineBytes),
		config.Duration("KeepExited", c.KeepExited),
		config.Int("MaxExited", c.MaxExited),
		config.Int("ExitedBytes", c.ExitedBytes),
		config.Int("TotalBytes", c.TotalBytes),
		config.Int("MaxLive", c.MaxLive),
		config.Duration("ExitGrace", c.ExitGrace),
		config.Duration("StdinTimeout", c.StdinTimeout),
		config.Int("MaxStdinBytes", c.MaxStdinBytes),
		config.Duration("StallTimeout", c.StallTimeout),
		config.Int("MaxFollowers", c.MaxFollowers),
		config.Int("MaxFollowersPerProcess", c.MaxFollowersPerProcess),
	)
	if err != nil {
		return fmt.Errorf("process config: %w", err)
	}
	return nil
}

// withDefaults fills the zero fields of a valid config.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxLines == 0 {
		c.MaxLines = d.MaxLines
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = d.MaxBytes
	}
	if c.MaxLineBytes == 0 {
		c.MaxLineBytes = d.MaxLineBytes
	}
	if c.KeepExited == 0 {
		c.KeepExited = d.KeepExited
	}
	if c.MaxExited == 0 {
		c.MaxExited = d.MaxExited
	}
	if c.ExitedBytes == 0 {
		c.ExitedBytes = d.ExitedBytes
	}
	if c.TotalBytes == 0 {
		c.TotalBytes = d.TotalBytes
	}
	if c.MaxLive == 0 {
		c.MaxLive = d.MaxLive
	}
	if c.ExitGrace == 0 {
		c.ExitGrace = d.ExitGrace
	}
	if c.StdinTimeout == 0 {
		c.StdinTimeout = d.StdinTimeout
	}
	if c.MaxStdinBytes == 0 {
		c.MaxStdinBytes = d.MaxStdinBytes
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = d.StallTimeout
	}
	if c.MaxFollowers == 0 {
		c.MaxFollowers = d.MaxFollowers
	}
	if c.MaxFollowersPerProcess == 0 {
		c.MaxFollowersPerProcess = d.MaxFollowersPerProcess
	}
	return c
}

// Table is the process table.
type Table struct {
	cfg    Config
	log    zerolog.Logger
	reaper *supervisor.Reaper
	budget *budget

	mu          sync.Mutex
	byPid       map[int]*Process    // guarded by mu; live and kept exited processes
	byName      map[string]*managed // guarded by mu; supervised processes by id
	nextHandle  int                 // guarded by mu
	nextManaged int                 // guarded by mu; ids of unnamed supervisors
	live        int                 // guarded by mu
	followers   int                 // guarded by mu; open follow streams
	closing     bool                // guarded by mu

	wg     sync.WaitGroup // watchers, health loops, janitor
	stop   chan struct{}
	counts counts // for Stats

	// startMu is read-held by every start from its check to its entry in
	// byPid, so Freeze (which write-holds it to set fz) knows that no start
	// is under way and none will begin (docs/processes.md, "Live upgrade").
	startMu sync.RWMutex
	fz      freezer
	keep    []*os.File // kept fds a failed Restore took: never closed (a rollback hands them back)
}

// New returns an empty table, or the reason cfg is not valid; call Close
// at shutdown.
func New(cfg Config, log zerolog.Logger, reaper *supervisor.Reaper) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	t := &Table{
		cfg: cfg, log: log.With().Str("component", "processes").Logger(), reaper: reaper,
		byPid: map[int]*Process{}, byName: map[string]*managed{},
		budget:     &budget{max: int64(cfg.TotalBytes), floor: budgetFloor},
		nextHandle: 1, stop: make(chan struct{}),
	}
	t.wg.Add(1)
	go t.janitor()
	return t, nil
}

// Counts reports running and tracked processes for /api/v1/info.
func (t *Table) Counts() (running, total int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.live, len(t.byPid)
}

// Process is one started instance of a command.
type Process struct {
	t         *Table
	handle    int
	pid       int
	spec      *spec
	startedAt time.Time
	proc      *supervisor.Proc
	out       *outputLog
	managed   *managed        // nil unless supervised
	endLog    *zerolog.Logger // logs the exit: a run's request's, else the table's
	holds     atomic.Int32    // the table and the supervisor; output is released at 0
	followers int             // guarded by t.mu; open follow streams

	// stdinMu is held only to read or reset stdin, never across I/O;
	// stdinWrite serializes the writes of stdin requests.
	stdinMu    sync.Mutex
	stdin      *os.File // guarded by stdinMu; nil when not a pipe or closed
	stdinOpen  atomic.Bool
	stdinWrite sync.Mutex
	stdinPipe  *os.File // the same pipe, never reset: its deadline unblocks a writer
	fdsClosed  bool     // guarded by stdinMu; the watcher closed the pipes

	caps        []*capturer      // one per captured pipe, fixed before the watcher starts
	capWG       sync.WaitGroup   // the capturers' goroutines
	run         bool             // started by a run call (its client owns the output)
	runDeadline time.Time        // a run's timeout, zero for none
	detached    atomic.Bool      // a live upgrade is under way: a run client that goes does not kill it
	leaderExit  *supervisor.Exit // restored: the old agent had reaped the leader (or lost it)
	lost        bool             // its exit is unknown: it ended during a hand-over (see Restore)
	deadline    *time.Timer      // a restored run's timeout

	mu      sync.Mutex
	ended   bool // guarded by mu; the fields below are final once set
	exit    supervisor.Exit
	oom     bool
	endedAt time.Time
	done    chan struct{} // closed after output is drained and the exit recorded
}

// start starts one instance of s. m is the supervisor it belongs to, if any.
func (t *Table) start(s *spec, m *managed) (*Process, error) {
	return t.startWith(s, m, false, time.Time{})
}

// startRun starts s for a run client, which owns its output: the log is
// pinned before the first line (see outputLog). deadline is its timeout
// (zero: none), kept for a live upgrade.
func (t *Table) startRun(s *spec, deadline time.Time) (*Process, error) {
	return t.startWith(s, nil, true, deadline)
}

func (t *Table) startWith(s *spec, m *managed, owned bool, deadline time.Time) (*Process, error) {
	t.startMu.RLock()
	defer t.startMu.RUnlock()
	if t.fz.wait() != nil {
		return nil, ErrFrozen
	}
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		return nil, refuse(ErrShuttingDown, "the agent is shutting down")
	}
	if t.live >= t.cfg.MaxLive {
		t.mu.Unlock()
		return nil, refuse(ErrTooMany, "%d processes are running, the limit", t.cfg.MaxLive)
	}
	handle := t.nextHandle
	t.nextHandle++
	t.live++ // reserved; released if the start fails
	// The watcher's count (spawn's runWatch), taken under mu while closing
	// is false: Close's Wait never races an Add of a start under way.
	t.wg.Add(1)
	t.mu.Unlock()

	p, err := t.spawn(s, handle, m, owned, deadline)
	if err != nil {
		t.wg.Done()
		t.mu.Lock()
		t.live--
		t.mu.Unlock()
		return nil, err
	}
	p.hold()
	t.mu.Lock()
	if old := t.byPid[p.pid]; old != nil {
		t.forget(old) // a reused pid: the old entry has exited
	}
	t.byPid[p.pid] = p
	t.mu.Unlock()
	t.counts.started.Add(1)
	log := &t.log
	if s.startLog != nil {
		log, s.startLog = s.startLog, nil
	}
	log.Info().Int("pid", p.pid).Int("handle", handle).Str("command", s.command).Str("user", s.user.Name).Msg("process started")
	return p, nil
}

// stdio is the parent's and child's ends of a process's standard streams.
type stdio struct {
	child  [3]*os.File
	stdin  *os.File // parent's write end, when piped
	reads  []*os.File
	stream []string
}

func (sio *stdio) closeChild() {
	for _, f := range sio.child {
		if f != nil {
			f.Close()
		}
	}
}

func (sio *stdio) closeAll() {
	sio.closeChild()
	if sio.stdin != nil {
		sio.stdin.Close()
	}
	for _, f := range sio.reads {
		f.Close()
	}
}

func openStdio(s *spec) (*stdio, error) {
	sio := &stdio{}
	null := func() (*os.File, error) { return os.OpenFile(os.DevNull, os.O_RDWR, 0) }
	var err error
	if s.stdinPipe {
		sio.child[0], sio.stdin, err = os.Pipe()
	} else {
		sio.child[0], err = null()
	}
	if err != nil {
		return nil, err
	}
	for i, keep := range []bool{s.stdoutKeep, s.stderrKeep} {
		if !keep {
			if sio.child[i+1], err = null(); err != nil {
				sio.closeAll()
				return nil, err
			}
			continue
		}
		r, w, err := os.Pipe()
		if err != nil {
			sio.closeAll()
			return nil, err
		}
		sio.child[i+1] = w
		sio.reads = append(sio.reads, r)
		sio.stream = append(sio.stream, [2]string{Stdout, Stderr}[i])
	}
	return sio, nil
}

// spawn starts the process and its output and exit watchers. m is set on
// the Process before the watcher runs: a command that exits at once must
// still reach its supervisor.
func (t *Table) spawn(s *spec, handle int, m *managed, owned bool, deadline time.Time) (*Process, error) {
	sio, err := openStdio(s)
	if re := startRefused("pipes", err); re != nil {
		return nil, re
	}
	if err != nil {
		return nil, refuse(ErrStartFailed, "pipes: %v", err)
	}
	// What launch.Build resolved in prepare, as a fresh Cmd for each start
	// (restarts reuse the spec; an exec.Cmd runs once).
	cmd := &exec.Cmd{
		Path:        s.path,
		Args:        append([]string{s.command}, s.args...),
		Env:         append(append([]string{}, s.env...), cookieEnv+"="+strconv.Itoa(handle)),
		Dir:         s.dir,
		Stdin:       sio.child[0],
		Stdout:      sio.child[1],
		Stderr:      sio.child[2],
		SysProcAttr: s.attr, // the launcher's: its own group, so kills reach the tree
	}
	proc, err := launch.StartCmd(cmd, t.reaper.Start)
	sio.closeChild()
	if err != nil {
		sio.closeAll()
		if errors.Is(err, supervisor.ErrShuttingDown) {
			return nil, refuse(ErrShuttingDown, "the sandbox is shutting down")
		}
		if ae := launchRefused(launch.Classify(s.command, s.dir, s.user, err)); ae != nil {
			return nil, ae
		}
		return nil, refuse(ErrStartFailed, "start %s: %v", s.command, err)
	}
	p := &Process{
		t: t, handle: handle, pid: proc.Pid, spec: s, startedAt: time.Now(), proc: proc, managed: m,
		out:   newOutputLog(t.cfg.MaxLines, t.cfg.MaxBytes, t.budget),
		stdin: sio.stdin, stdinPipe: sio.stdin, done: make(chan struct{}),
	}
	p.stdinOpen.Store(sio.stdin != nil)
	p.endLog = &t.log
	if owned {
		p.out.pin()
		// A run's process lives within its request: its exit is one of
		// the request's events. A background process outlives the
		// request that started it, and its exit is the table's.
		if s.startLog != nil {
			p.endLog = s.startLog
		}
	}
	p.run, p.runDeadline = owned, deadline
	for i, r := range sio.reads {
		p.addCapture(r, sio.stream[i], nil)
	}
	p.startCaptures()
	t.runWatch(p)
	return p, nil
}

// addCapture adds a capturer of pipe f (partial: the start of a line an
// upgraded agent's capturer held); startCaptures starts them all.
func (p *Process) addCapture(f *os.File, stream string, partial []byte) {
	p.caps = append(p.caps, &capturer{f: f, log: p.out, stream: stream, maxLine: p.t.cfg.MaxLineBytes, fz: &p.t.fz, partial: partial})
}

func (p *Process) startCaptures() {
	for _, c := range p.caps {
		p.capWG.Add(1)
		go func() {
			defer p.capWG.Done()
			c.run()
		}()
	}
}

func (t *Table) startWatch(p *Process) {
	t.wg.Add(1)
	t.runWatch(p)
}

// runWatch runs p's watcher on the table's count the caller took.
func (t *Table) runWatch(p *Process) {
	go func() {
		defer t.wg.Done()
		t.watch(p)
	}()
}

// waitLeader waits for the leader's exit: the reaper's, or the one an
// upgraded agent had reaped already.
func (p *Process) waitLeader() supervisor.Exit {
	if p.leaderExit != nil {
		return *p.leaderExit
	}
	return p.proc.Wait()
}

// watch waits for the leader's exit, drains output (see drainAfterExit:
// descendants holding the pipes get ExitGrace), records the exit and tells
// the supervisor, if any.
func (t *Table) watch(p *Process) {
	e := p.waitLeader()
	oom := e.OOMKilled
	drained := make(chan struct{})
	go func() { p.capWG.Wait(); close(drained) }()
	drainAfterExit(p.caps, drained, t.cfg.ExitGrace)
	p.closeFDs()
	if p.deadline != nil {
		p.deadline.Stop()
	}
	p.out.close()
	p.mu.Lock()
	p.ended, p.exit, p.oom, p.endedAt = true, e, oom, e.At
	p.mu.Unlock()
	t.mu.Lock()
	t.live--
	t.mu.Unlock()
	if !p.lost {
		t.counts.exited(e, oom)
	}
	close(p.done)
	p.endLog.Info().Int("pid", p.pid).Int("handle", p.handle).Str("exit", e.String()).Bool("oom_killed", oom).Msg("process ended")
	if p.managed != nil {
		p.managed.exited(p)
	}
	t.prune()
}

// closeFDs closes the process's pipes after its exit; a freeze holds it
// (Save may be recording them).
func (p *Process) closeFDs() {
	p.lockFDs()
	defer p.stdinMu.Unlock()
	for _, c := range p.caps {
		c.f.Close()
	}
	if p.stdinPipe != nil {
		// A writer blocked on a pipe that a surviving child keeps open
		// must not hold up the exit.
		_ = p.stdinPipe.SetWriteDeadline(time.Now())
	}
	p.closeStdinLocked()
	p.fdsClosed = true
}

// lockFDs takes stdinMu once the table is not frozen: no fd of p is
// closed while Save may record it.
func (p *Process) lockFDs() {
	for {
		p.stdinMu.Lock()
		thaw := p.t.fz.wait()
		if thaw == nil {
			return
		}
		p.stdinMu.Unlock()
		<-thaw
	}
}

// closeStdin closes the stdin pipe if open (a freeze holds it). A write
// under way fails with os.ErrClosed (the file's poller wakes it).
func (p *Process) closeStdin() {
	p.lockFDs()
	defer p.stdinMu.Unlock()
	p.closeStdinLocked()
}

func (p *Process) closeStdinLocked() {
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
		p.stdinOpen.Store(false)
	}
}

// stdinFile is the open stdin pipe, or nil.
func (p *Process) stdinFile() *os.File {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	return p.stdin
}

// running reports whether the leader has not been reaped yet.
func (p *Process) running() bool {
	if p.proc == nil {
		return false // restored with its leader reaped already, or lost
	}
	_, exited := p.proc.Exited()
	return !exited
}

// kill ends the process's whole tree with SIGKILL.
// killWait bounds how long a restart waits for the old instance, sent
// SIGKILL, to be reaped. A process in uninterruptible sleep (D state: a
// hung FUSE or NFS mount) dies only when the kernel lets it, and the
// restart must not hang on it: past this the new instance starts anyway,
// and a port the old one holds may still be taken.
const killWait = 5 * time.Second

func (p *Process) kill() {
	if p.running() {
		killTree(p.pid, p.handle)
	}
}

// lookup finds a process by pid (all digits) or supervised name.
func (t *Table) lookup(key string) (*Process, *managed, error) {
	if isDigits(key) {
		pid, err := strconv.Atoi(key)
		t.mu.Lock()
		p := t.byPid[pid]
		t.mu.Unlock()
		if err != nil || p == nil {
			return nil, nil, refuse(ErrNotFound, "no process with pid %s", key)
		}
		return p, p.managed, nil
	}
	t.mu.Lock()
	m := t.byName[key]
	t.mu.Unlock()
	if m == nil {
		return nil, nil, refuse(ErrNotFound, "no process named %s", key)
	}
	p := m.current()
	if p == nil {
		return nil, nil, refuse(ErrNotFound, "process %s is being restarted", key)
	}
	return p, m, nil
}

// list returns the tracked processes in start order.
func (t *Table) list() []*Process {
	t.mu.Lock()
	out := make([]*Process, 0, len(t.byPid))
	for _, p := range t.byPid {
		out = append(out, p)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].handle < out[j].handle })
	return out
}

// janitor prunes exited processes past their keep time.
func (t *Table) janitor() {
	defer t.wg.Done()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.prune()
		}
	}
}

// prune drops exited processes older than KeepExited and the oldest beyond
// MaxExited, and stopped supervisors whose last instance went with them.
func (t *Table) prune() {
	cutoff := time.Now().Add(-t.cfg.KeepExited)
	t.mu.Lock()
	var exited []*Process
	for _, p := range t.byPid {
		p.mu.Lock()
		ended, at := p.ended, p.endedAt
		p.mu.Unlock()
		if !ended {
			continue
		}
		if at.Before(cutoff) {
			t.forget(p)
			continue
		}
		exited = append(exited, p)
	}
	// The newest are kept: at most MaxExited of them, holding at most
	// ExitedBytes of output together.
	sort.Slice(exited, func(i, j int) bool { return exited[i].handle > exited[j].handle })
	kept := 0
	for i, p := range exited {
		kept += p.out.size()
		if i >= t.cfg.MaxExited || kept > t.cfg.ExitedBytes {
			t.forget(p)
		}
	}
	ms := make(map[string]*managed, len(t.byName))
	for name, m := range t.byName {
		ms[name] = m
	}
	t.mu.Unlock()
	// A supervisor locks its own mutex before the table's (a restart
	// starts a process), so supervisors are checked with t.mu released.
	for name, m := range ms {
		if m.stale(cutoff) {
			t.mu.Lock()
			gone := t.byName[name] == m
			if gone {
				delete(t.byName, name)
			}
			t.mu.Unlock()
			if gone {
				m.setCurrent(nil)
			}
		}
	}
}

// forget drops p from the table. Called with t.mu held.
func (t *Table) forget(p *Process) {
	if t.byPid[p.pid] == p {
		delete(t.byPid, p.pid)
		p.unhold()
	}
}

// hold and unhold count who still shows p (the table, its supervisor);
// when nobody does, its output's bytes go back to the budget.
func (p *Process) hold() { p.holds.Add(1) }

func (p *Process) unhold() {
	if p.holds.Add(-1) == 0 {
		p.out.release()
	}
}

// budgetFloor is what each process may keep even when the table's output
// budget is spent.
const budgetFloor = 64 << 10

// closeWait bounds how long Close waits for its watchers after killing
// the trees: each ends once its leader is reaped and its output drained
// (ExitGrace); only a process stuck in the kernel keeps one longer.
const closeWait = 5 * time.Second

// Close refuses new processes, stops supervision and health checks, ends
// what is left of every running process's tree at once (SIGKILL) and
// waits for the table's goroutines. It runs no grace timer: at shutdown
// the supervisor's sweep has already sent SIGTERM and waited out the
// grace. Safe to call twice.
func (t *Table) Close() {
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		return
	}
	t.closing = true
	ms := make([]*managed, 0, len(t.byName))
	for _, m := range t.byName {
		ms = append(ms, m)
	}
	t.mu.Unlock()
	close(t.stop)
	for _, m := range ms {
		m.shutdown()
	}
	for _, p := range t.list() {
		p.kill()
	}
	waited := make(chan struct{})
	go func() { t.wg.Wait(); close(waited) }()
	timer := time.NewTimer(closeWait)
	defer timer.Stop()
	select {
	case <-waited:
	case <-timer.C:
		t.log.Warn().Dur("waited", closeWait).Msg("process watchers still running at close")
	}
}

// addFollower counts a follow stream of p against the caps (429
// TOO_MANY_FOLLOWERS past either); removeFollower gives it back.
func (t *Table) addFollower(p *Process) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.followers >= t.cfg.MaxFollowers:
		return refuse(ErrTooManyFollowers, "%d follow streams are open, the limit", t.cfg.MaxFollowers)
	case p.followers >= t.cfg.MaxFollowersPerProcess:
		return refuse(ErrTooManyFollowers, "%d follow streams are open on process %d, the limit per process", t.cfg.MaxFollowersPerProcess, p.pid)
	}
	t.followers++
	p.followers++
	return nil
}

func (t *Table) removeFollower(p *Process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.followers--
	p.followers--
}
