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
	}, "\n")
	cgroup := "8:pids:/p/c1\n4:memory:/p/c1\n"
	files, w, err := makeWorkload(cgroup, mountinfo)
	if err != nil {
		t.Fatal(err)
	}
	if w.dir != filepath.Join(mem, "c1", WorkloadCgroup) || w.mem != 256<<20-MemoryReserve || w.pids != 0 {
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
	if _, _, err := makeWorkload("0::/x\n", ""); err == nil {
		t.Error("no v1 mounts: a workload anyway")
	}
}
