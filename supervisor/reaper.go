// Package supervisor owns the agent's duties as the sandbox's first
// process: reaping, signals and orderly shutdown, the mounts a bare VM
// lacks, and provisioning of the sandbox user and host name.
package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/threads"
)

// Reaper is the one owner of waiting in the agent.
//
// Go inits classically break exit codes by reaping with wait4(-1) beside
// exec.Cmd.Wait, which then fails with ECHILD. Here nobody but the Reaper
// waits: processes are started through Reaper.Start, which registers the
// pid before the reaper can look it up, and the reaper hands each exit to
// its Proc (containerd's sys/reaper design). Exits of processes nobody
// registered (orphans reparented to us) are reaped and counted.
//
// Because exec.Cmd.Wait is never called, commands must use *os.File (or
// nil) for stdio: os/exec's copying goroutines are joined only by Wait.
type Reaper struct {
	log     zerolog.Logger
	reapAll bool
	oom     *OOMCounter

	mu      sync.Mutex
	subs    map[int]*Proc  // guarded by mu; pid -> live process we started
	closing bool           // guarded by mu; set by the shutdown: no new starts
	closed  bool           // guarded by mu; set by Close: Run may not start
	running sync.WaitGroup // Run; Add only under mu while !closed

	kick chan struct{} // asks Run to reap now
	quit chan struct{} // closed by Close: Run returns

	adopted map[int]*Proc // guarded by mu; pid -> Proc adopted, until Adopted takes it

	// reapMu is held by each reaping pass; paused (guarded by it) makes
	// the passes do nothing, so exits wait as zombies (Pause).
	reapMu sync.Mutex
	paused bool

	orphans atomic.Int64
	started atomic.Int64
}

// Exit is how a process ended.
type Exit struct {
	Code   int            // exit status when exited normally
	Signal syscall.Signal // terminating signal, 0 when exited normally
	Core   bool
	At     time.Time
	MaxRSS int64 // kilobytes, from rusage
	// OOMKilled: SIGKILLed while the cgroup's OOM kill count rose (see
	// OOMCounter; a kill the agent sent itself looks the same, so callers
	// that killed the process ignore it).
	OOMKilled bool
}

// ExitCode follows the shell convention: 128+signal for a signaled process.
func (e Exit) ExitCode() int {
	if e.Signal != 0 {
		return 128 + int(e.Signal)
	}
	return e.Code
}

// String describes the exit for logs and errors.
func (e Exit) String() string {
	if e.Signal != 0 {
		return "signal " + unix.SignalName(e.Signal)
	}
	return fmt.Sprintf("exit %d", e.Code)
}

// Proc is a process started through the Reaper.
type Proc struct {
	Cmd  *exec.Cmd
	Pid  int
	done chan struct{}
	exit Exit  // written once before done is closed
	oom  int64 // the OOM kill count at start, -1 when unknown
}

// PID is the process's pid (launch.Started).
func (p *Proc) PID() int { return p.Pid }

// Done is closed when the process has been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait blocks until the process has been reaped and returns its exit.
func (p *Proc) Wait() Exit {
	<-p.done
	return p.exit
}

// Exited returns the exit and true once reaped.
func (p *Proc) Exited() (Exit, bool) {
	select {
	case <-p.done:
		return p.exit, true
	default:
		return Exit{}, false
	}
}

// Signal sends sig to the process (not its group). Through the pidfd os/exec
// holds, so a reaped pid that was reused is never hit.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return p.Cmd.Process.Signal(sig)
}

// SignalGroup sends sig to the process group led by the process, which is
// how a session's background children are reached.
func (p *Proc) SignalGroup(sig syscall.Signal) error {
	return unix.Kill(-p.Pid, sig)
}

