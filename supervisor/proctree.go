package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The process tree: the agent's one reader of /proc/<pid>/stat (ParseStat),
// its one walker of /proc (Procs) and its one way to signal a set of
// processes (Kill with a Scope). The shutdown sweep, PTY sessions and the
// process table all end processes through it.

// Stat is what the agent reads of a process from /proc/<pid>/stat.
type Stat struct {
	Pid, PPid int
	Pgrp      int    // process group
	Session   int    // session id
	TTY       int    // tty_nr: the controlling terminal's device number, 0 for none
	State     byte   // R, S, D, T, Z, X, ...
	Flags     uint64 // the kernel's PF_* task flags
}

// pfKthread is PF_KTHREAD from the kernel's task flags: kernel threads
// show in /proc of a VM's PID 1 and must not be counted or signalled.
const pfKthread = 0x00200000

// Alive reports whether the process has not exited: a zombie is dead,
// waiting for its parent or the reaper.
func (s Stat) Alive() bool { return s.State != 'Z' && s.State != 'X' }

// KernelThread reports a kernel thread, which is never ours to signal.
func (s Stat) KernelThread() bool { return s.Flags&pfKthread != 0 }

// ParseStat reads a /proc/<pid>/stat line. The command name sits in
// parentheses and may hold spaces and ')', so fields are counted from the
// last ')'.
func ParseStat(data []byte) (Stat, bool) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 1 || end < open {
		return Stat{}, false
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(data[:open])))
	if err != nil {
		return Stat{}, false
	}
	// After ") ": state ppid pgrp session tty_nr tpgid flags ...
	f := bytes.Fields(data[end+1:])
	if len(f) < 7 || len(f[0]) != 1 {
		return Stat{}, false
	}
	var n [4]int
	for i := range n {
		if n[i], err = strconv.Atoi(string(f[1+i])); err != nil {
			return Stat{}, false
		}
	}
	flags, err := strconv.ParseUint(string(f[6]), 10, 64)
	if err != nil {
		return Stat{}, false
	}
	return Stat{Pid: pid, PPid: n[0], Pgrp: n[1], Session: n[2], TTY: n[3], State: f[0][0], Flags: flags}, true
}

// ReadStat reads the stat of pid; false when it is gone.
func ReadStat(pid int) (Stat, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, false
	}
	return ParseStat(data)
}

// Procs lists every process in /proc, zombies and kernel threads included
// (callers filter). A process that ends during the walk may be missing.
func Procs() []Stat { return procsIn("/proc") }

func procsIn(dir string) []Stat {
	d, err := os.Open(dir)
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	out := make([]Stat, 0, len(names))
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		data, err := os.ReadFile(dir + "/" + n + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		if p, ok := ParseStat(data); ok {
			out = append(out, p)
		}
	}
	return out
}

// descendants returns the processes below root in the parent tree.
func descendants(procs []Stat, root int) []Stat {
	children := map[int][]Stat{}
	for _, p := range procs {
		children[p.PPid] = append(children[p.PPid], p)
	}
	var out []Stat
	queue := []int{root}
	seen := map[int]bool{root: true}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !seen[c.Pid] {
				seen[c.Pid] = true
				out = append(out, c)
				queue = append(queue, c.Pid)
			}
		}
	}
	return out
}

// Scope names a set of processes: the union of the fields that are set
// (zero fields select nothing). containerd's shim Kill(sig, all) is the
// model: the caller says how far a signal reaches, the tree code finds
// the processes.
type Scope struct {
	Group       int    // the process group Group (a kill(-Group); > 1)
	Session     int    // every process of session Session (job control's groups included; > 1)
	Descendants int    // every process below Descendants in the parent tree, and itself
	Env         string // every process below the agent whose environment holds this KEY=VALUE entry
}

// killRounds bounds how often Kill rescans for SIGKILL: a process may
// fork while we scan, so rounds repeat while new victims appear.
const killRounds = 4

// Kill sends sig to every live process in any of the scopes and returns
// how many it signalled; one walk of /proc serves all the scopes. Never
// the agent itself, PID 1 or kernel threads. A SIGKILL is repeated while
// new processes in scope appear (up to killRounds walks); other signals
// go once to each. Best effort: a pid found by the walk may end, and in
// principle be reused, before the signal lands.
func Kill(sig syscall.Signal, scopes ...Scope) int {
	groups := map[int]bool{} // signalled with kill(-pgid)
	for _, sc := range scopes {
		if sc.Group > 1 {
			groups[sc.Group] = true
		}
		if sc.Session > 1 {
			groups[sc.Session] = true // the leader's own group
		}
	}
	hit := map[int]bool{}
	rounds := 1
	if sig == syscall.SIGKILL {
		rounds = killRounds
	}
	for round := 0; round < rounds; round++ {
		var victims []Stat
		procs := Procs()
		for _, sc := range scopes {
			victims = append(victims, sc.match(procs)...)
		}
		// After the walk, so a process forked meanwhile in the group is
		// reached too; and whatever /proc shows.
		for g := range groups {
			_ = unix.Kill(-g, sig)
		}
		fresh := 0
		for _, p := range victims {
			if groups[p.Pgrp] && !hit[p.Pid] {
				// The group kill reached it (the reaper may already have
				// reaped it, so a kill by pid could find nothing to count).
				hit[p.Pid] = true
				fresh++
			}
			if sig != syscall.SIGKILL && hit[p.Pid] {
				continue // once is enough
			}
			if unix.Kill(p.Pid, sig) == nil && !hit[p.Pid] {
				hit[p.Pid] = true
				fresh++
			}
		}
		if fresh == 0 {
			break
		}
	}
	return len(hit)
}

// match lists the live processes of procs in scope.
func (sc Scope) match(procs []Stat) []Stat {
	self := os.Getpid()
	var under map[int]bool
	if sc.Descendants > 0 {
		under = map[int]bool{sc.Descendants: true}
		for _, p := range descendants(procs, sc.Descendants) {
			under[p.Pid] = true
		}
	}
	var cookie []byte
	var ours map[int]bool // nil: every process visible is ours (PID 1)
	if sc.Env != "" {
		cookie = []byte(sc.Env + "\x00")
		// Not PID 1 (a subreaper in the host's pid namespace), other
		// programs' processes are visible too, and may carry the same
		// entry (another agent's handle 1): match only our own. Orphans of
		// ours are reparented to us, the subreaper, so they stay below.
		if self != 1 {
			ours = map[int]bool{}
			for _, p := range descendants(procs, self) {
				ours[p.Pid] = true
			}
		}
	}
	var out []Stat
	for _, p := range procs {
		if p.Pid == self || p.Pid == 1 || p.KernelThread() || !p.Alive() {
			continue
		}
		if (sc.Group > 1 && p.Pgrp == sc.Group) || (sc.Session > 1 && p.Session == sc.Session) ||
			under[p.Pid] || (cookie != nil && (ours == nil || ours[p.Pid]) && hasEnv(p.Pid, cookie)) {
			out = append(out, p)
		}
	}
	return out
}

// hasEnv reports whether pid's environment holds the entry (KEY=VALUE\0).
func hasEnv(pid int, entry []byte) bool {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	return bytes.HasPrefix(env, entry) || bytes.Contains(env, append([]byte{0}, entry...))
}
