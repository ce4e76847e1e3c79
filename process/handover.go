package process

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/supervisor"
)

// The table's part of a live upgrade (internal/handover, docs/processes.md
// "Live upgrade"): Freeze stops every goroutine that reads a process's
// pipes, Save records the table, Restore (in the new binary, handover.go's
// second half: restore.go) rebuilds it and starts the same goroutines an
// entry started here has.

// Section is the table's section of the hand-over state.
const Section = "process"

// sectionVersion is the layout of savedTable this build writes and reads.
const sectionVersion = 1

// freezeWait bounds how long Freeze waits for the capture goroutines to
// stop reading; one still reading past it makes Save fail (the upgrade is
// called off and Thaw undoes the freeze).
const freezeWait = 5 * time.Second

// ErrFrozen refuses a start while a live upgrade holds the table (its
// wire code is SHUTTING_DOWN's; a boot service's start waits it out).
var ErrFrozen = refuse(ErrShuttingDown, "the agent is being upgraded: retry in a moment")

// freezer is the table's freeze: thaw is open while frozen.
type freezer struct {
	mu   sync.Mutex
	thaw chan struct{} // guarded by mu; nil when not frozen, closed by unfreeze
}

// wait is the channel a freeze's Thaw closes, nil when not frozen.
func (f *freezer) wait() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thaw == nil {
		return nil
	}
	return f.thaw
}

func (f *freezer) freeze() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thaw != nil {
		return false
	}
	f.thaw = make(chan struct{})
	return true
}

func (f *freezer) unfreeze() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.thaw == nil {
		return false
	}
	close(f.thaw)
	f.thaw = nil
	return true
}

// Freeze stops, without closing any fd: new starts (ErrFrozen; the gate
// refuses new requests already), restarts and health checks (their timers
// are held with what is left), the capture goroutines (a read deadline in
// the past; each keeps the partial line it holds) and the closing of an
// ended process's pipes. A run's output is unpinned and the run detached:
// its client may go without killing it. Safe to call twice.
func (t *Table) Freeze() {
	t.startMu.Lock()
	first := t.fz.freeze()
	t.startMu.Unlock()
	if !first {
		return
	}
	for _, m := range t.supervisors() {
		m.freeze()
	}
	procs := t.list()
	for _, p := range procs {
		if p.run {
			p.detached.Store(true)
			p.out.unpin() // a capture waiting for the run client goes on to its read
		}
		for _, c := range p.caps {
			c.stopReads()
		}
	}
	deadline := time.Now().Add(freezeWait)
	for _, p := range procs {
		for _, c := range p.caps {
			for !c.idle() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// Thaw undoes Freeze (the exec failed): captures read on, held restarts
// and health checks are re-armed, starts are taken again. A run stays
// unpinned: its client, if still there, may be told of skipped lines.
func (t *Table) Thaw() {
	if t.fz.wait() == nil {
		return
	}
	for _, p := range t.list() {
		for _, c := range p.caps {
			c.resume()
		}
		p.detached.Store(false)
	}
	t.startMu.Lock()
	t.fz.unfreeze()
	t.startMu.Unlock()
	for _, m := range t.supervisors() {
		m.thaw()
	}
}

// supervisors lists the supervisors by name.
func (t *Table) supervisors() []*managed {
	t.mu.Lock()
	defer t.mu.Unlock()
	ms := make([]*managed, 0, len(t.byName))
	for _, m := range t.byName {
		ms = append(ms, m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].id < ms[j].id })
	return ms
}

func (m *managed) freeze() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
		m.held, m.left = true, max(0, time.Until(m.nextRestart))
	}
	if m.cancelHealth != nil {
		m.cancelHealth()
		m.cancelHealth = nil
		m.healthHeld = true
	}
}

func (m *managed) thaw() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held {
		m.held = false
		if !m.stopped && m.status == mBackingOff {
			m.armLocked(m.left)
		}
	}
	if m.healthHeld {
		m.healthHeld = false
		m.resumeHealthLocked()
	}
}