// NewReaper returns a reaper. With reapAll, it reaps every child of the
// agent (its role as PID 1 or child subreaper); without, only processes
// started through it, which is what tests running inside `go test` need.
func NewReaper(log zerolog.Logger, reapAll bool) *Reaper {
	return &Reaper{
		log: log.With().Str("component", "reaper").Logger(), reapAll: reapAll, oom: NewOOMCounter(),
		subs: map[int]*Proc{}, adopted: map[int]*Proc{}, kick: make(chan struct{}, 1), quit: make(chan struct{}),
	}
}

// OOM is the reaper's OOM detector (the agent adds the workload's file).
func (r *Reaper) OOM() *OOMCounter { return r.oom }

// ErrStdio is returned by Start for stdio that is not an *os.File.
var ErrStdio = errors.New("reaper: stdio must be *os.File or nil")

// ErrShuttingDown is returned by Start once the shutdown sweep has begun:
// a process started then would miss its SIGTERM.
var ErrShuttingDown = errors.New("reaper: the sandbox is shutting down")

// Start starts cmd and registers it. Never call cmd.Wait.
func (r *Reaper) Start(cmd *exec.Cmd) (*Proc, error) {
	for _, f := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		switch f.(type) {
		case nil, *os.File:
		default:
			if f != nil {
				return nil, ErrStdio
			}
		}
	}
	// No user process before the agent holds its threads (internal/threads:
	// the reserve is made in the background at start).
	threads.WaitReserve()
	oom := r.oom.Count()
	// Holding mu across fork and registration means the reaper, which
	// looks pids up under mu, cannot miss a child that exits at once.
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return nil, ErrShuttingDown
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, Pid: cmd.Process.Pid, done: make(chan struct{}), oom: oom}
	r.subs[p.Pid] = p
	r.started.Add(1)
	return p, nil
}

// Adopt registers pid, a child of this process that it did not start
// here: a live upgrade's predecessor started it before it exec'd this
// binary (internal/handover). Call it before Run first reaps, or an exit
// in between is counted as an orphan's. A pid that is not our child is
// refused: the state named a process we cannot wait for.
func (r *Reaper) Adopt(pid int) (*Proc, error) {
	if ppid, err := parentOf(pid); err != nil || ppid != os.Getpid() {
		if err == nil {
			err = fmt.Errorf("reaper: pid %d is not a child of this process (parent %d)", pid, ppid)
		}
		return nil, err
	}
	proc, err := os.FindProcess(pid) // a pidfd: a reused pid is never signalled
	if err != nil {
		return nil, err
	}
	p := &Proc{Cmd: &exec.Cmd{Process: proc}, Pid: pid, done: make(chan struct{}), oom: r.oom.Count()}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.subs[pid]; dup {
		return nil, fmt.Errorf("reaper: pid %d adopted twice", pid)
	}
	r.subs[pid] = p
	r.adopted[pid] = p
	r.started.Add(1)
	return p, nil
}

// Adopted hands out the Proc adopted for pid, once (nil when pid was not
// adopted or was taken already). The capability that owns the process
// takes it while it restores its tables.
func (r *Reaper) Adopted(pid int) *Proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.adopted[pid]
	delete(r.adopted, pid)
	return p
}

// parentOf reads pid's parent from /proc/PID/stat (the field after the
// command name, which may itself hold spaces and parentheses).
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("reaper: /proc/%d/stat unreadable", pid)
	}
	var state byte
	var ppid int
	if _, err := fmt.Sscanf(string(b[i+1:]), " %c %d", &state, &ppid); err != nil {
		return 0, fmt.Errorf("reaper: /proc/%d/stat: %w", pid, err)
	}
	return ppid, nil
}

// Stats reports counts for the operator's status.
func (r *Reaper) Stats() (live int, started, orphans int64) {
	r.mu.Lock()
	live = len(r.subs)
	r.mu.Unlock()
	return live, r.started.Load(), r.orphans.Load()
}

// refuseStarts makes every later Start fail with ErrShuttingDown.
func (r *Reaper) refuseStarts() {
	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
}

