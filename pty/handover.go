package pty

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Live upgrade (docs/pty.md, "Live upgrade"; internal/handover). Every
// session crosses the exec: its master fd, its leader (adopted by the new
// reaper), its size, token and kept output with the same absolute offsets,
// and the rest of its timers. Attached clients are dropped with 1012 and
// reattach with replay; ended sessions are kept for their clients.

// Section is the name of the PTY manager's part of the hand-over.
const Section = "pty"

// sectionVersion is the layout of savedState this build writes and reads.
const sectionVersion = 1

// freezeWait bounds how long Freeze and Save wait for the readers to park.
// A reader waits at most StallTimeout for a slow client, and Freeze drops
// every client first, so this is only reached by a bug.
const freezeWait = 10 * time.Second

// lostExit is the exit code of a restored session whose leader the new
// reaper could not adopt (it was no longer our child): its status is lost.
const lostExit = -1

// savedState is the "pty" section. Its size is bounded by the sessions
// (MaxSessions live, keptOutputEnded ended with output) times KeepOutput.
type savedState struct {
	Version  int              `json:"version"`
	Sessions []savedSession   `json:"sessions"` // live first, then ended, oldest first
	Created  int64            `json:"created"`  // Stats counters, carried on
	Ended    map[string]int64 `json:"ended"`
	Dropped  int64            `json:"dropped"`
}

// savedSession is one session. Durations are what was left of a timer in
// running time; nil: not armed.
type savedSession struct {
	ID        string        `json:"id"`
	Token     string        `json:"token"`
	Command   string        `json:"command"`
	Args      []string      `json:"args"`
	Created   time.Time     `json:"created"`
	Pid       int           `json:"pid"`
	Rows      int           `json:"rows"`
	Cols      int           `json:"cols"`
	Master    *handover.Ref `json:"master,omitempty"` // live sessions only
	OutStart  int64         `json:"out_start"`        // kept output is [OutStart, OutEnd)
	OutEnd    int64         `json:"out_end"`
	Output    []byte        `json:"output"`
	Exit      *savedExit    `json:"exit,omitempty"` // the leader's, once reaped
	Ended     bool          `json:"ended"`
	EndedAt   time.Time     `json:"ended_at"`
	Killed    bool          `json:"killed"`
	KillCause string        `json:"kill_cause,omitempty"`
	OOMKilled bool          `json:"oom_killed"`

	IdleLeft   *time.Duration `json:"idle_left_ns,omitempty"`
	KillLeft   *time.Duration `json:"kill_left_ns,omitempty"`
	ForgetLeft *time.Duration `json:"forget_left_ns,omitempty"`
}

// savedExit is a supervisor.Exit, in a layout this package owns.
type savedExit struct {
	Code      int       `json:"code"`
	Signal    int       `json:"signal"`
	Core      bool      `json:"core"`
	At        time.Time `json:"at"`
	OOMKilled bool      `json:"oom_killed"`
}

func saveExit(e supervisor.Exit) *savedExit {
	return &savedExit{Code: e.Code, Signal: int(e.Signal), Core: e.Core, At: e.At, OOMKilled: e.OOMKilled}
}

func (e *savedExit) exit() supervisor.Exit {
	return supervisor.Exit{Code: e.Code, Signal: syscall.Signal(e.Signal), Core: e.Core, At: e.At, OOMKilled: e.OOMKilled}
}

// Freeze stops every reader without closing a master: each parks on a
// read deadline in the past, leaving unread output queued in its
// terminal. Every client is dropped with 1012 (they reattach with
// replay); input, resizes, new sessions and new clients are refused; the
// timers stop, keeping their deadlines. Thaw undoes it.
func (m *Manager) Freeze() {
	m.mu.Lock()
	if m.frozen {
		m.mu.Unlock()
		return
	}
	m.frozen = true
	sessions := m.sessionsLocked()
	for _, s := range m.ended {
		if s.forget != nil {
			s.forget.Stop()
		}
	}
	m.mu.Unlock()
	for _, s := range sessions {
		s.freeze()
	}
	deadline := time.Now().Add(freezeWait)
	for _, s := range sessions {
		if !s.awaitParked(deadline) {
			s.log.Error().Msg("pty reader did not stop for the upgrade")
		}
	}
	m.awaitClientsGone(sessions, time.Now().Add(clientsWait))
}

