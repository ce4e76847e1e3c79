package integration

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A frozen sandbox (`podman pause`: the cgroup freezer over the agent's
// whole process tree) is not an idle one. Before the running clock, every
// detached PTY session was killed within 0.2 s of thaw.

// freezer is a cgroup of our own with the freezer: v1 (freezer.state) or
// v2 (cgroup.freeze).
type freezer struct {
	t      *testing.T
	dir    string
	parent string // where the pids go back to at the end
	v2     bool
}

// newFreezer makes a fresh freezer cgroup, or skips the test when this
// machine has none; Cleanup thaws it, moves its processes back and removes it.
func newFreezer(t *testing.T) *freezer {
	t.Helper()
	name := "tl-freeze-" + randHex(6)
	f := &freezer{t: t}
	switch {
	case fileExists("/sys/fs/cgroup/freezer/cgroup.procs"):
		f.parent = "/sys/fs/cgroup/freezer"
	case cgroup2Root() != "":
		f.parent, f.v2 = cgroup2Root(), true
	default:
		t.Skip("no cgroup freezer here: neither /sys/fs/cgroup/freezer (v1) nor a cgroup2 mount with cgroup.freeze")
	}
	f.dir = filepath.Join(f.parent, name)
	if err := os.Mkdir(f.dir, 0o755); err != nil {
		t.Skipf("cannot make a freezer cgroup: %v", err)
	}
	if f.v2 && !fileExists(filepath.Join(f.dir, "cgroup.freeze")) {
		_ = os.Remove(f.dir)
		t.Skip("cgroup v2 without cgroup.freeze (kernel < 5.2)")
	}
	t.Cleanup(f.remove)
	return f
}

// cgroup2Root is the mount point of the cgroup2 hierarchy, "" without one.
func cgroup2Root() string {
	file, err := os.Open("/proc/self/mounts")
	if err != nil {
		return ""
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (f *freezer) write(file, v string) error {
	return os.WriteFile(filepath.Join(f.dir, file), []byte(v), 0o644)
}

// addTree moves pid and every descendant of it into the cgroup; children
// forked later are born in it.
func (f *freezer) addTree(pid int) {
	f.t.Helper()
	for _, p := range descendants(pid) {
		if err := f.write("cgroup.procs", strconv.Itoa(p)); err != nil && p == pid {
			f.t.Fatalf("move %d into %s: %v", p, f.dir, err)
		}
	}
}

// pids lists the processes in the cgroup.
func (f *freezer) pids() []int {
	data, _ := os.ReadFile(filepath.Join(f.dir, "cgroup.procs"))
	var out []int
	for _, l := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(l); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// freeze freezes the cgroup and waits until every task is frozen.
func (f *freezer) freeze() {
	f.t.Helper()
	file, val, done := "freezer.state", "FROZEN", func() bool {
		data, _ := os.ReadFile(filepath.Join(f.dir, "freezer.state"))
		return strings.TrimSpace(string(data)) == "FROZEN"
	}
	if f.v2 {
		file, val, done = "cgroup.freeze", "1", func() bool {
			data, _ := os.ReadFile(filepath.Join(f.dir, "cgroup.events"))
			return strings.Contains(string(data), "frozen 1")
		}
	}
	if err := f.write(file, val); err != nil {
		f.t.Fatalf("freeze: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); !done(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			f.t.Fatalf("cgroup %s not frozen within 10 s", f.dir)
		}
	}
}

func (f *freezer) thaw() error {
	if f.v2 {
		return f.write("cgroup.freeze", "0")
	}
	return f.write("freezer.state", "THAWED")
}

// remove thaws, gives the processes back to the parent and removes the
// cgroup. It runs before the harness stops the agent (cleanups run last
// registered first), so nothing is left frozen.
func (f *freezer) remove() {
	_ = f.thaw()
	for _, p := range f.pids() {
		_ = os.WriteFile(filepath.Join(f.parent, "cgroup.procs"), []byte(strconv.Itoa(p)), 0o644)
	}
	for i := 0; i < 50 && os.Remove(f.dir) != nil; i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// descendants is pid and all its descendants, from one pass over /proc.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := procField(p, 1); pp != "" {
			n, _ := strconv.Atoi(pp)
			children[n] = append(children[n], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// procField is field i (0: state, 1: ppid) after the command of
// /proc/<pid>/stat, "" when the process is gone.
func procField(pid, i int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) <= i {
		return ""
	}
	return f[i]
}

// liveWithArg counts processes in pids, not zombies, whose command line
// holds arg.
func liveWithArg(pids []int, arg string) int {
	n := 0
	for _, p := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if strings.Contains(string(cmdline), arg) {
			if st := procField(p, 0); st != "" && st != "Z" {
				n++
			}
		}
	}
	return n
}

// TestFreezeIsNotIdle freezes the whole sandbox for 10 s, twice its PTY
// idle timeout. Detached sessions survive the thaw and are killed only
// after the idle timeout of running time; a supervised service's health
// check does not fail at thaw, and a restart back-off does not count the
// frozen time. It measures when the uplink answers again after the thaw.
func TestFreezeIsNotIdle(t *testing.T) {
	RequireRoot(t)
	f := newFreezer(t)
	const idle, frozen = 5 * time.Second, 10 * time.Second
	s := ptySystem(t, Options{AgentArgs: []string{"--pty-idle-timeout", idle.String()}})
	f.addTree(s.AgentPid())

	// Two detached sessions (never attached: their idle clock runs from
	// creation), born in the freezer cgroup.
	a := ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1001"}})
	b := ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1002"}})
	created := time.Now()
	svc := startFreezeServices(t, s)
	if n := liveWithArg(f.pids(), "sleep\x001001") + liveWithArg(f.pids(), "sleep\x001002"); n != 2 {
		t.Fatalf("%d of 2 session processes in the freezer cgroup %v", n, f.pids())
	}

	f.freeze()
	frozeAt := time.Now()
	t.Logf("froze %d processes %v after the sessions' creation", len(f.pids()), frozeAt.Sub(created).Round(time.Millisecond))
	time.Sleep(frozen)
	if err := f.thaw(); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	thawed := time.Now()
	health := make(chan time.Duration, 1)
	go func() { health <- waitHealthy(s, thawed, 30*time.Second) }()

	// The old timers fired at thaw and SIGHUP ended `sleep` within 0.2 s.
	// Look from this machine, not through the uplink, which may still be
	// coming back.
	time.Sleep(700 * time.Millisecond)
	if n := liveWithArg(f.pids(), "sleep\x00100"); n != 2 {
		t.Fatalf("%d of 2 detached sessions alive %v after thaw: frozen time counted as idle\nagent log:\n%s",
			n, time.Since(thawed).Round(time.Millisecond), tail(s.AgentLog(), 30))
	}
	if strings.Contains(s.AgentLog(), "killing pty session") {
		t.Fatalf("a session was killed at thaw:\n%s", tail(s.AgentLog(), 30))
	}

	// How long until the API answers through the proxy again.
	back := <-health
	if back < 0 {
		t.Fatalf("health not answered through the proxy within 30 s of thaw\nagent log:\n%s\nproxy log:\n%s",
			tail(s.AgentLog(), 30), tail(s.ProxyLog(), 30))
	}
	t.Logf("uplink: health answered through the proxy %v after thaw", back.Round(time.Millisecond))
	if back < idle-time.Second {
		for _, p := range []ptyCreated{a, b} {
			if !ptyGet(t, s, p.SessionID).IsAlive {
				t.Fatalf("session %s dead %v after thaw", p.SessionID, back)
			}
		}
	}
	svc.check(t, s, thawed, frozen)

	// And the idle timeout still holds, in running time.
	for _, p := range []ptyCreated{a, b} {
		in := waitEnded(t, s, p.SessionID, 30*time.Second)
		if in.ExitCode == nil || *in.ExitCode != 129 {
			t.Fatalf("session %s ended %+v, want the idle kill's hang-up (129)", p.SessionID, in)
		}
	}
	t.Logf("sessions killed as idle %v after thaw (idle timeout %v of running time, %v of it before the freeze)",
		time.Since(thawed).Round(100*time.Millisecond), idle, frozeAt.Sub(created).Round(time.Millisecond))
	svc.waitRestart(t, s)
	if !strings.Contains(s.AgentLog(), "sandbox was paused") {
		t.Errorf("the agent did not log the pause it must have detected")
	}
}

// freezeServices are the supervised processes frozen with the sandbox.
type freezeServices struct {
	backoffFrom time.Time // the crasher's back-off started about here
}

// freezeBackoff is the crasher's restart back-off: longer than what is
// left of the test between the thaw and the check.
const freezeBackoff = 8 * time.Second

// startFreezeServices starts "slowweb", an HTTP service that needs 8 x 50
// ms of sleep per answer, health-checked back to back (a 4 s probe timeout:
// less than the 6 and 10 s pauses, more than a loaded machine's stall) with failure
// threshold 1 (so a probe is in flight when the freeze comes, and one
// failure kills it), and "crasher", which fails at once and restarts
// after freezeBackoff. It returns once the first is healthy and the second
// backing off.
func startFreezeServices(t *testing.T, s *System) *freezeServices {
	t.Helper()
	addr := freeAddr(t)
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	web := "import http.server,sys,time\n" +
		"class H(http.server.BaseHTTPRequestHandler):\n" +
		"  def do_GET(self):\n" +
		"    for _ in range(8): time.sleep(0.05)\n" +
		"    self.send_response(200); self.end_headers()\n" +
		"  def log_message(self, *a): pass\n" +
		"http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
	n, _ := strconv.Atoi(port)
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "/usr/bin/python3", "args": []string{"-c", web, port}, "name": "slowweb",
		"health_check": map[string]any{"type": "http", "port": n, "initial_delay_ms": 300,
			"interval_ms": 1, "timeout_ms": 4000, "failure_threshold": 1},
	}, 201, nil)
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "sh", "args": []string{"-c", "exit 3"}, "name": "crasher",
		"restart": map[string]any{"policy": "always", "initial_backoff_ms": freezeBackoff.Milliseconds(),
			"max_backoff_ms": freezeBackoff.Milliseconds()},
	}, 201, nil)
	svc := &freezeServices{}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		w, c := getProc(t, s, "slowweb").Managed, getProc(t, s, "crasher").Managed
		if svc.backoffFrom.IsZero() && c.Status == "backing_off" {
			svc.backoffFrom = time.Now()
		}
		if w.HealthStatus == "healthy" && !svc.backoffFrom.IsZero() {
			return svc
		}
		if time.Now().After(deadline) {
			t.Fatalf("services not ready: slowweb %+v, crasher %+v", w, c)
		}
	}
}