// resumeHealthLocked runs the health loop again on the current instance
// (after a freeze, or in the new binary), its next check an interval on.
func (m *managed) resumeHealthLocked() {
	if m.health != nil && !m.stopped && m.cur != nil && m.cur.running() {
		m.startHealthLocked(m.cur, time.Duration(m.health.IntervalMs)*time.Millisecond)
	}
}

// savedTable is the section: every entry, live or ended, and every
// supervisor an entry refers to.
type savedTable struct {
	Version     int            `json:"version"`
	NextHandle  int            `json:"next_handle"`
	NextManaged int            `json:"next_managed"`
	Procs       []savedProc    `json:"procs"`
	Managed     []savedManaged `json:"managed"`
}

// savedProc is one entry. Exactly one of Live (its pid is in the state's
// pids), LeaderExit (reaped here, output still being read) and Ended holds.
type savedProc struct {
	Handle      int           `json:"handle"`
	Pid         int           `json:"pid"`
	Listed      bool          `json:"listed"`  // in the table (else only its supervisor's current instance)
	Managed     int           `json:"managed"` // 1 + index in Managed, 0 for none
	Spec        savedSpec     `json:"spec"`
	StartedAt   time.Time     `json:"started_at"`
	Run         bool          `json:"run,omitempty"`
	RunDeadline time.Time     `json:"run_deadline,omitzero"`
	Out         savedLog      `json:"output"`
	Live        bool          `json:"live,omitempty"`
	LeaderExit  *savedExit    `json:"leader_exit,omitempty"`
	Ended       *savedEnd     `json:"ended,omitempty"`
	Stdin       *handover.Ref `json:"stdin,omitempty"` // the write end, while open
	Pipes       []savedPipe   `json:"pipes,omitempty"` // read ends still being captured
}

type savedPipe struct {
	Stream  string       `json:"stream"`
	File    handover.Ref `json:"file"`
	Partial []byte       `json:"partial,omitempty"` // the start of a line read before the freeze
	Cut     bool         `json:"cut,omitempty"`     // the exit grace had ended its reads
}

type savedExit struct {
	Code      int       `json:"code"`
	Signal    int       `json:"signal"`
	Core      bool      `json:"core,omitempty"`
	At        time.Time `json:"at"`
	MaxRSS    int64     `json:"max_rss"`
	OOMKilled bool      `json:"oom_killed,omitempty"`
}

type savedEnd struct {
	Exit savedExit `json:"exit"`
	OOM  bool      `json:"oom,omitempty"`
	Lost bool      `json:"lost,omitempty"` // the exit is unknown (see Restore)
}

type savedSpec struct {
	Command    string        `json:"command"`
	Args       []string      `json:"args"`
	Path       string        `json:"path"`
	Dir        string        `json:"dir"`
	Env        []string      `json:"env"`
	User       identity.User `json:"user"`
	Setpgid    bool          `json:"setpgid,omitempty"`
	Setsid     bool          `json:"setsid,omitempty"`
	StdinPipe  bool          `json:"stdin_pipe,omitempty"`
	StdoutKeep bool          `json:"stdout_keep,omitempty"`
	StderrKeep bool          `json:"stderr_keep,omitempty"`
}

type savedLog struct {
	Lines      []savedLine `json:"lines"`
	Next       uint64      `json:"next"`
	Dropped    uint64      `json:"dropped"`
	StreamNext [2]uint64   `json:"stream_next"`
	Closed     bool        `json:"closed,omitempty"`
}

// savedLine keeps a line's bytes exactly: Text when valid UTF-8 (JSON
// would replace invalid bytes), else Raw.
type savedLine struct {
	Seq    uint64    `json:"seq"`
	N      uint64    `json:"n"`
	Stream string    `json:"stream"`
	Text   string    `json:"text,omitempty"`
	Raw    []byte    `json:"raw,omitempty"`
	At     time.Time `json:"at"`
}