// clientsWait bounds how long Freeze lets the dropped clients' close
// frames go out (a client answers its close in milliseconds; one that
// does not just sees its connection cut at the exec).
const clientsWait = 500 * time.Millisecond

func (m *Manager) awaitClientsGone(sessions []*Session, deadline time.Time) {
	for _, s := range sessions {
		for {
			s.mu.Lock()
			n := len(s.clients)
			s.mu.Unlock()
			if n == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// Thaw lets every session run on after Freeze (the exec failed).
func (m *Manager) Thaw() {
	m.mu.Lock()
	if !m.frozen {
		m.mu.Unlock()
		return
	}
	m.frozen = false
	sessions := m.sessionsLocked()
	now := m.cfg.Pause.Now()
	for _, s := range m.ended {
		if s.forgetDue != 0 {
			m.armForgetLocked(s, left(s.forgetDue, now))
		}
	}
	m.mu.Unlock()
	for _, s := range sessions {
		s.thawOut()
	}
}

func (m *Manager) sessionsLocked() []*Session {
	out := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		out = append(out, s)
	}
	return out
}

// left is the rest of a running-clock deadline, never negative.
func left(due, now time.Duration) time.Duration { return max(due-now, 0) }

// upgradeReason is the close reason of the clients Freeze drops.
const upgradeReason = "agent upgrading: reattach"

func (s *Session) freeze() {
	s.mu.Lock()
	if s.frozen {
		s.mu.Unlock()
		return
	}
	s.frozen = true
	s.thaw, s.parked = make(chan struct{}), make(chan struct{})
	if s.idle != nil {
		s.idle.Stop()
	}
	if s.killTimer != nil {
		s.killTimer.Stop()
	}
	for c := range s.clients {
		s.dropLocked(c, websocket.StatusServiceRestart, upgradeReason)
	}
	if !s.ended {
		past := time.Unix(1, 0)
		_ = s.master.SetReadDeadline(past)  // the reader parks
		_ = s.master.SetWriteDeadline(past) // an input write in flight returns
	}
	s.mu.Unlock()
	s.inMu.Lock() // that write has returned; input refuses from now on
	s.inMu.Unlock()
	s.signalProgress() // a reader waiting for a client it no longer has to
}

// awaitParked reports whether the reader has parked (or ended) by deadline.
func (s *Session) awaitParked(deadline time.Time) bool {
	s.mu.Lock()
	parked := s.parked
	s.mu.Unlock()
	if parked == nil {
		return false
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-parked:
		return true
	case <-s.readerDone:
		return true
	case <-t.C:
		return false
	}
}

// park holds the reader while the session is frozen; false: it is not
// (the reader ended for real) or the manager was released.
func (s *Session) park() bool {
	s.mu.Lock()
	if !s.frozen {
		s.mu.Unlock()
		return false
	}
	thaw := s.thaw
	select {
	case <-s.parked:
	default:
		close(s.parked)
	}
	s.mu.Unlock()
	select {
	case <-thaw:
		return true
	case <-s.m.released:
		return false
	}
}

// holdEnd keeps a frozen session from ending (closing its master) until
// Thaw; false when the manager was released.
func (s *Session) holdEnd() bool {
	s.mu.Lock()
	frozen, thaw := s.frozen, s.thaw
	s.mu.Unlock()
	if !frozen {
		return true
	}
	select {
	case <-thaw:
		return true
	case <-s.m.released:
		return false
	}
}

func (s *Session) thawOut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.frozen {
		return
	}
	s.frozen = false
	if !s.ended {
		if at := s.exitedAt.Load(); at != 0 {
			s.extendDrainLocked(at)
		} else {
			_ = s.master.SetReadDeadline(time.Time{})
		}
	}
	now := s.m.cfg.Pause.Now()
	switch {
	case s.ended:
	case s.killed && s.killDue != 0:
		s.armKillLocked(left(s.killDue, now))
	case s.idleDue != 0 && len(s.clients) == 0:
		s.armIdleLocked(left(s.idleDue, now))
	}
	close(s.thaw) // last: the reader reads on without the past deadline
}

// Save records every session (Section). Without Freeze (the pre-flight)
// it only copies under the locks; after Freeze every reader must have
// parked, or the output it would read next could be lost.
func (m *Manager) Save(w *handover.Writer) error {
	m.mu.Lock()
	frozen := m.frozen
	sessions := m.saveOrderLocked()
	now := m.cfg.Pause.Now()
	forget := make(map[*Session]time.Duration, len(m.ended))
	for _, s := range m.ended {
		if s.forgetDue != 0 {
			forget[s] = left(s.forgetDue, now)
		}
	}
	m.mu.Unlock()
	st := savedState{Version: sectionVersion, Created: m.created.Load(), Ended: m.endings.snapshot(),
		Dropped: m.dropped.Load(), Sessions: make([]savedSession, 0, len(sessions))}
	deadline := time.Now().Add(freezeWait)
	for _, s := range sessions {
		if frozen && !s.awaitParked(deadline) {
			return fmt.Errorf("pty: session %s did not stop reading for the upgrade", s.id)
		}
		e, err := s.save(w)
		if err != nil {
			return err
		}
		if d, ok := forget[s]; ok {
			e.ForgetLeft = &d
		}
		st.Sessions = append(st.Sessions, e)
	}
	return w.Put(Section, st)
}

// saveOrderLocked is every session not in m.ended (oldest first), then
// m.ended in its order, which Restore keeps.
func (m *Manager) saveOrderLocked() []*Session {
	listed := make(map[*Session]bool, len(m.ended))
	for _, s := range m.ended {
		listed[s] = true
	}
	var out []*Session
	for _, s := range m.sessions {
		if !listed[s] {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].created.Before(out[j].created) })
	return append(out, m.ended...)
}

