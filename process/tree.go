package process

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// cookieEnv is set in every process the table starts, with the process's
// handle. Descendants inherit it, so a kill of the tree also finds those
// that left the process group (setsid) and were reparented to the agent
// after their parent died: ancestry alone cannot find them.
const cookieEnv = "TL_PROCESS_HANDLE"

// killTree sends SIGKILL to the process group led by pid, to every
// descendant of pid, and to every process carrying the handle's cookie.
// Rounds repeat while new victims appear, since a process may fork while
// we scan. Best effort: it never fails.
func killTree(pid, handle int) {
	cookie := []byte(cookieEnv + "=" + strconv.Itoa(handle) + "\x00")
	self := os.Getpid()
	for round := 0; round < 4; round++ {
		_ = unix.Kill(-pid, syscall.SIGKILL)
		victims := scanTree(pid, cookie, self)
		if len(victims) == 0 {
			return
		}
		for _, v := range victims {
			_ = unix.Kill(v, syscall.SIGKILL)
		}
	}
}

// scanTree lists live processes that descend from root or carry cookie.
func scanTree(root int, cookie []byte, self int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	var marked []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		ppid, state := statOf(pid)
		if ppid < 0 || state == 'Z' {
			continue
		}
		parent[pid] = ppid
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err == nil && (bytes.HasPrefix(env, cookie) || bytes.Contains(env, append([]byte{0}, cookie...))) {
			marked = append(marked, pid)
		}
	}
	var out []int
	for pid := range parent {
		for p, hops := pid, 0; p > 1 && hops < 64; p, hops = parent[p], hops+1 {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	seen := map[int]bool{}
	for _, p := range out {
		seen[p] = true
	}
	for _, p := range marked {
		if !seen[p] {
			out = append(out, p)
		}
	}
	return out
}

// statOf reads the parent pid and state of pid from /proc/<pid>/stat; -1
// when gone.
func statOf(pid int) (ppid int, state byte) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return -1, 0
	}
	// The command name is in parentheses and may hold spaces or ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return -1, 0
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 2 {
		return -1, 0
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return -1, 0
	}
	return ppid, f[0][0]
}

// oomCounter reads the oom_kill count of the agent's cgroup (v2, or the v1
// memory controller). A process
// that died of SIGKILL while that count rose is reported as OOM-killed.
// Best effort: sandbox processes share the agent's cgroup, so a kill of
// another process at the same moment could be misattributed, and without
// a cgroup file system mounted nothing is detected.
type oomCounter struct{ path string }

func newOOMCounter() oomCounter {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return oomCounter{}
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var p string
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			p = filepath.Join("/sys/fs/cgroup", rest, "memory.events")
		} else if _, rest, ok := strings.Cut(line, ":memory:"); ok {
			// cgroup v1: memory.oom_control has the same oom_kill line
			// (Linux 4.13 and later).
			p = filepath.Join("/sys/fs/cgroup/memory", rest, "memory.oom_control")
		}
		if _, err := os.Stat(p); p != "" && err == nil {
			return oomCounter{path: p}
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory.events"); err == nil {
		return oomCounter{path: "/sys/fs/cgroup/memory.events"}
	}
	return oomCounter{}
}

// count returns the oom_kill counter, or -1 when unknown.
func (o oomCounter) count() int64 {
	if o.path == "" {
		return -1
	}
	b, err := os.ReadFile(o.path)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}
