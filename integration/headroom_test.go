package integration

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// agentRSS is PID 1's resident set now and its peak (VmRSS, VmHWM, KiB),
// read through the files API.
func agentRSS(s *System) (rest, peak int) {
	st, err := sandboxFile(s, "/proc/1/status")
	if err != nil {
		return -1, -1
	}
	r, _ := statusKB(st, "VmRSS")
	p, _ := statusKB(st, "VmHWM")
	return int(r), int(p)
}

// headroomCgroups makes a host cgroup parent (v1 memory and pids) for one
// container and returns the podman flags that put the container below it
// with that parent bound writable at the container's cgroup mounts: the
// agent then sees its own cgroup, writable, and makes the workload in it.
func headroomCgroups(t *testing.T) []string {
	name := fmt.Sprintf("tl-headroom-%d", os.Getpid())
	// After the container is removed (cleanups run last-in first): runc
	// made the parent in every hierarchy, with conmon's and the
	// container's folders (and our workload) below; remove them all.
	t.Cleanup(func() {
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
		for _, dir := range dirs {
			subs, _ := filepath.Glob(filepath.Join(dir, "*", "*"))
			subs2, _ := filepath.Glob(filepath.Join(dir, "*"))
			for _, s := range append(append(subs, subs2...), dir) {
				if fi, err := os.Stat(s); err == nil && fi.IsDir() {
					_ = os.Remove(s)
				}
			}
		}
	})
	var args []string
	for _, c := range []string{"memory", "pids"} {
		dir := filepath.Join("/sys/fs/cgroup", c, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			t.Skipf("no writable cgroup v1 %s hierarchy here: %v", c, err)
		}
		args = append(args, "-v", dir+":/sys/fs/cgroup/"+c)
	}
	return append(args, "--cgroup-parent", "/"+name)
}

// TestHeadroomMemoryHogs: many small memory hogs and one big hog fill a
// 256 MiB container (--memory 256m --memory-swap 256m --pids-limit 200,
// its cgroup writable: headroomCgroups). Wanted: the workload cgroup
// exists with limits below the container's; a child reads its raised
// oom_score_adj as its first program; PID 1 stays alive and answers every
// health probe; the victims are reported oom_killed by run, background
// processes and PTY; PID 1's resting and peak RSS are stated.
func TestHeadroomMemoryHogs(t *testing.T) {
	requirePodman(t)
	if _, err := os.Stat("oom"); os.IsNotExist(err) {
		t.Cleanup(func() { _ = os.Remove("oom") }) // podman's marker (see TestOOMKilledInContainer)
	}
	flags := append(headroomCgroups(t), "--memory", "256m", "--memory-swap", "256m")
	s, c := pressureSandbox(t, flags...)
	memoryHogs(t, s, c.logs)
}

// TestHeadroomMemoryHogsNS: the same in the namespace sandbox, given a
// cgroup v1 subtree of its own by the harness (Options.CgroupV1: 256 MiB,
// 200 pids), as a runtime with a writable cgroup would.
func TestHeadroomMemoryHogsNS(t *testing.T) {
	RequireCgroupV1(t)
	s := Start(t, Options{CgroupV1: &CgroupV1{MemoryBytes: 256 << 20, Pids: pressurePids}})
	h := agentState(t, s).Headroom
	if h == nil || h.Version != "v1" || h.Workload != "/sys/fs/cgroup/memory/workload" ||
		h.MemoryMax != 256<<20-48<<20 || h.PidsMax != pressurePids-64 {
		t.Fatalf("status headroom %+v: want the v1 workload cgroup with limits a reserve below the sandbox's", h)
	}
	if out, err := exec.Command(filepath.Join(s.bin, "tl-agent"), "status", "--socket", s.ControlSocket()).Output(); err != nil ||
		!regexp.MustCompile(`(?m)^  workload_cgroup_version: +v1$`).Match(out) {
		t.Errorf("tl-agent status (%v) does not say v1:\n%s", err, out)
	}
	memoryHogs(t, s, s.AgentLog)
	// v1 counts an OOM kill in the victim's own cgroup only: every kill
	// was in the workload, none in the sandbox's cgroup where PID 1 is.
	own := oomKills(filepath.Join(cgroupV1Root, "memory", s.cgroup, "memory.oom_control"))
	wl := oomKills(filepath.Join(cgroupV1Root, "memory", s.cgroup, "workload", "memory.oom_control"))
	t.Logf("OOM kills: %d in the workload, %d in the sandbox's own cgroup", wl, own)
	if own != 0 || wl <= 0 {
		t.Errorf("OOM kills: %d in the workload, %d beside PID 1: want all in the workload", wl, own)
	}
}