// save records s. The master is recorded under s.mu: end closes it only
// after it has set s.ended under s.mu.
func (s *Session) save(w *handover.Writer) (savedSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := savedSession{
		ID: s.id, Token: s.token, Command: s.command, Args: s.args, Created: s.created, Pid: s.pid,
		Rows: int(s.rows), Cols: int(s.cols), OutStart: s.out.start, OutEnd: s.out.end,
		Output: make([]byte, s.out.Len()), Ended: s.ended, EndedAt: s.endedAt,
		Killed: s.killed, KillCause: s.killCause, OOMKilled: s.oomKilled,
	}
	s.out.read(s.out.start, e.Output)
	if s.ended {
		e.Exit = saveExit(s.exit)
		return e, nil
	}
	ref, err := w.File("pty "+s.id+" master", s.master)
	if err != nil {
		return e, fmt.Errorf("pty: session %s: %w", s.id, err)
	}
	e.Master = &ref
	if exit, ok := s.leaderExited(); ok {
		e.Exit = saveExit(exit) // reaped already: no pid to adopt
	} else {
		w.Pid(s.pid)
	}
	s.saveTimersLocked(&e)
	return e, nil
}

func (s *Session) leaderExited() (supervisor.Exit, bool) {
	if s.proc == nil {
		return *s.gone, true
	}
	return s.proc.Exited()
}

