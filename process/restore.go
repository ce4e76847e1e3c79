package process

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Restore rebuilds the table from r's section, in the new binary before
// it serves, on a fresh table (Save's other half, handover.go). Every
// entry is checked first; a refused section changes nothing. With
// r.DryRun() (the pre-flight) it only checks. A missing section is an
// empty table.
//
// A live leader's Proc comes from reaper.Adopted; none (the agent could
// not adopt the pid) means it ended during the hand-over and its exit is
// unknown: the entry's output is still read to its end, then it shows
// status exited with exit_code and signal null, and a supervisor counts
// it as a failure. Then every entry gets the goroutines one started here
// has: capturers (completing the partial line the old one held), the exit
// watcher, a run's timeout, the supervisors' restart timers (the back-off
// left) and health loops (the next check an interval on).
func (t *Table) Restore(r *handover.Reader, reaper *supervisor.Reaper) error {
	var st savedTable
	if ok, err := r.Section(Section, &st); err != nil || !ok {
		return err
	}
	t.mu.Lock()
	used := len(t.byPid) + len(t.byName)
	t.mu.Unlock()
	if used > 0 {
		return errSection("restore into a table in use")
	}
	if err := newChecker(r, &st).check(); err != nil {
		return err
	}
	if r.DryRun() {
		return nil
	}
	files, err := st.takeFiles(r)
	if err != nil {
		// Taken files stay open (never collected): a rollback hands
		// every kept fd back to the old binary.
		for _, f := range files {
			t.keep = append(t.keep, f)
		}
		return err
	}
	t.apply(&st, files, reaper)
	return nil
}

// checker checks a section before anything of it is applied.
type checker struct {
	r       *handover.Reader
	st      *savedTable
	handles map[int]*savedProc
	pids    map[int]bool
	refs    map[handover.Ref]bool
	live    map[int]bool
	names   map[string]bool
}

func newChecker(r *handover.Reader, st *savedTable) *checker {
	c := &checker{r: r, st: st, handles: map[int]*savedProc{}, pids: map[int]bool{},
		refs: map[handover.Ref]bool{}, live: map[int]bool{}, names: map[string]bool{}}
	for _, pid := range r.Pids() {
		c.live[pid] = true
	}
	return c
}

func (c *checker) check() error {
	if c.st.Version != sectionVersion {
		return errSection("version %d, this build reads %d", c.st.Version, sectionVersion)
	}
	for i := range c.st.Procs {
		if err := c.proc(&c.st.Procs[i]); err != nil {
			return err
		}
	}
	for i := range c.st.Managed {
		if err := c.managed(i, &c.st.Managed[i]); err != nil {
			return err
		}
	}
	return nil
}

func (c *checker) proc(sp *savedProc) error {
	switch {
	case sp.Handle <= 0 || c.handles[sp.Handle] != nil:
		return errSection("entry with handle %d: missing or twice", sp.Handle)
	case sp.Pid <= 0 || sp.Listed && c.pids[sp.Pid]:
		return errSection("entry %d: pid %d missing or listed twice", sp.Handle, sp.Pid)
	case sp.Managed < 0 || sp.Managed > len(c.st.Managed):
		return errSection("entry %d: no supervisor %d", sp.Handle, sp.Managed)
	case btoi(sp.Live)+btoi(sp.LeaderExit != nil)+btoi(sp.Ended != nil) != 1:
		return errSection("entry %d: not exactly one of live, leader exit, ended", sp.Handle)
	case sp.Live && !c.live[sp.Pid]:
		return errSection("entry %d: live pid %d is not among the state's pids", sp.Handle, sp.Pid)
	case sp.Ended != nil && (sp.Stdin != nil || len(sp.Pipes) > 0):
		return errSection("entry %d: ended with pipes", sp.Handle)
	case sp.Stdin != nil && !sp.Spec.StdinPipe:
		return errSection("entry %d: a stdin pipe without stdin_mode pipe", sp.Handle)
	}
	c.handles[sp.Handle] = sp
	if sp.Listed {
		c.pids[sp.Pid] = true
	}
	if err := checkSpec(&sp.Spec); err != nil {
		return errSection("entry %d: %v", sp.Handle, err)
	}
	if err := checkLog(&sp.Out); err != nil {
		return errSection("entry %d: output: %v", sp.Handle, err)
	}
	return c.procFiles(sp)
}