// oomKills is the oom_kill count in a v1 memory.oom_control, -1 if none.
func oomKills(file string) int {
	b, _ := os.ReadFile(file)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

// memoryHogs is the memory-hog pressure run on sandbox s (its agent's log
// read with logs), which has a 256 MiB limit and a writable v1 cgroup.
func memoryHogs(t *testing.T, s *System, logs func() string) {
	if log := logs(); !strings.Contains(log, `"workload_cgroup":"/sys/fs/cgroup/memory/`) || !strings.Contains(log, `"workload_cgroup_version":"v1"`) {
		t.Fatalf("no v1 workload cgroup made:\n%s", tail(log, 20))
	}
	for _, line := range strings.Split(logs(), "\n") {
		if strings.Contains(line, `"headroom"`) {
			t.Logf("agent: %s", line)
		}
	}
	agentAdj, _ := sandboxFile(s, "/proc/1/oom_score_adj")
	a, _ := strconv.Atoi(strings.TrimSpace(agentAdj))
	want := strconv.Itoa(min(a+100, 1000))
	r := run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "cat /proc/self/oom_score_adj /proc/self/cgroup"}, "user": "root"})
	if len(r.stdout) == 0 || r.stdout[0] != want || !strings.Contains(strings.Join(r.stdout, "\n"), "/workload") {
		t.Errorf("run child: %q, want oom_score_adj %s (PID 1's %d + 100) and the workload cgroup", r.stdout, want, a)
	}
	// A background process and a PTY session: the same score.
	var bg struct{ Pid int }
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "cat", "args": []string{"/proc/self/oom_score_adj"}, "user": "root"}, http.StatusCreated, &bg)
	var out struct{ Lines []string }
	for i := 0; i < 100 && len(out.Lines) == 0; i++ {
		time.Sleep(50 * time.Millisecond)
		s.JSON("GET", "/api/v1/processes/"+strconv.Itoa(bg.Pid)+"/stdout", nil, http.StatusOK, &out)
	}
	if len(out.Lines) == 0 || out.Lines[0] != want {
		t.Errorf("background child: %q, want oom_score_adj %s", out.Lines, want)
	}
	pc := ptyDial(t, s, ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c", "echo score=$(cat /proc/self/oom_score_adj); sleep 30"}}))
	pc.ready()
	pc.waitFor("score="+want+"\r\n", 10*time.Second)

	rest0, _ := agentRSS(s)
	probe := startProber(s)

	// Small hogs: each holds ~16 MiB in a shell variable; 20 of them do
	// not fit in the workload's limit.
	small := map[string]any{"command": "sh", "args": []string{"-c", "x=$(head -c 16000000 /dev/zero | tr '\\0' a); sleep 300"},
		"user": "root", "stdout_mode": "discard", "stderr_mode": "discard"}
	var pids []int
	for i := 0; i < 20; i++ {
		var p struct{ Pid int }
		s.JSON("POST", "/api/v1/processes", small, http.StatusCreated, &p)
		pids = append(pids, p.Pid)
	}
	oomBg := 0
	for deadline := time.Now().Add(90 * time.Second); oomBg == 0 && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		for _, pid := range pids {
			var p map[string]any
			s.JSON("GET", "/api/v1/processes/"+strconv.Itoa(pid), nil, http.StatusOK, &p)
			if p["oom_killed"] == true {
				oomBg++
			}
		}
	}
	if oomBg == 0 {
		t.Errorf("no background small hog reported oom_killed")
	}
	big := map[string]any{"command": "tail", "args": []string{"/dev/zero"}, "user": "root"}
	if r := run(t, s, big); r.end["oom_killed"] != true {
		t.Errorf("run big hog: end %v, want oom_killed", r.end)
	}
	sess := ptyCreate(t, s, big)
	var in map[string]any
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		s.JSON("GET", "/api/v1/pty/"+sess.SessionID, nil, http.StatusOK, &in)
		if in["is_alive"] != true || time.Now().After(deadline) {
			break
		}
	}
	if in["oom_killed"] != true {
		t.Errorf("pty big hog: %v, want oom_killed", in)
	}
	probe.finish(t)
	rest, peak := agentRSS(s)
	t.Logf("PID 1 RSS: %d KiB at start, %d KiB after, peak %d KiB; %d background hogs oom_killed", rest0, rest, peak, oomBg)
	if peak <= 0 || peak > 48<<10 {
		t.Errorf("PID 1's peak RSS %d KiB: want within the workload reserve (48 MiB)", peak)
	}
	st, _ := sandboxFile(s, "/proc/1/status")
	if !strings.Contains(st, "tl-agent") {
		t.Errorf("PID 1 is not tl-agent any more:\n%s", st)
	}
}

