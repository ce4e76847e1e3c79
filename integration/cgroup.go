package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// CgroupV1 gives the namespace sandbox a cgroup v1 subtree of its own
// (Options.CgroupV1): the harness makes tl-test-<pid>-<rand> in this
// machine's v1 memory and pids hierarchies with these limits,
// sandbox-init.sh moves the sandbox into it and binds it at the sandbox's
// /sys/fs/cgroup/{memory,pids}, as a runtime with a writable cgroup
// would. Zero leaves that limit unset.
type CgroupV1 struct {
	MemoryBytes int64
	Pids        int
	// Freezer adds a v1 freezer cgroup, bound at the sandbox's
	// /sys/fs/cgroup/freezer (the agent makes its workload's there too).
	Freezer bool
}

// controllers are the hierarchies lim asks for.
func (lim CgroupV1) controllers() []string {
	if lim.Freezer {
		return append(append([]string{}, cgroupV1Controllers...), "freezer")
	}
	return cgroupV1Controllers
}

// cgroupV1Root is where this machine mounts its v1 hierarchies.
const cgroupV1Root = "/sys/fs/cgroup"

var cgroupV1Controllers = []string{"memory", "pids"}

// RequireCgroupV1 skips a test that needs this machine's v1 memory and
// pids hierarchies (Options.CgroupV1), with the reason; it needs root too.
func RequireCgroupV1(t *testing.T) {
	t.Helper()
	RequireRoot(t)
	for _, c := range cgroupV1Controllers {
		if _, err := os.Stat(filepath.Join(cgroupV1Root, c, "tasks")); err != nil {
			t.Skipf("no cgroup v1 %s hierarchy at %s: %v", c, cgroupV1Root, err)
		}
	}
}

// makeCgroupV1 makes the sandbox's v1 cgroups and registers their removal
// (after the sandbox stops: call it before Start's Cleanup(s.Stop)). It
// returns the cgroups' name, the same in each hierarchy.
func makeCgroupV1(t TB, lim CgroupV1) string {
	t.Helper()
	removeStaleCgroups()
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("tl-test-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	t.Cleanup(func() {
		for _, c := range lim.controllers() {
			if err := removeCgroupTree(filepath.Join(cgroupV1Root, c, name), 10*time.Second); err != nil {
				t.Logf("cgroup left behind: %v", err)
			}
		}
	})
	for _, c := range lim.controllers() {
		dir := filepath.Join(cgroupV1Root, c, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("no writable cgroup v1 %s hierarchy: %v", c, err)
		}
	}
	set := func(c, file string, v int64) {
		if v == 0 {
			return
		}
		f := filepath.Join(cgroupV1Root, c, name, file)
		if err := os.WriteFile(f, []byte(strconv.FormatInt(v, 10)), 0); err != nil {
			t.Fatalf("set %s: %v", f, err)
		}
	}
	set("memory", "memory.limit_in_bytes", lim.MemoryBytes)
	if _, err := os.Stat(filepath.Join(cgroupV1Root, "memory", name, "memory.memsw.limit_in_bytes")); err == nil {
		set("memory", "memory.memsw.limit_in_bytes", lim.MemoryBytes) // no swapping out of the limit
	}
	set("pids", "pids.max", int64(lim.Pids))
	return name
}

// removeCgroupTree removes cgroup dir and the cgroups below it (the
// agent's workload), deepest first, retrying while the sandbox's last
// processes are still leaving (EBUSY), up to d.
func removeCgroupTree(dir string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := removeCgroupOnce(dir)
		if err == nil || os.IsNotExist(err) || time.Now().After(deadline) {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func removeCgroupOnce(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeCgroupOnce(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return os.Remove(dir) // a cgroup's files go with it
}

// removeStaleCgroups removes test cgroups of test binaries that died
// without their cleanup (a timeout's panic): those whose pid is gone.
func removeStaleCgroups() {
	for _, c := range append([]string{"freezer"}, cgroupV1Controllers...) {
		dirs, _ := filepath.Glob(filepath.Join(cgroupV1Root, c, "tl-test-*"))
		for _, dir := range dirs {
			f := strings.Split(filepath.Base(dir), "-")
			if len(f) != 4 {
				continue
			}
			if _, err := os.Stat("/proc/" + f[2]); os.IsNotExist(err) {
				_ = removeCgroupTree(dir, 0)
			}
		}
	}
}
