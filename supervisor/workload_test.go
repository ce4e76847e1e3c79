package supervisor

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSplitV2RealKernel runs the v2 split on this machine's real cgroup2
// hierarchy, where the kernel enforces the no-internal-processes rule.
// This machine's v2 mount offers no memory or pids controller (v1 holds
// them, and a controller is in one hierarchy at a time; a cgroup2 mounted
// afresh in a new mount namespace is the same hierarchy), so the proof
// uses the one it offers, hugetlb: with a process in the cgroup the
// kernel refuses to hand a controller down (EBUSY); splitV2 moves the
// process to the agent leaf first, the kernel takes the controller, and a
// process then joins the workload as the launcher puts each child there.
// The root's hugetlb delegation is turned on for the test when off and
// restored after.
func TestSplitV2RealKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a cgroup")
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	m, ok := v2Mount(string(mi))
	ctrls, _ := os.ReadFile(filepath.Join(m.at, "cgroup.controllers"))
	if !ok || m.root != "/" || !hasWord(strings.TrimSpace(string(ctrls)), " ", "hugetlb") {
		t.Skipf("no cgroup2 root with the hugetlb controller here (%v %q)", m, ctrls)
	}
	rootCtl := filepath.Join(m.at, "cgroup.subtree_control")
	if on, _ := os.ReadFile(rootCtl); !hasWord(strings.TrimSpace(string(on)), " ", "hugetlb") {
		if err := os.WriteFile(rootCtl, []byte("+hugetlb"), 0); err != nil {
			t.Skipf("cannot delegate hugetlb from the root: %v", err)
		}
		t.Cleanup(func() { _ = os.WriteFile(rootCtl, []byte("-hugetlb"), 0) })
	}
	dir := filepath.Join(m.at, "tl-test-split-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var procs []*exec.Cmd
	t.Cleanup(func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		for _, d := range []string{WorkloadCgroup, AgentCgroup, ""} {
			_ = os.Remove(filepath.Join(dir, d))
		}
	})
	sleep := func(cg string) *exec.Cmd {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, c)
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(c.Process.Pid)), 0); err != nil {
			t.Fatalf("join %s: %v", cg, err)
		}
		return c
	}
	agent := sleep(dir)
	err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+hugetlb"), 0)
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("the kernel took a controller for a cgroup with a process in it (%v): the proof proves nothing", err)
	}
	// A controller the cgroup lacks: refused, and dir is left as it was.
	if err := splitV2(dir, []string{"memory"}); err == nil {
		t.Fatal("memory enabled where the hierarchy has none")
	}
	if _, err := os.Stat(filepath.Join(dir, AgentCgroup)); !os.IsNotExist(err) {
		t.Errorf("the failed split left its leaf: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")); strings.TrimSpace(string(got)) != strconv.Itoa(agent.Process.Pid) {
		t.Errorf("after the failed split %s holds %q, want the agent back", dir, got)
	}
	if err := splitV2(dir, []string{"hugetlb"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, AgentCgroup, "cgroup.procs")); strings.TrimSpace(string(got)) != strconv.Itoa(agent.Process.Pid) {
		t.Errorf("agent leaf holds %q, want the agent %d", got, agent.Process.Pid)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control")); strings.TrimSpace(string(got)) != "hugetlb" {
		t.Errorf("subtree_control %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, WorkloadCgroup, "cgroup.controllers")); strings.TrimSpace(string(got)) != "hugetlb" {
		t.Errorf("the workload's controllers %q", got)
	}
	child := sleep(filepath.Join(dir, WorkloadCgroup))
	for i := 0; i < 50; i++ { // the move is synchronous; bounded anyway
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(child.Process.Pid) + "/cgroup"); strings.Contains(string(b), "0::/"+filepath.Base(dir)+"/"+WorkloadCgroup) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("the child is not in the workload")
}