// TestHeadroomForkBomb: with the workload cgroup (headroomCgroups), a fork
// bomb fills the workload's pids.max (the container's --pids-limit 200
// minus the reserve of 64), never the container's: PID 1 keeps room for
// its threads and answers every probe, and a new command still starts
// (it forks in PID 1's cgroup, then the incubator moves it).
func TestHeadroomForkBomb(t *testing.T) {
	requirePodman(t)
	s, c := pressureSandbox(t, headroomCgroups(t)...)
	forkBomb(t, s, c.logs)
}

// TestHeadroomForkBombNS: the same in the namespace sandbox with a v1
// cgroup subtree of its own (Options.CgroupV1, 200 pids).
func TestHeadroomForkBombNS(t *testing.T) {
	RequireCgroupV1(t)
	s := Start(t, Options{CgroupV1: &CgroupV1{MemoryBytes: 256 << 20, Pids: pressurePids}})
	forkBomb(t, s, s.AgentLog)
}

// forkBomb is the fork-bomb run on sandbox s (its agent's log read with
// logs), which has a limit of pressurePids and a writable v1 cgroup.
func forkBomb(t *testing.T, s *System, logs func() string) {
	if log := logs(); !strings.Contains(log, `"workload_pids_max":136`) {
		t.Fatalf("no workload pids limit of 136:\n%s", tail(log, 20))
	}
	// The agent's log names the memory workload; the pids one is its twin.
	_, after, _ := strings.Cut(logs(), `"workload_cgroup":"/sys/fs/cgroup/memory/`)
	rel, _, _ := strings.Cut(after, `"`)
	probe := startProber(s)
	bomb := `for i in 1 2 3 4; do (while :; do sleep 600 & done) & done; wait`
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "bash", "args": []string{"-c", bomb}, "stdout_mode": "discard", "stderr_mode": "discard",
	}, http.StatusCreated, nil)
	workload := func() int {
		v, err := sandboxFile(s, "/sys/fs/cgroup/pids/"+rel+"/pids.current")
		if err != nil {
			return -1
		}
		n, _ := strconv.Atoi(strings.TrimSpace(v))
		return n
	}
	for deadline := time.Now().Add(60 * time.Second); workload() < 136; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the fork bomb did not fill the workload: %d of 136", workload())
		}
	}
	time.Sleep(2 * time.Second) // the bomb keeps trying
	total := pidsCurrent(s)
	t.Logf("workload pids %d of 136, container %d of %d, agent threads %d", workload(), total, pressurePids, agentThreads(s))
	if total >= pressurePids {
		t.Errorf("the container's pids limit is full (%d): the workload did not keep PID 1's reserve", total)
	}
	// A start still forks (in PID 1's cgroup); only the command's own
	// forks would fail.
	if r := run(t, s, map[string]any{"command": "true"}); r.end["exit_code"] != float64(0) {
		t.Errorf("run true with the workload full: %v", r.end)
	}
	probe.finish(t)
	rest, peak := agentRSS(s)
	t.Logf("PID 1 RSS: %d KiB, peak %d KiB", rest, peak)
}

// TestHeadroomScoreSSH: in the namespace sandbox, a command and a shell
// over SSH (the user's shell, started by sshd's door) start 100 above PID
// 1's oom_score_adj, and the agent's status states the headroom (here:
// lowering refused or done, and the workload cgroup or why none).
func TestHeadroomScoreSSH(t *testing.T) {
	s := startSSH(t, Options{})
	out, code := s.ssh(t, "", "cat /proc/self/oom_score_adj /proc/1/oom_score_adj")
	f := strings.Fields(out)
	if code != 0 || len(f) != 2 {
		t.Fatalf("ssh: %d %q", code, out)
	}
	child, _ := strconv.Atoi(f[0])
	agent, _ := strconv.Atoi(f[1])
	if child != min(agent+100, 1000) {
		t.Errorf("ssh child's oom_score_adj %d, PID 1's %d: want +100", child, agent)
	}
	for _, line := range strings.Split(s.AgentLog(), "\n") {
		if strings.Contains(line, `"message":"headroom"`) {
			t.Logf("agent: %s", line)
		}
	}
	if log := s.AgentLog(); !strings.Contains(log, `"message":"headroom"`) || !strings.Contains(log, `"child_oom_score_adj":`+strconv.Itoa(child)) {
		t.Errorf("no headroom line with child_oom_score_adj %d in the agent's log:\n%s", child, tail(log, 20))
	}
}