func (c *checker) procFiles(sp *savedProc) error {
	if sp.Stdin != nil {
		if err := c.ref(*sp.Stdin); err != nil {
			return errSection("entry %d: stdin: %v", sp.Handle, err)
		}
	}
	streams := map[string]bool{}
	for _, pp := range sp.Pipes {
		if !validStream(pp.Stream) || streams[pp.Stream] {
			return errSection("entry %d: pipe of stream %q", sp.Handle, pp.Stream)
		}
		streams[pp.Stream] = true
		if err := c.ref(pp.File); err != nil {
			return errSection("entry %d: %s: %v", sp.Handle, pp.Stream, err)
		}
	}
	return nil
}

// ref checks that a kept fd is named once (and, in the pre-flight, that
// the state has it; the real restore's File checks that).
func (c *checker) ref(ref handover.Ref) error {
	if c.refs[ref] {
		return fmt.Errorf("file %d named twice", ref)
	}
	c.refs[ref] = true
	if c.r.DryRun() {
		_, err := c.r.File(ref)
		return err
	}
	return nil
}

func (c *checker) managed(i int, sm *savedManaged) error {
	bad := func(what string, args ...any) error {
		return errSection("supervisor %q: "+what, append([]any{sm.ID}, args...)...)
	}
	switch {
	case sm.ID == "" || sm.Named && validName(sm.ID) != nil:
		return bad("bad id")
	case sm.ByName && c.names[sm.ID]:
		return bad("twice")
	case !oneOf(sm.Status, mStarting, mRunning, mBackingOff, mStopped):
		return bad("status %q", sm.Status)
	case !oneOf(sm.HealthStatus, hDisabled, hStarting, hHealthy, hUnhealthy):
		return bad("health status %q", sm.HealthStatus)
	case sm.Restarts < 0 || sm.Backoffs < 0 || sm.HealthFails < 0 || sm.RanPaused < 0:
		return bad("negative counter")
	case sm.RestartIn != nil && *sm.RestartIn < 0:
		return bad("negative back-off")
	case sm.Current != 0 && (c.handles[sm.Current] == nil || c.handles[sm.Current].Managed != i+1):
		return bad("current instance %d is not its own", sm.Current)
	}
	if sm.ByName {
		c.names[sm.ID] = true
	}
	if _, err := normalizeRestart(&sm.Policy); err != nil {
		return bad("%v", err)
	}
	if sm.Health != nil {
		if _, err := normalizeHealth(sm.Health); err != nil {
			return bad("%v", err)
		}
	}
	if err := checkSpec(&sm.Spec); err != nil {
		return bad("%v", err)
	}
	return nil
}

// checkSpec checks what a start needs: the command, absolute paths, an
// environment of NAME=value.
func checkSpec(s *savedSpec) error {
	switch {
	case s.Command == "" || strings.ContainsRune(s.Command, 0):
		return fmt.Errorf("bad command %q", s.Command)
	case !filepath.IsAbs(s.Path) || !filepath.IsAbs(s.Dir):
		return fmt.Errorf("program %q or folder %q is not absolute", s.Path, s.Dir)
	}
	for _, a := range s.Args {
		if strings.ContainsRune(a, 0) {
			return fmt.Errorf("an argument holds a NUL byte")
		}
	}
	for _, kv := range s.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsRune(kv, 0) {
			return fmt.Errorf("bad environment entry %q", kv)
		}
	}
	return nil
}

