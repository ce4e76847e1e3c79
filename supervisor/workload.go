package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
)

// The workload cgroup (docs/supervisor.md, "Headroom"): one decision, v1
// or v2, from the agent's /proc/self/cgroup and /proc/self/mountinfo.
// cgroup v1 is used where the agent's memory or pids controller is
// mounted as v1 (then v2 has neither: a controller is in one hierarchy at
// a time); otherwise cgroup v2, where its controllers are.

// AgentCgroup is the leaf the agent moves itself into under cgroup v2:
// v2's "no internal processes" rule forbids processes in a cgroup that
// hands controllers to its children.
const AgentCgroup = "agent"

type workload struct {
	dir       string // the workload's memory cgroup folder (v2: its only one)
	version   string // "v1" or "v2"
	procs     []string
	pids, mem int64
	freezer   string // v1: the workload's freezer cgroup folder, "" when none
}

// makeWorkload makes the workload cgroup below the agent's own and sets
// its limits a reserve below the sandbox's.
// vm says the agent is a machine's init (InitialPidNS): only then may it
// split the hierarchy's root cgroup, which is otherwise the host's, seen
// from a sandbox without a cgroup namespace.
func makeWorkload(cgroup, mountinfo string, vm bool) (workload, error) {
	mem, pids := v1Dir(cgroup, mountinfo, "memory"), v1Dir(cgroup, mountinfo, "pids")
	if mem.at != "" || pids.at != "" {
		w, err := makeWorkloadV1(mem, pids)
		if fr := v1Dir(cgroup, mountinfo, "freezer"); err == nil && fr.at != "" {
			// A workload of its own in the v1 freezer too, so a snapshot
			// can freeze the workload without the agent (docs/lifecycle.md).
			sub := path.Join(fr.root, WorkloadCgroup)
			if os.Mkdir(sub, 0o755) == nil || fileExists(path.Join(sub, "freezer.state")) {
				w.freezer = sub
				w.procs = append(w.procs, path.Join(sub, "tasks"))
			}
		}
		return w, err
	}
	m, ok := v2Mount(mountinfo)
	if !ok {
		return workload{}, errors.New("no cgroup file system mounted (neither a v1 memory or pids controller nor cgroup2)")
	}
	own := ""
	for _, line := range strings.Split(strings.TrimSpace(cgroup), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			own = p
		}
	}
	if own == "" {
		return workload{}, errors.New("cgroup2 is mounted but /proc/self/cgroup names no v2 cgroup")
	}
	dir := path.Join(m.at, relTo(m, own))
	if path.Base(dir) == AgentCgroup && fileExists(path.Join(path.Dir(dir), WorkloadCgroup, "cgroup.procs")) {
		// Split already: an agent started by a live upgrade (in-place
		// execve) sits in D/agent beside D/workload. It uses D again.
		dir = path.Dir(dir)
	}
	return makeWorkloadV2(dir, m.at, vm)
}

// makeWorkloadV1 creates workload below the agent's memory and pids
// cgroups (v1 allows processes beside child cgroups).
func makeWorkloadV1(mem, pids cgroupMount) (workload, error) {
	w := workload{version: "v1"}
	for _, c := range []struct {
		m       cgroupMount
		limit   string
		reserve int64
		got     *int64
	}{{mem, "memory.limit_in_bytes", MemoryReserve, &w.mem}, {pids, "pids.max", PidsReserve, &w.pids}} {
		if c.m.at == "" {
			continue
		}
		sub := path.Join(c.m.root, WorkloadCgroup)
		if err := os.Mkdir(sub, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return w, err
		}
		if err := setLimit(sub, c.limit, lowestLimit(c.m.root, c.m.at, c.limit), c.reserve, c.got); err != nil {
			return w, err
		}
		w.procs = append(w.procs, path.Join(sub, "tasks"))
		if c.limit == "memory.limit_in_bytes" {
			w.dir = sub
		}
	}
	return w, nil
}

