package supervisor

import (
	"os"
	"path"
	"strconv"
	"strings"
)

// CgroupStats are the sandbox cgroup's usage and limits as the agent's
// own cgroup shows them (the workload cgroup is inside it, so its use
// counts). A limit of 0 means none; a figure that cannot be read is -1.
type CgroupStats struct {
	CPUSeconds  float64 `json:"cpu_seconds"`
	MemoryBytes int64   `json:"memory_bytes"`
	MemoryLimit int64   `json:"memory_limit"`
	Pids        int64   `json:"pids"`
	PidsLimit   int64   `json:"pids_limit"`
	Version     int     `json:"version"` // 1 or 2
}

// CgroupReader reads the agent's cgroup files, found once.
type CgroupReader struct {
	version                        int
	cpu, memory, pids              string // controller folders (v1), or the one folder (v2)
	cpuFile, memFile, memLimitFile string
}

// NewCgroupReader finds the agent's cgroup folders, or returns nil when
// there is no cgroup file system to read (a sandbox without /sys/fs/cgroup
// mounted).
func NewCgroupReader() *CgroupReader {
	cg, _ := os.ReadFile("/proc/self/cgroup")
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	r := newCgroupReader(string(cg), string(mi))
	if r == nil {
		return nil
	}
	if st := r.Read(); st.CPUSeconds < 0 && st.MemoryBytes < 0 && st.Pids < 0 {
		return nil
	}
	return r
}

func newCgroupReader(cgroup, mountinfo string) *CgroupReader {
	if _, ok := v1Mount(mountinfo, "memory"); ok {
		r := &CgroupReader{version: 1}
		r.memory = existingDir(v1Dir(cgroup, mountinfo, "memory").root, mountinfo, "memory")
		r.pids = existingDir(v1Dir(cgroup, mountinfo, "pids").root, mountinfo, "pids")
		r.cpu = existingDir(v1Dir(cgroup, mountinfo, "cpuacct").root, mountinfo, "cpuacct")
		r.cpuFile, r.memFile, r.memLimitFile = "cpuacct.usage", "memory.usage_in_bytes", "memory.limit_in_bytes"
		return r
	}
	v2, _ := cgroupMounts(mountinfo)
	for _, line := range strings.Split(strings.TrimSpace(cgroup), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			dir := path.Join(v2.at, relTo(v2, rest))
			if _, err := os.Stat(path.Join(dir, "cgroup.controllers")); err != nil {
				dir = v2.at // a namespaced view: the mount shows our cgroup
			}
			return &CgroupReader{version: 2, cpu: dir, memory: dir, pids: dir,
				cpuFile: "cpu.stat", memFile: "memory.current", memLimitFile: "memory.max"}
		}
	}
	return nil
}

// existingDir is dir when it exists, else the controller's mount point (a
// container's mount shows its own cgroup at the top while
// /proc/self/cgroup names the host's path); "" without the controller.
func existingDir(dir, mountinfo, controller string) string {
	if dir == "" {
		return ""
	}
	if _, err := os.Stat(dir); err == nil {
		return dir
	}
	if m, ok := v1Mount(mountinfo, controller); ok {
		return m.at
	}
	return ""
}

// Read returns the current figures.
func (r *CgroupReader) Read() CgroupStats {
	st := CgroupStats{Version: r.version, CPUSeconds: -1}
	if r.cpu != "" {
		if r.version == 1 {
			if ns := readInt(path.Join(r.cpu, r.cpuFile), -1); ns >= 0 {
				st.CPUSeconds = float64(ns) / 1e9
			}
		} else if us := statField(path.Join(r.cpu, r.cpuFile), "usage_usec"); us >= 0 {
			st.CPUSeconds = float64(us) / 1e6
		}
	}
	st.MemoryBytes, st.MemoryLimit = readUsage(r.memory, r.memFile), readLimit(r.memory, r.memLimitFile)
	st.Pids, st.PidsLimit = readUsage(r.pids, "pids.current"), readLimit(r.pids, "pids.max")
	if st.Pids < 0 && r.pids != "" {
		// A root cgroup has no pids.current: count its tasks instead.
		tasks := "tasks"
		if r.version == 2 {
			tasks = "cgroup.threads"
		}
		if b, err := os.ReadFile(path.Join(r.pids, tasks)); err == nil {
			st.Pids = int64(strings.Count(string(b), "\n"))
		}
	}
	return st
}

func readUsage(dir, file string) int64 {
	if dir == "" {
		return -1
	}
	return readInt(path.Join(dir, file), -1)
}

// readLimit reads a limit; "max", a v1 "unlimited" (near 2^63) or an
// unreadable file read as 0: none.
func readLimit(dir, file string) int64 {
	if dir == "" {
		return 0
	}
	n := readInt(path.Join(dir, file), 0)
	if n < 0 || n >= 1<<62 {
		return 0
	}
	return n
}

// statField reads "key value" from a flat-keyed file (cpu.stat), -1 when
// it is not there.
func statField(file, key string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}