// checkLog checks the ring's numbering: consecutive lines ending at Next,
// each stream's numbers rising below its count.
func checkLog(sl *savedLog) error {
	n := uint64(len(sl.Lines))
	if n > sl.Next || sl.Dropped != sl.Next-n {
		return fmt.Errorf("%d lines, next %d, dropped %d", n, sl.Next, sl.Dropped)
	}
	var seen [2]bool
	var last [2]uint64
	for i, l := range sl.Lines {
		si := streamIndex(l.Stream)
		switch {
		case l.Seq != sl.Dropped+uint64(i):
			return fmt.Errorf("line %d has seq %d", i, l.Seq)
		case !validStream(l.Stream):
			return fmt.Errorf("line %d: stream %q", l.Seq, l.Stream)
		case l.Text != "" && l.Raw != nil:
			return fmt.Errorf("line %d: both text and raw", l.Seq)
		case l.N >= sl.StreamNext[si] || seen[si] && l.N <= last[si]:
			return fmt.Errorf("line %d: %s number %d out of order", l.Seq, l.Stream, l.N)
		}
		seen[si], last[si] = true, l.N
	}
	return nil
}

func validStream(s string) bool { return s == Stdout || s == Stderr }

func oneOf(s string, set ...string) bool {
	for _, v := range set {
		if s == v {
			return true
		}
	}
	return false
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// takeFiles takes every kept fd of the section (what it took so far on
// an error).
func (st *savedTable) takeFiles(r *handover.Reader) (map[handover.Ref]*os.File, error) {
	files := map[handover.Ref]*os.File{}
	take := func(ref handover.Ref) error {
		f, err := r.File(ref)
		if err == nil {
			files[ref] = f
		}
		return err
	}
	for _, sp := range st.Procs {
		if sp.Stdin != nil {
			if err := take(*sp.Stdin); err != nil {
				return files, err
			}
		}
		for _, pp := range sp.Pipes {
			if err := take(pp.File); err != nil {
				return files, err
			}
		}
	}
	return files, nil
}

// apply builds the checked section into t and starts its goroutines.
func (t *Table) apply(st *savedTable, files map[handover.Ref]*os.File, reaper *supervisor.Reaper) {
	ms := make([]*managed, len(st.Managed))
	for i := range st.Managed {
		ms[i] = t.restoreManaged(&st.Managed[i])
	}
	procs := make([]*Process, len(st.Procs))
	byHandle := map[int]*Process{}
	for i := range st.Procs {
		sp := &st.Procs[i]
		p := t.restoreProc(sp, files, reaper)
		if sp.Managed > 0 {
			p.managed = ms[sp.Managed-1]
		}
		procs[i], byHandle[sp.Handle] = p, p
	}
	t.enter(st, procs, ms)
	for i, m := range ms {
		m.resume(&st.Managed[i], byHandle[st.Managed[i].Current])
	}
	for _, p := range procs {
		if !p.ended {
			p.armRunDeadline() // before the watcher, which stops it
			p.startCaptures()
			t.startWatch(p)
		}
	}
}

// enter puts the restored entries and supervisors in the table.
func (t *Table) enter(st *savedTable, procs []*Process, ms []*managed) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.nextHandle, t.nextManaged = max(st.NextHandle, 1), st.NextManaged
	for i, p := range procs {
		t.nextHandle = max(t.nextHandle, p.handle+1)
		if !p.ended {
			t.live++
		}
		if st.Procs[i].Listed {
			p.hold()
			t.byPid[p.pid] = p
		}
	}
	for i, m := range ms {
		if st.Managed[i].ByName {
			t.byName[m.id] = m
		}
	}
}