// makeWorkloadV2 splits the agent's v2 cgroup dir: the agent's processes
// move to dir/agent, the memory and pids controllers (those dir has) are
// enabled for its children, and dir/workload gets memory.max and pids.max
// a reserve below the lowest limit on dir and its parents up to the
// mount point top (a delegated subtree's limit may sit on its parent).
//
// The hierarchy's root (it alone has no cgroup.type) has no limits and
// is the machine's: it is split only by a VM's init, whose workload's
// memory.max is then the machine's memory less the reserve.
func makeWorkloadV2(dir, top string, vm bool) (workload, error) {
	w := workload{version: "v2", dir: path.Join(dir, WorkloadCgroup)}
	_, err := os.Stat(path.Join(dir, "cgroup.type"))
	root := errors.Is(err, os.ErrNotExist)
	if root && !vm {
		return w, fmt.Errorf("cgroup v2 %s is the machine's root cgroup and this is no VM (no cgroup namespace): not the sandbox's to split", dir)
	}
	have, err := os.ReadFile(path.Join(dir, "cgroup.controllers"))
	if err != nil {
		return w, err
	}
	var ctrls []string
	for _, c := range []string{"memory", "pids"} {
		if hasWord(strings.TrimSpace(string(have)), " ", c) {
			ctrls = append(ctrls, c)
		}
	}
	if len(ctrls) == 0 {
		return w, fmt.Errorf("cgroup v2 %s offers no memory or pids controller (cgroup.controllers: %q)", dir, strings.TrimSpace(string(have)))
	}
	if err := splitV2(dir, ctrls); err != nil {
		return w, err
	}
	for _, c := range []struct {
		ctrl, file string
		reserve    int64
		got        *int64
	}{{"memory", "memory.max", MemoryReserve, &w.mem}, {"pids", "pids.max", PidsReserve, &w.pids}} {
		if !hasWord(strings.Join(ctrls, " "), " ", c.ctrl) {
			continue
		}
		limit := lowestLimit(dir, top, c.file)
		if root && c.ctrl == "memory" {
			limit = memTotal()
		}
		if err := setLimit(w.dir, c.file, limit, c.reserve, c.got); err != nil {
			return w, err
		}
	}
	w.procs = []string{path.Join(w.dir, "cgroup.procs")}
	return w, nil
}

// splitV2 moves every process of cgroup dir into dir/agent, enables ctrls
// in dir's cgroup.subtree_control and makes dir/workload. The order is
// the kernel's: controllers cannot be handed down while dir holds a
// process (EBUSY; the hierarchy's root is exempt, and its kernel threads
// cannot move: a refused move is left to the subtree_control write to
// judge).
func splitV2(dir string, ctrls []string) error {
	leaf := path.Join(dir, AgentCgroup)
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	// Bounded: a process may fork while we move (at start nothing does).
	for i := 0; i < 4; i++ {
		b, err := os.ReadFile(path.Join(dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		pids := strings.Fields(string(b))
		moved := 0
		for _, pid := range pids {
			if os.WriteFile(path.Join(leaf, "cgroup.procs"), []byte(pid), 0) == nil {
				moved++
			}
		}
		if moved == 0 {
			break
		}
	}
	enable := "+" + strings.Join(ctrls, " +")
	if err := os.WriteFile(path.Join(dir, "cgroup.subtree_control"), []byte(enable), 0); err != nil {
		// Leave dir as it was: its processes back, no leaf.
		b, _ := os.ReadFile(path.Join(leaf, "cgroup.procs"))
		for _, pid := range strings.Fields(string(b)) {
			_ = os.WriteFile(path.Join(dir, "cgroup.procs"), []byte(pid), 0)
		}
		_ = os.Remove(leaf)
		return fmt.Errorf("enable %q in %s: %w (processes left in it, or not delegated)", enable, dir, err)
	}
	if err := os.Mkdir(path.Join(dir, WorkloadCgroup), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// lowestLimit is the lowest limit in file on dir and its parents up to
// top, -1 when none is set ("max").
func lowestLimit(dir, top, file string) int64 {
	low := int64(-1)
	for d := dir; ; d = path.Dir(d) {
		if n := readInt(path.Join(d, file), -1); n > 0 && n < 1<<62 && (low < 0 || n < low) {
			low = n
		}
		if d == top || !strings.HasPrefix(d, top+"/") {
			return low
		}
	}
}

// setLimit writes parent - reserve to dir/file when the sandbox has a
// limit above the reserve (none below an unlimited sandbox: "max" and
// v1's huge default read as no limit).
func setLimit(dir, file string, parent, reserve int64, got *int64) error {
	if parent <= reserve || parent >= 1<<62 {
		return nil
	}
	*got = parent - reserve
	return os.WriteFile(path.Join(dir, file), []byte(strconv.FormatInt(*got, 10)), 0)
}

// v1Dir is the agent's own cgroup folder of a v1 controller (as root)
// and its mount point (at); zero when there is no such mount.
func v1Dir(cgroup, mountinfo, controller string) cgroupMount {
	m, ok := v1Mount(mountinfo, controller)
	if !ok {
		return cgroupMount{}
	}
	for _, line := range strings.Split(strings.TrimSpace(cgroup), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && hasWord(parts[1], ",", controller) {
			return cgroupMount{root: path.Join(m.at, relTo(m, parts[2])), at: m.at}
		}
	}
	return cgroupMount{}
}

// memTotal is the machine's memory (/proc/meminfo), -1 when unknown.
func memTotal() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			if kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64); err == nil {
				return kb << 10
			}
		}
	}
	return -1
}