type savedManaged struct {
	ID           string        `json:"id"`
	Named        bool          `json:"named,omitempty"`
	ByName       bool          `json:"by_name"` // the table's supervisor of that id (else a replaced one)
	Spec         savedSpec     `json:"spec"`
	Policy       RestartPolicy `json:"policy"`
	Health       *HealthCheck  `json:"health,omitempty"`
	Current      int           `json:"current"` // handle of the current instance, 0 for none
	Status       string        `json:"status"`
	Restarts     int           `json:"restarts"`
	Backoffs     int           `json:"backoffs"` // consecutive short-lived exits (the back-off's attempts)
	HealthStatus string        `json:"health_status"`
	HealthFails  int           `json:"health_fails"`
	LastExit     *ExitInfo     `json:"last_exit,omitempty"`
	LastError    string        `json:"last_error,omitempty"`
	Stopped      bool          `json:"stopped,omitempty"`
	// RestartIn is the back-off left before a restart (0: due now), nil
	// when none is scheduled.
	RestartIn *time.Duration `json:"restart_in,omitempty"`
	// RanPaused is the paused time since the current instance started
	// (its stable-run rule counts running time).
	RanPaused time.Duration `json:"ran_paused,omitempty"`
}

// Save records the table in w's section Section: every entry (pid, spec,
// output, status, exit), the pipes still open (w.File; the pids of live
// leaders with w.Pid) and every supervisor's restart and health state.
// Without Freeze (the pre-flight) it copies under the locks and changes
// nothing; after Freeze a capture that did not stop is an error.
func (t *Table) Save(w *handover.Writer) error {
	frozen := t.fz.wait() != nil
	entries, ms := t.saveSet()
	idx := make(map[*managed]int, len(ms))
	for i, m := range ms {
		idx[m] = i + 1
	}
	st := savedTable{Version: sectionVersion, Procs: []savedProc{}, Managed: []savedManaged{}}
	t.mu.Lock()
	st.NextHandle, st.NextManaged = t.nextHandle, t.nextManaged
	t.mu.Unlock()
	for _, e := range entries {
		sp, err := e.p.save(w, frozen)
		if err != nil {
			return err
		}
		sp.Listed, sp.Managed = e.listed, idx[e.p.managed]
		st.Procs = append(st.Procs, sp)
	}
	for _, m := range ms {
		st.Managed = append(st.Managed, m.save(t.isByName(m)))
	}
	return w.Put(Section, &st)
}

type saveEntry struct {
	p      *Process
	listed bool
}

// saveSet is every process to save, in handle order (the table's and the
// supervisors' current instances the table forgot), and every supervisor
// one of them or the table names.
func (t *Table) saveSet() ([]saveEntry, []*managed) {
	ms := t.supervisors()
	seenM := map[*managed]bool{}
	for _, m := range ms {
		seenM[m] = true
	}
	var entries []saveEntry
	seenP := map[*Process]bool{}
	for _, p := range t.list() {
		entries = append(entries, saveEntry{p, true})
		seenP[p] = true
	}
	for _, e := range entries {
		if m := e.p.managed; m != nil && !seenM[m] {
			seenM[m] = true // replaced by a newer one of its name
			ms = append(ms, m)
		}
	}
	for _, m := range ms {
		if cur := m.current(); cur != nil && !seenP[cur] {
			entries = append(entries, saveEntry{cur, false})
			seenP[cur] = true
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].p.handle < entries[j].p.handle })
	return entries, ms
}

func (t *Table) isByName(m *managed) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byName[m.id] == m
}

// save records one entry: its state, its output, and its pipes while the
// watcher has not closed them.
func (p *Process) save(w *handover.Writer, frozen bool) (savedProc, error) {
	sp := savedProc{
		Handle: p.handle, Pid: p.pid, Spec: saveSpec(p.spec), StartedAt: p.startedAt,
		Run: p.run, RunDeadline: p.runDeadline, Out: p.out.save(),
	}
	p.mu.Lock()
	ended, exit, oom := p.ended, p.exit, p.oom
	p.mu.Unlock()
	switch e, reaped := p.leaderExited(); {
	case ended:
		sp.Ended = &savedEnd{Exit: saveExit(exit), OOM: oom, Lost: p.lost}
		return sp, nil
	case !reaped:
		sp.Live = true
		w.Pid(p.pid)
	default:
		se := saveExit(e)
		sp.LeaderExit = &se
	}
	return sp, p.savePipes(w, frozen, &sp)
}

