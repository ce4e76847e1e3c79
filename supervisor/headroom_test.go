package supervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The workload is made below the agent's own v1 cgroup, found through the
// last mount of each controller (a runtime's writable bind over its
// read-only mount), with limits a reserve below the agent's; no limit is
// set where the sandbox has none.
func TestMakeWorkload(t *testing.T) {
	root := t.TempDir()
	mem, pids := filepath.Join(root, "memory"), filepath.Join(root, "pids")
	for _, d := range []string{filepath.Join(mem, "c1"), filepath.Join(pids, "c1")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.WriteFile(filepath.Join(mem, "c1", "memory.limit_in_bytes"), []byte("268435456\n"), 0o644)
	_ = os.WriteFile(filepath.Join(pids, "c1", "pids.max"), []byte("max\n"), 0o644)
	mountinfo := strings.Join([]string{
		"133 129 0:32 /p/c1 " + mem + " ro,nosuid - cgroup cgroup rw,memory",
		"137 129 0:36 /p/c1 " + pids + " ro,nosuid - cgroup cgroup rw,pids",
		"139 137 0:36 /p " + pids + " rw - cgroup cgroup rw,pids",
		"140 133 0:32 /p " + mem + " rw - cgroup cgroup rw,memory",
		// This machine's layout: v1 holds the controllers, v2 is
		// mounted beside with none. v1 wins.
		"141 129 0:40 / " + filepath.Join(root, "unified") + " rw - cgroup2 cgroup2 rw",
	}, "\n")
	cgroup := "8:pids:/p/c1\n4:memory:/p/c1\n0::/\n"
	w, err := makeWorkload(cgroup, mountinfo, false)
	if err != nil {
		t.Fatal(err)
	}
	files := w.procs
	if w.version != "v1" || w.dir != filepath.Join(mem, "c1", WorkloadCgroup) || w.mem != 256<<20-MemoryReserve || w.pids != 0 {
		t.Errorf("workload %+v", w)
	}
	if b, _ := os.ReadFile(filepath.Join(w.dir, "memory.limit_in_bytes")); string(b) != "218103808" {
		t.Errorf("memory limit %q", b)
	}
	if _, err := os.Stat(filepath.Join(pids, "c1", WorkloadCgroup, "pids.max")); !os.IsNotExist(err) {
		t.Errorf("a pids limit was set below an unlimited sandbox: %v", err)
	}
	want := []string{filepath.Join(mem, "c1", "workload", "tasks"), filepath.Join(pids, "c1", "workload", "tasks")}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("tasks files %q, want %q", files, want)
	}
	if _, err := makeWorkload("0::/x\n", "", false); err == nil {
		t.Error("no v1 mounts: a workload anyway")
	}
}

// fakeCgroup2 makes a fake cgroup v2 folder: files name -> content.
func fakeCgroup2(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Errorf("%v", err)
	}
	return strings.TrimSpace(string(b))
}

// Under cgroup v2 (a container's own cgroup namespace: its cgroup is the
// mount's root), the agent moves into the leaf "agent" before the
// controllers are handed down (v2's no-internal-processes rule), and the
// workload gets memory.max and pids.max a reserve below the sandbox's.
func TestMakeWorkloadV2(t *testing.T) {
	cg := t.TempDir()
	fakeCgroup2(t, cg, map[string]string{
		"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n", "cgroup.subtree_control": "", "cgroup.type": "domain\n",
		"cgroup.procs": "1\n", "memory.max": "268435456\n", "pids.max": "200\n",
	})
	fakeCgroup2(t, filepath.Join(cg, AgentCgroup), map[string]string{"cgroup.procs": ""})
	mountinfo := "1040 1030 0:26 / " + cg + " rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw\n"
	w, err := makeWorkload("0::/\n", mountinfo, false)
	if err != nil {
		t.Fatal(err)
	}
	wl := filepath.Join(cg, WorkloadCgroup)
	if w.version != "v2" || w.dir != wl || w.mem != 256<<20-MemoryReserve || w.pids != 200-PidsReserve {
		t.Errorf("workload %+v", w)
	}
	if got := readFile(t, filepath.Join(cg, AgentCgroup, "cgroup.procs")); got != "1" {
		t.Errorf("the agent was not moved to its leaf: %q", got)
	}
	if got := readFile(t, filepath.Join(cg, "cgroup.subtree_control")); got != "+memory +pids" {
		t.Errorf("subtree_control %q", got)
	}
	if got := readFile(t, filepath.Join(wl, "memory.max")); got != "218103808" {
		t.Errorf("memory.max %q", got)
	}
	if got := readFile(t, filepath.Join(wl, "pids.max")); got != "136" {
		t.Errorf("pids.max %q", got)
	}
	if len(w.procs) != 1 || w.procs[0] != filepath.Join(wl, "cgroup.procs") {
		t.Errorf("procs files %q", w.procs)
	}
}