func (s *Session) saveTimersLocked(e *savedSession) {
	now := s.m.cfg.Pause.Now()
	var d time.Duration
	switch {
	case s.killed:
		d = left(s.killDue, now)
		e.KillLeft = &d
	case len(s.clients) > 0:
		d = s.m.cfg.IdleTimeout // the last client leaves at the upgrade
		e.IdleLeft = &d
	case s.idleDue != 0:
		d = left(s.idleDue, now)
		e.IdleLeft = &d
	}
}

// Restore rebuilds the sessions of a predecessor's Section on this fresh
// manager (not yet serving). Every entry is checked before anything is
// taken, so a refused state changes nothing; with r.DryRun() it returns
// after the checks.
func (m *Manager) Restore(r *handover.Reader, reaper *supervisor.Reaper) error {
	var st savedState
	if ok, err := r.Section(Section, &st); err != nil || !ok {
		return err
	}
	if err := m.checkState(&st); err != nil {
		return fmt.Errorf("pty handover: %w", err)
	}
	masters, err := takeMasters(r, st.Sessions)
	if err != nil {
		m.hold(masters)
		return err
	}
	if !r.DryRun() {
		m.apply(&st, masters, reaper)
	}
	return nil
}

// hold keeps the masters a failed Restore took from the GC, whose
// finalizer would close them: the rollback hands them back to the old
// binary by number.
func (m *Manager) hold(files []*os.File) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range files {
		if f != nil {
			m.held = append(m.held, f)
		}
	}
}

// takeMasters takes each live session's master (in a dry run, checks the
// reference: File returns nil).
func takeMasters(r *handover.Reader, sessions []savedSession) ([]*os.File, error) {
	out := make([]*os.File, len(sessions))
	for i, e := range sessions {
		if e.Master == nil {
			continue
		}
		f, err := r.File(*e.Master)
		if err != nil {
			return out, fmt.Errorf("pty handover: session %s: %w", e.ID, err)
		}
		out[i] = f
	}
	return out, nil
}

// checkState refuses a section this build cannot restore whole.
func (m *Manager) checkState(st *savedState) error {
	if st.Version != sectionVersion {
		return fmt.Errorf("section version %d, this build reads %d", st.Version, sectionVersion)
	}
	ids := map[string]bool{}
	refs := map[handover.Ref]bool{}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range st.Sessions {
		e := &st.Sessions[i]
		if err := checkEntry(e); err != nil {
			return fmt.Errorf("session %d (%.32q): %w", i, e.ID, err)
		}
		if ids[e.ID] || m.sessions[e.ID] != nil {
			return fmt.Errorf("session %s twice", e.ID)
		}
		ids[e.ID] = true
		if e.Master != nil {
			if refs[*e.Master] {
				return fmt.Errorf("session %s: master %d shared", e.ID, *e.Master)
			}
			refs[*e.Master] = true
		}
	}
	return nil
}

// checkEntry checks one session's fields; its fds are checked by File.
func checkEntry(e *savedSession) error {
	switch {
	case !validID(e.ID):
		return fmt.Errorf("bad id")
	case len(e.Token) != 64 || strings.Trim(e.Token, "0123456789abcdef") != "":
		return fmt.Errorf("bad token")
	case e.Command == "":
		return fmt.Errorf("no command")
	case e.Pid <= 0:
		return fmt.Errorf("bad pid %d", e.Pid)
	case e.Rows < 1 || e.Rows > maxRows || e.Cols < 1 || e.Cols > maxCols:
		return fmt.Errorf("bad size %dx%d", e.Rows, e.Cols)
	case e.OutStart < 0 || e.OutEnd-e.OutStart != int64(len(e.Output)):
		return fmt.Errorf("kept output [%d, %d) holds %d bytes", e.OutStart, e.OutEnd, len(e.Output))
	case e.Ended == (e.Master != nil):
		return fmt.Errorf("ended %v with master %v", e.Ended, e.Master != nil)
	case e.Ended && e.Exit == nil:
		return fmt.Errorf("ended without an exit")
	case !knownCause(e.KillCause):
		return fmt.Errorf("unknown kill cause %.32q", e.KillCause)
	}
	for _, d := range []*time.Duration{e.IdleLeft, e.KillLeft, e.ForgetLeft} {
		if d != nil && *d < 0 {
			return fmt.Errorf("negative timer %v", *d)
		}
	}
	return nil
}