// check runs 2 s after thaw: the probe in flight at the freeze and those
// after it succeeded, and the back-off still runs (it began less than
// freezeBackoff of running time ago).
func (f *freezeServices) check(t *testing.T, s *System, thawed time.Time, frozen time.Duration) {
	t.Helper()
	time.Sleep(time.Until(thawed.Add(2 * time.Second)))
	w := getProc(t, s, "slowweb").Managed
	if w.RestartCount != 0 || w.HealthStatus != "healthy" || w.ConsecutiveHealthFailures != 0 || w.LastError != nil {
		t.Fatalf("the freeze failed slowweb's health check: %+v (last error %q)", w, deref(w.LastError))
	}
	// Less than freezeBackoff of running time has passed since it began
	// (the check comes before it could): no restart yet.
	if ran := thawed.Sub(f.backoffFrom) - frozen + time.Since(thawed); ran < freezeBackoff-time.Second {
		if c := getProc(t, s, "crasher").Managed; c.RestartCount != 0 {
			t.Fatalf("crasher restarted %v after thaw: its back-off counted frozen time: %+v", time.Since(thawed), c)
		}
	}
}

// waitRestart waits for the crasher's back-off to end after all.
func (f *freezeServices) waitRestart(t *testing.T, s *System) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); getProc(t, s, "crasher").Managed.RestartCount == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("crasher's back-off never ended")
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// waitHealthy polls GET /api/v1/health through the proxy until it answers
// 200 and returns the time since from, or -1 after limit. Each try has a
// short timeout, so a request lost with a dead uplink does not hide a
// recovery. It runs in its own goroutine: no t.Fatal here.
func waitHealthy(s *System, from time.Time, limit time.Duration) time.Duration {
	for time.Since(from) < limit {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, err := http.NewRequestWithContext(ctx, "GET", s.BaseURL()+"/api/v1/health", nil)
		if err != nil {
			cancel()
			return -1
		}
		req.Host = s.SandboxID + ".local"
		req.Header.Set("Authorization", "Bearer "+s.APIKey)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return time.Since(from)
			}
		}
		cancel()
		time.Sleep(20 * time.Millisecond)
	}
	return -1
}