func (t *Table) restoreProc(sp *savedProc, files map[handover.Ref]*os.File, reaper *supervisor.Reaper) *Process {
	p := &Process{
		t: t, handle: sp.Handle, pid: sp.Pid, spec: restoreSpec(&sp.Spec), startedAt: sp.StartedAt,
		out: restoreLog(&sp.Out, t.cfg, t.budget), done: make(chan struct{}), run: sp.Run, runDeadline: sp.RunDeadline,
	}
	p.endLog = &t.log
	switch {
	case sp.Ended != nil:
		p.ended, p.exit, p.oom, p.lost = true, restoreExit(sp.Ended.Exit), sp.Ended.OOM, sp.Ended.Lost
		p.endedAt, p.fdsClosed = p.exit.At, true
		p.out.close()
		close(p.done)
		return p
	case sp.LeaderExit != nil:
		e := restoreExit(*sp.LeaderExit)
		p.leaderExit = &e
	default:
		if p.proc = reaper.Adopted(sp.Pid); p.proc == nil {
			t.log.Warn().Int("pid", sp.Pid).Int("handle", sp.Handle).Msg("process not adopted after the upgrade: its exit is unknown")
			p.leaderExit, p.lost = &supervisor.Exit{At: time.Now()}, true
		}
	}
	if sp.Stdin != nil {
		p.stdin, p.stdinPipe = files[*sp.Stdin], files[*sp.Stdin]
		p.stdinOpen.Store(true)
	}
	for _, pp := range sp.Pipes {
		p.addCapture(files[pp.File], pp.Stream, pp.Partial)
		p.caps[len(p.caps)-1].cut.Store(pp.Cut)
	}
	return p
}

// armRunDeadline kills a restored run at its timeout, as its request
// would have.
func (p *Process) armRunDeadline() {
	if !p.run || p.runDeadline.IsZero() {
		return
	}
	p.deadline = time.AfterFunc(max(0, time.Until(p.runDeadline)), func() {
		p.t.log.Info().Int("pid", p.pid).Msg("run timed out after an upgrade: killing the tree")
		p.kill()
	})
}

func restoreSpec(ss *savedSpec) *spec {
	u := ss.User
	return &spec{
		command: ss.Command, args: ss.Args, path: ss.Path, dir: ss.Dir, env: ss.Env, user: &u,
		attr:      &syscall.SysProcAttr{Credential: u.Credential(), Setpgid: ss.Setpgid, Setsid: ss.Setsid},
		stdinPipe: ss.StdinPipe, stdoutKeep: ss.StdoutKeep, stderrKeep: ss.StderrKeep,
	}
}

func restoreExit(se savedExit) supervisor.Exit {
	return supervisor.Exit{Code: se.Code, Signal: syscall.Signal(se.Signal), Core: se.Core, At: se.At, MaxRSS: se.MaxRSS, OOMKilled: se.OOMKilled}
}

// restoreLog rebuilds a ring from its saved lines, charged to budget.
func restoreLog(sl *savedLog, cfg Config, b *budget) *outputLog {
	l := newOutputLog(cfg.MaxLines, cfg.MaxBytes, b)
	if len(sl.Lines) > 0 {
		l.lines = make([]Line, len(sl.Lines))
	}
	for i, s := range sl.Lines {
		text := s.Text
		if s.Raw != nil {
			text = string(s.Raw)
		}
		l.lines[i] = Line{Seq: s.Seq, N: s.N, Stream: s.Stream, Text: text, At: s.At}
		l.bytes += len(text)
	}
	l.n, l.next, l.dropped, l.streamNext = len(sl.Lines), sl.Next, sl.Dropped, sl.StreamNext
	b.add(l.bytes)
	if sl.Closed {
		l.close()
	}
	return l
}

func (t *Table) restoreManaged(sm *savedManaged) *managed {
	m := &managed{
		t: t, id: sm.ID, named: sm.Named, spec: restoreSpec(&sm.Spec), policy: sm.Policy, health: sm.Health,
		status: sm.Status, restarts: sm.Restarts, healthStatus: sm.HealthStatus, healthFails: sm.HealthFails,
		lastExit: sm.LastExit, lastErr: sm.LastError, stopped: sm.Stopped,
	}
	m.backoff = m.policy.backoff()
	// The wait grows no more past its cap: a long crash loop replays in
	// at most 64 steps.
	for range min(sm.Backoffs, 64) {
		m.backoff.Next()
	}
	paused, _ := m.clock().Paused()
	m.pausedAt = paused - sm.RanPaused
	return m
}

// resume makes cur the current instance and re-arms the supervisor: the
// restart it had due, the current instance's health loop.
func (m *managed) resume(sm *savedManaged, cur *Process) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setCurrentLocked(cur)
	if sm.RestartIn != nil && !m.stopped {
		m.armLocked(*sm.RestartIn)
	}
	m.resumeHealthLocked()
}