// leaderExited is the leader's exit once reaped.
func (p *Process) leaderExited() (supervisor.Exit, bool) {
	if p.leaderExit != nil {
		return *p.leaderExit, true
	}
	if p.proc == nil {
		return supervisor.Exit{}, true
	}
	return p.proc.Exited()
}

func (p *Process) savePipes(w *handover.Writer, frozen bool, sp *savedProc) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.fdsClosed {
		return nil
	}
	if p.stdin != nil {
		ref, err := w.File(fmt.Sprintf("process %d stdin", p.pid), p.stdin)
		if err != nil {
			return err
		}
		sp.Stdin = &ref
	}
	for _, c := range p.caps {
		c.mu.Lock()
		ended, parked, partial := c.ended, c.parked, c.partial
		c.mu.Unlock()
		if ended {
			continue // at EOF: nothing more to read
		}
		if frozen && !parked {
			return fmt.Errorf("process %d: the %s capture did not stop within %v of the freeze", p.pid, c.stream, freezeWait)
		}
		if !parked {
			partial = nil // the pre-flight: the goroutine owns it
		}
		ref, err := w.File(fmt.Sprintf("process %d %s", p.pid, c.stream), c.f)
		if err != nil {
			return err
		}
		sp.Pipes = append(sp.Pipes, savedPipe{Stream: c.stream, File: ref, Partial: append([]byte(nil), partial...), Cut: c.cut.Load()})
	}
	return nil
}

func saveSpec(s *spec) savedSpec {
	ss := savedSpec{
		Command: s.command, Args: s.args, Path: s.path, Dir: s.dir, Env: s.env,
		StdinPipe: s.stdinPipe, StdoutKeep: s.stdoutKeep, StderrKeep: s.stderrKeep,
	}
	if s.user != nil {
		ss.User = *s.user
	}
	if s.attr != nil {
		ss.Setpgid, ss.Setsid = s.attr.Setpgid, s.attr.Setsid
	}
	return ss
}

func saveExit(e supervisor.Exit) savedExit {
	return savedExit{Code: e.Code, Signal: int(e.Signal), Core: e.Core, At: e.At, MaxRSS: e.MaxRSS, OOMKilled: e.OOMKilled}
}

// save copies the kept lines and the counters.
func (l *outputLog) save() savedLog {
	l.mu.Lock()
	defer l.mu.Unlock()
	sl := savedLog{Lines: make([]savedLine, 0, l.n), Next: l.next, Dropped: l.dropped, StreamNext: l.streamNext, Closed: l.closed}
	for i := 0; i < l.n; i++ {
		ln := l.lines[(l.start+i)%len(l.lines)]
		s := savedLine{Seq: ln.Seq, N: ln.N, Stream: ln.Stream, At: ln.At}
		if utf8.ValidString(ln.Text) {
			s.Text = ln.Text
		} else {
			s.Raw = []byte(ln.Text)
		}
		sl.Lines = append(sl.Lines, s)
	}
	return sl
}

func (m *managed) save(byName bool) savedManaged {
	m.mu.Lock()
	defer m.mu.Unlock()
	sm := savedManaged{
		ID: m.id, Named: m.named, ByName: byName, Spec: saveSpec(m.spec), Policy: m.policy, Health: m.health,
		Status: m.status, Restarts: m.restarts, Backoffs: m.backoff.Attempts(), HealthStatus: m.healthStatus,
		HealthFails: m.healthFails, LastExit: m.lastExit, LastError: m.lastErr, Stopped: m.stopped,
	}
	if m.cur != nil {
		sm.Current = m.cur.handle
		paused, _ := m.clock().Paused()
		sm.RanPaused = max(0, paused-m.pausedAt)
	}
	var in time.Duration
	switch {
	case m.held:
		in = m.left
	case m.timer != nil:
		in = max(0, time.Until(m.nextRestart))
	case m.restarting:
		in = 0 // an API restart between its kill and its launch
	default:
		return sm
	}
	sm.RestartIn = &in
	return sm
}

// errSection wraps a refusal of the section.
func errSection(format string, args ...any) error {
	return errors.New("process section: " + fmt.Sprintf(format, args...))
}