// Live returns the processes started through the reaper that have not
// been reaped yet.
func (r *Reaper) Live() []*Proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Proc, 0, len(r.subs))
	for _, p := range r.subs {
		out = append(out, p)
	}
	return out
}

func (r *Reaper) liveCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.subs)
}

// Close refuses new starts, ends Run after a last pass and returns once
// it has returned. It is the last step of the agent's shutdown: after it,
// an exit is never delivered, so nothing may still wait on a Proc. Safe
// to call twice, and without Run.
func (r *Reaper) Close() {
	r.mu.Lock()
	r.closing = true
	if !r.closed {
		r.closed = true
		close(r.quit)
	}
	r.mu.Unlock()
	r.running.Wait()
}

// Pause stops reaping until Resume: once it returns no pass is running
// and none will wait for a child, so every exit stays a zombie for the
// next reaper (a live upgrade's new binary adopts the pids and reaps
// them; internal/handover). Starts still work.
func (r *Reaper) Pause() {
	r.reapMu.Lock()
	r.paused = true
	r.reapMu.Unlock()
}

// Resume undoes Pause and reaps at once what exited meanwhile.
func (r *Reaper) Resume() {
	r.reapMu.Lock()
	r.paused = false
	r.reapMu.Unlock()
	r.Kick()
}

// Kick makes Run reap at once, as if SIGCHLD had arrived.
func (r *Reaper) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reaps until stop is closed (nil: never) or Close is called. It must
// be running before any Start.
func (r *Reaper) Run(stop <-chan struct{}) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.running.Add(1)
	r.mu.Unlock()
	defer r.running.Done()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	// A periodic sweep covers a SIGCHLD coalesced with one that arrived
	// while we were between wait calls.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.reap()
		select {
		case <-stop:
			r.reap() // what exited since the last pass
			return
		case <-r.quit:
			r.reap()
			return
		case <-sigs:
		case <-r.kick:
		case <-tick.C:
		}
	}
}

func (r *Reaper) reap() {
	r.reapMu.Lock()
	defer r.reapMu.Unlock()
	if r.paused {
		return
	}
	if !r.reapAll {
		r.reapOwn()
		return
	}
	orphans := 0
	for {
		var ws unix.WaitStatus
		var ru unix.Rusage
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, &ru)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			break
		}
		if !r.deliver(pid, ws, &ru) {
			orphans++
		}
	}
	if orphans > 0 {
		// One line per sweep, not per orphan: a fork storm must not
		// become a log storm.
		r.log.Debug().Int("count", orphans).Msg("reaped orphans")
	}
}

// reapOwn waits only for registered pids.
func (r *Reaper) reapOwn() {
	r.mu.Lock()
	pids := make([]int, 0, len(r.subs))
	for pid := range r.subs {
		pids = append(pids, pid)
	}
	r.mu.Unlock()
	for _, pid := range pids {
		var ws unix.WaitStatus
		var ru unix.Rusage
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, &ru)
		if err == nil && got == pid {
			r.deliver(pid, ws, &ru)
		}
	}
}

// deliver hands an exit to the process's Proc and reports whether it was
// one of ours.
func (r *Reaper) deliver(pid int, ws unix.WaitStatus, ru *unix.Rusage) bool {
	if !ws.Exited() && !ws.Signaled() {
		return true // stopped or continued: not an exit
	}
	r.mu.Lock()
	p := r.subs[pid]
	delete(r.subs, pid)
	r.mu.Unlock()
	if p == nil {
		r.orphans.Add(1)
		return false
	}
	e := Exit{At: time.Now(), MaxRSS: ru.Maxrss}
	if ws.Exited() {
		e.Code = ws.ExitStatus()
	} else {
		e.Signal = ws.Signal()
		e.Core = ws.CoreDump()
		e.OOMKilled = e.Signal == syscall.SIGKILL && p.oom >= 0 && r.oom.Count() > p.oom
	}
	p.exit = e
	_ = p.Cmd.Process.Release() // closes the pidfd; the pid is already reaped
	close(p.done)
	return true
}