// A delegated v2 subtree (no cgroup namespace: /proc/self/cgroup names
// the full path) whose limit sits on its parent, with only the memory
// controller: the limit is taken from the parent, pids are left alone.
func TestMakeWorkloadV2Delegated(t *testing.T) {
	mnt := t.TempDir()
	fakeCgroup2(t, filepath.Join(mnt, "sbx"), map[string]string{"memory.max": "536870912\n", "pids.max": "300\n"})
	own := filepath.Join(mnt, "sbx", "svc")
	fakeCgroup2(t, own, map[string]string{
		"cgroup.controllers": "memory\n", "cgroup.subtree_control": "", "cgroup.procs": "7\n", "memory.max": "max\n", "cgroup.type": "domain\n",
	})
	w, err := makeWorkload("0::/sbx/svc\n", "30 25 0:26 / "+mnt+" rw - cgroup2 cgroup2 rw,nsdelegate\n", false)
	if err != nil {
		t.Fatal(err)
	}
	if w.mem != 512<<20-MemoryReserve || w.pids != 0 || w.dir != filepath.Join(own, WorkloadCgroup) {
		t.Errorf("workload %+v", w)
	}
	if got := readFile(t, filepath.Join(own, "cgroup.subtree_control")); got != "+memory" {
		t.Errorf("subtree_control %q", got)
	}
	if _, err := os.Stat(filepath.Join(own, WorkloadCgroup, "pids.max")); !os.IsNotExist(err) {
		t.Errorf("pids.max written without the pids controller: %v", err)
	}
}

// This machine's v2 mount offers no memory or pids controller: no
// workload, and the reason names what is there; nothing is moved.
func TestMakeWorkloadV2NoControllers(t *testing.T) {
	cg := t.TempDir()
	fakeCgroup2(t, cg, map[string]string{"cgroup.controllers": "hugetlb\n", "cgroup.procs": "1\n", "cgroup.type": "domain\n"})
	_, err := makeWorkload("0::/\n", "30 25 0:26 / "+cg+" rw - cgroup2 cgroup2 rw\n", false)
	if err == nil || !strings.Contains(err.Error(), "no memory or pids controller") || !strings.Contains(err.Error(), "hugetlb") {
		t.Errorf("err %v", err)
	}
	if _, err := os.Stat(filepath.Join(cg, AgentCgroup)); !os.IsNotExist(err) {
		t.Errorf("the agent's leaf was made anyway: %v", err)
	}
}

// The hierarchy's root (no cgroup.type) seen from a sandbox without a
// cgroup namespace is the host's: refused, nothing made. A VM's init
// splits it, the workload's memory.max the machine's memory less the
// reserve (the root has no memory.max).
func TestMakeWorkloadV2Root(t *testing.T) {
	cg := t.TempDir()
	fakeCgroup2(t, cg, map[string]string{"cgroup.controllers": "memory pids\n", "cgroup.procs": "1\n2\n", "cgroup.subtree_control": ""})
	mountinfo := "30 25 0:26 / " + cg + " rw - cgroup2 cgroup2 rw\n"
	if _, err := makeWorkload("0::/\n", mountinfo, false); err == nil || !strings.Contains(err.Error(), "root cgroup") {
		t.Errorf("the host's root split: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cg, AgentCgroup)); !os.IsNotExist(err) {
		t.Errorf("a leaf was made in the host's root: %v", err)
	}
	fakeCgroup2(t, filepath.Join(cg, AgentCgroup), map[string]string{"cgroup.procs": ""})
	w, err := makeWorkload("0::/\n", mountinfo, true)
	if err != nil {
		t.Fatal(err)
	}
	if m := memTotal(); m <= MemoryReserve || w.mem != m-MemoryReserve || w.pids != 0 {
		t.Errorf("VM workload %+v, MemTotal %d", w, m)
	}
}

// An agent started by a live upgrade (execve in place) finds itself in
// D/agent beside D/workload: it uses D again, no D/agent/agent is made.
func TestMakeWorkloadV2AfterUpgrade(t *testing.T) {
	cg := t.TempDir()
	fakeCgroup2(t, cg, map[string]string{
		"cgroup.controllers": "memory pids\n", "cgroup.subtree_control": "memory pids\n", "cgroup.type": "domain\n",
		"cgroup.procs": "", "memory.max": "268435456\n", "pids.max": "200\n",
	})
	fakeCgroup2(t, filepath.Join(cg, AgentCgroup), map[string]string{"cgroup.procs": "1\n", "cgroup.controllers": "", "cgroup.type": "domain\n"})
	fakeCgroup2(t, filepath.Join(cg, WorkloadCgroup), map[string]string{"cgroup.procs": "12\n"})
	mountinfo := "1040 1030 0:26 / " + cg + " rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw\n"
	w, err := makeWorkload("0::/"+AgentCgroup+"\n", mountinfo, false)
	if err != nil {
		t.Fatal(err)
	}
	if w.dir != filepath.Join(cg, WorkloadCgroup) || w.mem != 256<<20-MemoryReserve {
		t.Errorf("workload %+v", w)
	}
	if _, err := os.Stat(filepath.Join(cg, AgentCgroup, AgentCgroup)); !os.IsNotExist(err) {
		t.Errorf("the agent's leaf was split again: %v", err)
	}
}
