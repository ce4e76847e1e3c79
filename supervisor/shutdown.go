package supervisor

import (
	"os"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// SweepResult is what the shutdown sweep did.
type SweepResult struct {
	HungUp int           // processes on a terminal of their own, sent SIGHUP first
	Termed int           // processes sent SIGTERM
	Killed int           // processes still alive after the grace, sent SIGKILL
	Left   int           // processes that survived even SIGKILL (stuck in the kernel)
	Took   time.Duration // from the first signal to the last process gone
}

// The two phases of the shutdown, as the log names them.
const (
	// PhaseGraceful asks every process to end: SIGHUP to those on a
	// terminal (a hang-up), SIGTERM to all; it lasts until everything is
	// gone or the grace is over.
	PhaseGraceful = "graceful"
	// PhaseHard SIGKILLs what outlived the grace and waits up to killWait
	// for it to be reaped.
	PhaseHard = "hard"
)

// killWait bounds how long we wait for SIGKILLed processes to be reaped;
// only a process stuck in uninterruptible sleep outlives it.
const killWait = 3 * time.Second

// rehangEvery is how often the graceful phase hangs terminals up again.
const rehangEvery = 500 * time.Millisecond

// Sweep ends every process of the sandbox, in two phases. Capabilities do
// not run grace timers of their own: their Close, called after the sweep,
// only ends what is left at once and waits for its goroutines.
//
// Graceful: no new process may start through the reaper; SIGHUP (and
// SIGCONT, as a hang-up gives) to every process whose controlling terminal
// is not the agent's own, which is how PTY and SSH sessions learn their
// terminal is gone (an interactive shell ignores SIGTERM, and a hang-up
// also reaches its stopped jobs); then SIGTERM to the process group of
// each process the agent started and to every process left (a process that
// called setsid has left its group). It waits up to grace while the reaper
// reaps.
//
// Hard: SIGKILL to everything left.
//
// As PID 1 "every process" is everything in the pid namespace but us.
// Otherwise (a child subreaper under a runtime's init, or on a host) it is
// only our descendants: we never signal processes that are not ours.
func Sweep(r *Reaper, grace time.Duration, pid1 bool, log zerolog.Logger) SweepResult {
	log = log.With().Str("component", "shutdown").Logger()
	start := time.Now()
	res := graceful(r, pid1)
	log.Info().Str("phase", PhaseGraceful).Int("processes", res.Termed).Int("hung_up", res.HungUp).
		Dur("grace", grace).Msg("sent SIGTERM")
	left := waitGone(r, pid1, grace, func() { hangUp(sandboxProcs(pid1)) })
	if len(left) > 0 {
		res.Killed = hard(r, left)
		log.Warn().Str("phase", PhaseHard).Int("processes", res.Killed).Ints("pids", head(left, 20)).
			Msg("grace over: sent SIGKILL")
		left = waitGone(r, pid1, killWait, nil)
	}
	res.Left = len(left)
	res.Took = time.Since(start)
	if res.Left > 0 {
		log.Error().Int("processes", res.Left).Ints("pids", head(left, 20)).Msg("processes survive SIGKILL")
	}
	return res
}

// graceful refuses new starts and sends the graceful phase's signals.
// hangUp sends SIGHUP (and SIGCONT) to every process on a terminal other
// than the agent's own, as a terminal's hang-up does, and counts them.
func hangUp(procs []Stat) int {
	own, _ := ReadStat(os.Getpid())
	n := 0
	for _, p := range procs {
		if p.TTY != 0 && p.TTY != own.TTY && unix.Kill(p.Pid, syscall.SIGHUP) == nil {
			_ = unix.Kill(p.Pid, syscall.SIGCONT)
			n++
		}
	}
	return n
}

func graceful(r *Reaper, pid1 bool) SweepResult {
	var res SweepResult
	r.refuseStarts()
	procs := sandboxProcs(pid1)
	res.HungUp = hangUp(procs)
	for _, p := range r.Live() {
		_ = p.SignalGroup(syscall.SIGTERM)
		_ = p.Signal(syscall.SIGTERM) // a process that left its group
	}
	for _, p := range procs {
		if unix.Kill(p.Pid, syscall.SIGTERM) == nil {
			res.Termed++
		}
	}
	return res
}

// hard SIGKILLs the groups the agent started and the pids left, and
// returns how many of those it reached.
func hard(r *Reaper, left []int) int {
	for _, p := range r.Live() {
		_ = p.SignalGroup(syscall.SIGKILL)
	}
	n := 0
	for _, pid := range left {
		if unix.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// waitGone polls until no process but us is alive (zombies are dead: the
// reaper or their parent's exit takes them), or d passes. It returns the
// pids still alive.
//
// again, when set, runs every rehangEvery meanwhile: an interactive shell
// that takes the hang-up while it starts (bash between its exec and
// installing its handlers) can miss it and wait out the whole grace
// ignoring SIGTERM, so terminals are hung up again.
func waitGone(r *Reaper, pid1 bool, d time.Duration, again func()) []int {
	deadline := time.Now().Add(d)
	next := time.Now().Add(rehangEvery)
	for {
		if again != nil && time.Now().After(next) {
			again()
			next = time.Now().Add(rehangEvery)
		}
		left := sandboxPids(pid1)
		if len(left) == 0 && r.liveCount() == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return left
		}
		r.Kick() // reap now rather than at the next SIGCHLD
		time.Sleep(20 * time.Millisecond)
	}
}

func head(s []int, n int) []int {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// sandboxProcs lists the live processes the sweep owns: all but us and
// kernel threads as PID 1, else our descendants. Zombies are not listed.
func sandboxProcs(pid1 bool) []Stat {
	self := os.Getpid()
	procs := Procs()
	if !pid1 {
		procs = descendants(procs, self)
	}
	out := procs[:0]
	for _, p := range procs {
		if p.Pid != self && !p.KernelThread() && p.Alive() {
			out = append(out, p)
		}
	}
	return out
}

// sandboxPids is sandboxProcs' pids.
func sandboxPids(pid1 bool) []int {
	procs := sandboxProcs(pid1)
	out := make([]int, len(procs))
	for i, p := range procs {
		out[i] = p.Pid
	}
	return out
}

// initialPidNSInode is the inode of the kernel's first pid namespace
// (PROC_PID_INIT_INO): a PID 1 there is a machine's init, not a
// container's.
const initialPidNSInode = 0xEFFFFFFC

// InitialPidNS tells whether this process is in the kernel's first pid
// namespace: as PID 1, the init of a (virtual) machine.
func InitialPidNS() bool {
	var st unix.Stat_t
	return unix.Stat("/proc/self/ns/pid", &st) == nil && st.Ino == initialPidNSInode
}

// PowerOffIfVM powers the machine off when we are the init of a VM, whose
// exit would panic the kernel. In a container (any other pid namespace) it
// does nothing and the caller exits.
func PowerOffIfVM(log zerolog.Logger) {
	if !InitialPidNS() {
		return
	}
	log.Info().Msg("init of a virtual machine: powering off")
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		log.Error().Err(err).Msg("power off failed")
	}
}
