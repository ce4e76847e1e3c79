package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// SweepResult is what the shutdown sweep did.
type SweepResult struct {
	Termed int           // processes sent SIGTERM
	Killed int           // processes still alive after the grace, sent SIGKILL
	Left   int           // processes that survived even SIGKILL (stuck in the kernel)
	Took   time.Duration // from the first SIGTERM to the last process gone
}

// killWait bounds how long we wait for SIGKILLed processes to be reaped;
// only a process stuck in uninterruptible sleep outlives it.
const killWait = 3 * time.Second

// Sweep ends every process of the sandbox: no new process may start
// through the reaper; SIGTERM to the process group of each process the
// agent started, then to every other process left (a
// process that called setsid has left its group); waits up to grace while
// the reaper reaps; SIGKILLs what is left.
//
// As PID 1 "every process" is everything in the pid namespace but us.
// Otherwise (a child subreaper under a runtime's init, or on a host) it is
// only our descendants: we never signal processes that are not ours.
func Sweep(r *Reaper, grace time.Duration, pid1 bool, log zerolog.Logger) SweepResult {
	log = log.With().Str("component", "shutdown").Logger()
	start := time.Now()
	var res SweepResult
	r.refuseStarts()
	for _, p := range r.Live() {
		_ = p.SignalGroup(syscall.SIGTERM)
		_ = p.Signal(syscall.SIGTERM) // a process that left its group
	}
	for _, pid := range sandboxPids(pid1) {
		if unix.Kill(pid, syscall.SIGTERM) == nil {
			res.Termed++
		}
	}
	log.Info().Int("processes", res.Termed).Dur("grace", grace).Msg("sent SIGTERM")
	left := waitGone(r, pid1, grace)
	if len(left) > 0 {
		for _, p := range r.Live() {
			_ = p.SignalGroup(syscall.SIGKILL)
		}
		for _, pid := range left {
			if unix.Kill(pid, syscall.SIGKILL) == nil {
				res.Killed++
			}
		}
		log.Warn().Int("processes", res.Killed).Ints("pids", head(left, 20)).Msg("grace over: sent SIGKILL")
		left = waitGone(r, pid1, killWait)
	}
	res.Left = len(left)
	res.Took = time.Since(start)
	if res.Left > 0 {
		log.Error().Int("processes", res.Left).Ints("pids", head(left, 20)).Msg("processes survive SIGKILL")
	}
	return res
}

// waitGone polls until no process but us is alive (zombies are dead: the
// reaper or their parent's exit takes them), or d passes. It returns the
// pids still alive.
func waitGone(r *Reaper, pid1 bool, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
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

// procInfo is what the sweep needs from /proc/<pid>/stat.
type procInfo struct {
	pid, ppid int
	state     byte
	kthread   bool
}

// pfKthread is PF_KTHREAD from the kernel's task flags: kernel threads
// show in /proc of a VM's PID 1 and must not be counted or signalled.
const pfKthread = 0x00200000

// sandboxPids lists the live processes the sweep owns: all but us and
// kernel threads as PID 1, else our descendants. Zombies are not listed.
func sandboxPids(pid1 bool) []int {
	self := os.Getpid()
	procs := readProcs("/proc")
	if !pid1 {
		procs = descendants(procs, self)
	}
	var out []int
	for _, p := range procs {
		if p.pid != self && !p.kthread && p.state != 'Z' && p.state != 'X' {
			out = append(out, p.pid)
		}
	}
	return out
}

func readProcs(dir string) []procInfo {
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	out := make([]procInfo, 0, len(names))
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		data, err := os.ReadFile(dir + "/" + n + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		if p, ok := parseStat(data); ok {
			out = append(out, p)
		}
	}
	return out
}

// parseStat reads pid, state, ppid and flags from a /proc/<pid>/stat line.
// The command name sits in parentheses and may hold spaces and ')', so
// fields are counted from the last ')'.
func parseStat(data []byte) (procInfo, bool) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 1 || end < open {
		return procInfo{}, false
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
	if err != nil {
		return procInfo{}, false
	}
	// After ") ": state ppid pgrp session tty_nr tpgid flags ...
	f := bytes.Fields(data[end+1:])
	if len(f) < 7 || len(f[0]) != 1 {
		return procInfo{}, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	flags, err2 := strconv.ParseUint(string(f[6]), 10, 64)
	if err1 != nil || err2 != nil {
		return procInfo{}, false
	}
	return procInfo{pid: pid, ppid: ppid, state: f[0][0], kthread: flags&pfKthread != 0}, true
}

// descendants returns the processes below root in the parent tree.
func descendants(procs []procInfo, root int) []procInfo {
	children := map[int][]procInfo{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p)
	}
	var out []procInfo
	queue := []int{root}
	seen := map[int]bool{root: true}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !seen[c.pid] {
				seen[c.pid] = true
				out = append(out, c)
				queue = append(queue, c.pid)
			}
		}
	}
	return out
}

// initialPidNSInode is the inode of the kernel's first pid namespace
// (PROC_PID_INIT_INO): a PID 1 there is a machine's init, not a
// container's.
const initialPidNSInode = 0xEFFFFFFC

// PowerOffIfVM powers the machine off when we are the init of a VM, whose
// exit would panic the kernel. In a container (any other pid namespace) it
// does nothing and the caller exits.
func PowerOffIfVM(log zerolog.Logger) {
	var st unix.Stat_t
	if unix.Stat("/proc/self/ns/pid", &st) != nil || st.Ino != initialPidNSInode {
		return
	}
	log.Info().Msg("init of a virtual machine: powering off")
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		log.Error().Err(err).Msg("power off failed")
	}
}