func validID(id string) bool {
	return len(id) > 0 && len(id) <= 64 && strings.Trim(id, idAlphabet) == ""
}

func knownCause(c string) bool {
	switch c {
	case "", EndExit, EndOOMKilled, EndIdle, EndDeleted, EndShutdown:
		return true
	}
	return false
}

// apply registers the checked sessions and starts the live ones' reader
// and waiter, exactly as for a session started here.
func (m *Manager) apply(st *savedState, masters []*os.File, reaper *supervisor.Reaper) {
	m.created.Add(st.Created)
	m.dropped.Add(st.Dropped)
	for reason, n := range st.Ended {
		m.endings.add(reason, n)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range st.Sessions {
		e := &st.Sessions[i]
		s := m.restored(e, masters[i], reaper)
		m.sessions[s.id] = s
		if s.ended {
			m.ended = append(m.ended, s)
			m.armForgetLocked(s, durOr(e.ForgetLeft, m.cfg.KeepEnded))
			continue
		}
		m.live++
		m.run(s)
	}
	for len(m.ended) > m.cfg.MaxEnded {
		m.forgetLocked(m.ended[0])
	}
	for i := 0; i < len(m.ended)-keptOutputEnded; i++ {
		m.ended[i].releaseOutput()
	}
}

// durOr is *d (nil: def), at most def: a remaining time never outlasts
// this build's own timeout.
func durOr(d *time.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return min(*d, def)
}

// restored builds the session of e (its goroutines not started yet).
func (m *Manager) restored(e *savedSession, master *os.File, reaper *supervisor.Reaper) *Session {
	s := &Session{
		id: e.ID, token: e.Token, command: e.Command, args: e.Args, created: e.Created, pid: e.Pid,
		m: m, master: master, readerDone: make(chan struct{}), done: make(chan struct{}),
		progress: make(chan struct{}, 1), rows: uint16(e.Rows), cols: uint16(e.Cols),
		out: restoredRing(m.cfg.KeepOutput, e.OutStart, e.Output), clients: map[*client]struct{}{},
		killed: e.Killed, killCause: e.KillCause, oomKilled: e.OOMKilled,
	}
	s.log = m.log.With().Str("session", s.id).Int("pid", s.pid).Logger()
	if e.Ended {
		s.ended, s.exit, s.endedAt = true, e.Exit.exit(), e.EndedAt
		close(s.readerDone)
		close(s.done)
		return s
	}
	s.raw, _ = master.SyscallConn() // cannot fail for an *os.File
	switch {
	case e.Exit != nil:
		x := e.Exit.exit()
		s.gone = &x
	default:
		if s.proc = reaper.Adopted(e.Pid); s.proc == nil {
			s.log.Warn().Msg("pty session leader not adopted: its exit status is lost")
			s.gone = &supervisor.Exit{Code: lostExit, At: time.Now()}
		}
	}
	if s.killed {
		s.armKillLocked(durOr(e.KillLeft, m.cfg.KillGrace)) // s is not shared yet
	} else {
		s.armIdleLocked(durOr(e.IdleLeft, m.cfg.IdleTimeout))
	}
	return s
}

// restoredRing is a ring of max bytes holding data at [start, start+len):
// the same absolute offsets as before. Output beyond this build's max
// keeps its newest part (the replay then starts later, offsets unchanged).
func restoredRing(max int, start int64, data []byte) ring {
	if over := len(data) - max; over > 0 {
		start += int64(over)
		data = data[over:]
	}
	r := newRing(max)
	r.start, r.end = start, start
	r.write(data)
	return r
}
