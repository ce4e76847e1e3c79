package supervisor

import (
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
)

// OOMCounter is the agent's one OOM detector: it reads the OOM killer's
// kill count (oom_kill) of the agent's memory cgroup, memory.events under
// cgroup v2 or memory.oom_control under v1 (Linux 4.13 and later). The
// reaper takes the count when it starts a process and again when that
// process dies of SIGKILL: a rise means the OOM killer did it
// (Exit.OOMKilled). Sandbox processes share the agent's cgroup, so an OOM
// kill of another process at the same moment is misattributed; without a
// cgroup file system nothing is detected.
type OOMCounter struct {
	file  string
	extra atomic.Pointer[string] // the workload cgroup's counter (AddFile)
}

// AddFile makes Count add the count in file (the workload cgroup's: under
// cgroup v1 a kill counts only in the victim's own cgroup).
func (o *OOMCounter) AddFile(file string) {
	if readOOMKills(file) >= 0 {
		o.extra.Store(&file)
	}
}

// NewOOMCounter finds the agent's counter file, or none.
func NewOOMCounter() *OOMCounter {
	cg, _ := os.ReadFile("/proc/self/cgroup")
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	return &OOMCounter{file: oomFile(string(cg), string(mi), func(f string) bool { return readOOMKills(f) >= 0 })}
}

// File is the file the counter reads, "" when there is none.
func (o *OOMCounter) File() string { return o.file }

// Count returns the oom_kill count, or -1 when unknown.
func (o *OOMCounter) Count() int64 {
	n := int64(-1)
	if o.file != "" {
		n = readOOMKills(o.file)
	}
	if f := o.extra.Load(); f != nil {
		if m := readOOMKills(*f); m >= 0 {
			n = max(n, 0) + m
		}
	}
	return n
}

func readOOMKills(file string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}

// cgroupMount is a cgroup file system mount: the cgroup it shows at its
// mount point (root), and where.
type cgroupMount struct{ root, at string }

// oomFile picks the counter file from /proc/self/cgroup and
// /proc/self/mountinfo; usable tells whether a candidate holds an
// oom_kill count. Under cgroup v1 in a container /proc/self/cgroup names
// the host's path (/docker/<id>) while the container's mount shows its own
// cgroup at the mount point, so the path is taken relative to the mount's
// root, and the mount point itself is tried last.
func oomFile(cgroup, mountinfo string, usable func(string) bool) string {
	v2, v1 := cgroupMounts(mountinfo)
	var cands []string
	add := func(m cgroupMount, cg, name string) {
		cands = append(cands, path.Join(m.at, relTo(m, cg), name), path.Join(m.at, name))
	}
	for _, line := range strings.Split(strings.TrimSpace(cgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			add(v2, parts[2], "memory.events")
		} else if hasWord(parts[1], ",", "memory") {
			add(v1, parts[2], "memory.oom_control")
		}
	}
	for _, c := range cands {
		if usable(c) {
			return c
		}
	}
	return ""
}

// relTo is cgroup path cg relative to mount m's root.
func relTo(m cgroupMount, cg string) string {
	switch {
	case m.root == "/":
		return cg
	case strings.HasPrefix(cg, m.root+"/"):
		return cg[len(m.root):]
	}
	return "/" // the mount's root itself, or not below it
}

// cgroupMounts finds the cgroup v2 mount and the v1 memory controller's
// mount in mountinfo, defaulting to the usual places.
func cgroupMounts(mountinfo string) (v2, v1 cgroupMount) {
	v2 = cgroupMount{root: "/", at: "/sys/fs/cgroup"}
	v1 = cgroupMount{root: "/", at: "/sys/fs/cgroup/memory"}
	if m, ok := v1Mount(mountinfo, "memory"); ok {
		v1 = m
	}
	if m, ok := v2Mount(mountinfo); ok {
		v2 = m
	}
	return v2, v1
}

// v2Mount is the last cgroup2 mount in mountinfo (a later mount at the
// same point hides the earlier, as in v1Mount).
func v2Mount(mountinfo string) (m cgroupMount, ok bool) {
	for _, line := range strings.Split(mountinfo, "\n") {
		// id parent dev root mountpoint opts [optional...] - fstype source superopts
		left, right, cut := strings.Cut(line, " - ")
		if !cut {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) >= 5 && len(rf) >= 3 && rf[0] == "cgroup2" {
			m, ok = cgroupMount{root: unescapeOctal(lf[3]), at: unescapeOctal(lf[4])}, true
		}
	}
	return m, ok
}

// v1Mount is the v1 mount of controller: the last one listed, as a later
// mount at the same point (a runtime's writable bind over its read-only
// one) hides the earlier.
func v1Mount(mountinfo, controller string) (m cgroupMount, ok bool) {
	for _, line := range strings.Split(mountinfo, "\n") {
		left, right, cut := strings.Cut(line, " - ")
		if !cut {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 3 || rf[0] != "cgroup" || !hasWord(rf[2], ",", controller) {
			continue
		}
		m, ok = cgroupMount{root: unescapeOctal(lf[3]), at: unescapeOctal(lf[4])}, true
	}
	return m, ok
}

func hasWord(list, sep, w string) bool {
	for _, f := range strings.Split(list, sep) {
		if f == w {
			return true
		}
	}
	return false
}
