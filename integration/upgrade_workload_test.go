package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// upgradeWorkload is what a sandbox holds when a live upgrade comes: PTY
// sessions (one attached and resized, one never attached, one printing a
// counter with a client on it), background processes (a piped one, one
// printing a counter on both outputs, a sleeper, one already exited), a
// managed process restarted once, one backing off, two health-checked
// ones (a healthy and a failing count), a boot service and an in-flight
// run. Its checks fail when any item is lost or changed.
type upgradeWorkload struct {
	s *System

	ticker, shell, detached ptyCreated
	tickC, shellC           *ptyConn
	tickSeen                int  // highest tick a client has seen, contiguous from tick-0
	skipTicker              bool // check leaves the ticker to a rule of its own
	sessPID                 map[string]int

	piped, counter, sleeper, early procInfo
	crashy, backoff, keeper        procInfo
	healthy, sick                  procInfo
	hits                           *atomic.Int64 // health checks the test's server answered
	sickFails                      int           // the sick one's consecutive failures, last seen
	runCancel                      context.CancelFunc
}

// upgradeEtc is the image's /etc/tl-agent: one boot service and an
// on-boot hook that counts its runs (an upgrade must not run it again).
func upgradeEtc(t *testing.T) string {
	return bootImage(t, map[string]string{
		"services.d/keeper.json":  `{"command": "sh", "args": ["-c", "echo keeper-up; exec sleep 100000"]}`,
		"hooks/on-boot.d/10-mark": "#!/bin/sh\necho run >> /tmp/boot-hook-runs\n",
	})
}

// counterLines is how many lines the counter process prints (on each
// output) before it exits 4: it runs through several upgrades.
const counterLines = 1200

// startUpgradeWorkload starts everything; full adds the items only the
// end-to-end test needs (the counter process, back-off, run).
func startUpgradeWorkload(t *testing.T, s *System, full bool) *upgradeWorkload {
	t.Helper()
	w := &upgradeWorkload{s: s, sessPID: map[string]int{}, tickSeen: -1}
	w.ticker = ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c",
		"i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.02; done"}})
	w.tickC = ptyDial(t, s, w.ticker)
	w.tickC.ready()
	w.tickC.waitFor("tick-20\r\n", 20*time.Second)
	w.shell = ptyCreate(t, s, map[string]any{"command": "sh"})
	w.shellC = ptyDial(t, s, w.shell)
	w.shellC.ready()
	w.shellC.resize(100, 30)
	w.shellC.input("echo before-$((6*7))\n")
	w.shellC.waitFor("before-42", 20*time.Second)
	w.detached = ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c",
		"echo det-start; touch /tmp/det-started; read x; echo det-got-$x; exit 5"}})
	waitFile(t, s, "/tmp/det-started")
	for _, p := range []ptyCreated{w.ticker, w.shell, w.detached} {
		w.sessPID[p.SessionID] = ptyGet(t, s, p.SessionID).PID
	}

	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sh", "args": []string{"-c",
		"echo start; while read l; do echo got:$l; done; exit 3"}, "stdin_mode": "pipe"}, 201, &w.piped)
	s.JSON("POST", "/api/v1/processes/"+itoa(w.piped.Pid)+"/stdin", "one\n", 204, nil)
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sleep", "args": []string{"100000"}, "stdout_mode": "discard"}, 201, &w.sleeper)
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sh", "args": []string{"-c", "echo done-early; exit 6"}}, 201, &w.early)
	w.early = waitStatus(t, s, itoa(w.early.Pid), "exited")
	w.crashy = startCrashy(t, s)
	w.keeper = waitKeeper(t, s)
	waitLines(t, s, itoa(w.piped.Pid), "stdout", []string{"start", "got:one"})
	if !full {
		return w
	}
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sh", "args": []string{"-c", fmt.Sprintf(
		"i=0; while [ $i -lt %d ]; do echo line-$i; echo err-$i >&2; i=$((i+1)); sleep 0.03; done; exit 4", counterLines)}}, 201, &w.counter)
	// Fails every time with a long back-off: the upgrade comes while it
	// waits, and its timer must be re-armed by the new agent.
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sh", "args": []string{"-c", "exit 2"}, "name": "backoff",
		"restart": map[string]any{"max_restarts": 2, "initial_backoff_ms": 3000, "max_backoff_ms": 6000}}, 201, &w.backoff)
	w.startRun(t)
	w.startHealthChecked(t)
	return w
}

// startHealthChecked starts two health-checked managed processes: one
// whose http check the test's own server answers (the sandbox shares
// this machine's network), one whose tcp check always fails under a
// threshold it never reaches, so its consecutive failures only grow.
func (w *upgradeWorkload) startHealthChecked(t *testing.T) {
	t.Helper()
	s := w.s
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.hits = &atomic.Int64{}
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { w.hits.Add(1) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sleep", "args": []string{"100000"}, "name": "healthy",
		"health_check": map[string]any{"type": "http", "port": ln.Addr().(*net.TCPAddr).Port, "path": "/healthz", "initial_delay_ms": 100, "interval_ms": 200}}, 201, &w.healthy)
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sleep", "args": []string{"100000"}, "name": "sick",
		"health_check": map[string]any{"type": "tcp", "port": 1, "initial_delay_ms": 100, "interval_ms": 200, "failure_threshold": 1000000}}, 201, &w.sick)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		h, k := getProc(t, s, "healthy"), getProc(t, s, "sick")
		if h.Managed.HealthStatus == "healthy" && k.Managed.ConsecutiveHealthFailures > 2 {
			w.sickFails = k.Managed.ConsecutiveHealthFailures
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("health checks: healthy %+v, sick %+v", h.Managed, k.Managed)
		}
	}
}

// checkHealth: the same instances, the healthy one still healthy, the
// sick one's failure count carried over (it only grows).
func (w *upgradeWorkload) checkHealth(t *testing.T) {
	t.Helper()
	h, k := getProc(t, w.s, "healthy"), getProc(t, w.s, "sick")
	if h.Pid != w.healthy.Pid || h.Managed.HealthStatus != "healthy" || h.Managed.RestartCount != 0 {
		t.Fatalf("healthy: pid %d %+v, want pid %d, healthy, no restart", h.Pid, h.Managed, w.healthy.Pid)
	}
	if k.Pid != w.sick.Pid || k.Managed.ConsecutiveHealthFailures < w.sickFails || k.Managed.RestartCount != 0 {
		t.Fatalf("sick: pid %d %+v, want pid %d, consecutive_health_failures at least %d (carried over), no restart",
			k.Pid, k.Managed, w.sick.Pid, w.sickFails)
	}
	w.sickFails = k.Managed.ConsecutiveHealthFailures
}

// startCrashy starts a managed process that fails once and then runs:
// restart_count 1 before any upgrade.
func startCrashy(t *testing.T, s *System) procInfo {
	t.Helper()
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sh", "args": []string{"-c",
		"n=$(cat /tmp/crashy-n 2>/dev/null || echo 0); echo $((n+1)) > /tmp/crashy-n; echo run-$n; [ $n -ge 1 ] || exit 1; exec sleep 100000"},
		"name": "crashy", "restart": map[string]any{"initial_backoff_ms": 100}}, 201, &p)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c := getProc(t, s, "crashy")
		if c.Managed.RestartCount == 1 && c.Status == "running" && c.Managed.Status == "running" {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("crashy not running after one restart: %+v %+v", c, c.Managed)
		}
	}
}

// waitKeeper waits for the boot service and returns its process.
func waitKeeper(t *testing.T, s *System) procInfo {
	t.Helper()
	waitInfo(t, s, "the boot service ready", func(in infoBody) bool { return in.ServicesReady && len(in.Services) == 1 })
	return getProc(t, s, "keeper")
}

// startRun starts a run whose process outlives the upgrade: the run's
// client is dropped with the uplink, and the process goes on.
func (w *upgradeWorkload) startRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w.runCancel = cancel
	t.Cleanup(cancel)
	body := runStream(t, w.s, ctx, map[string]any{"command": "sh", "args": []string{"-c",
		"echo run-started; sleep 6; echo run-finished > /tmp/run-finished"}})
	go func() { _, _ = io.Copy(io.Discard, body); body.Close() }()
}

// check is what must hold after every upgrade: the version answered, PID
// 1, every session alive with the same pid, the ticker's replay
// contiguous and going on, every live process the same pid and the
// managed ones' counters kept. It leaves a client attached to the ticker
// (the next upgrade drops it) and returns the agent's status.
func (w *upgradeWorkload) check(t *testing.T, version string) {
	t.Helper()
	s := w.s
	st := agentState(t, s)
	if st.Version != version || st.PID != 1 {
		t.Fatalf("agent status: version %q pid %d, want %q and 1", st.Version, st.PID, version)
	}
	if in, ok := s.TryInfo(10 * time.Second); !ok || in.Version != version {
		t.Fatalf("/api/v1/info through the proxy: %+v %v, want version %q", in, ok, version)
	}
	for id, pid := range w.sessPID {
		if in := ptyGet(t, s, id); !in.IsAlive || in.PID != pid {
			t.Fatalf("pty session %s: %+v, want alive with pid %d", id, in, pid)
		}
	}
	if !w.skipTicker {
		w.checkTicker(t)
	}
	for _, p := range []procInfo{w.piped, w.sleeper} {
		if got := getProc(t, s, itoa(p.Pid)); got.Status != "running" {
			t.Fatalf("process %d (%s %v): %s after the upgrade, want running", p.Pid, p.Command, p.Args, got.Status)
		}
	}
	if e := getProc(t, s, itoa(w.early.Pid)); e.Status != "exited" || e.ExitCode == nil || *e.ExitCode != 6 {
		t.Fatalf("the process that exited before the upgrade: %+v, want kept, exited 6", e)
	}
	waitLines(t, s, itoa(w.early.Pid), "stdout", []string{"done-early"})
	if c := getProc(t, s, "crashy"); c.Pid != w.crashy.Pid || c.Managed.RestartCount != 1 || c.Managed.Status != "running" {
		t.Fatalf("crashy: pid %d %+v, want pid %d, restart_count 1, running", c.Pid, c.Managed, w.crashy.Pid)
	}
	if k := getProc(t, s, "keeper"); k.Pid != w.keeper.Pid || k.Status != "running" {
		t.Fatalf("boot service keeper: pid %d %s, want pid %d running (not restarted)", k.Pid, k.Status, w.keeper.Pid)
	}
	if w.hits != nil {
		w.checkHealth(t)
	}
	in := waitInfo(t, s, "the boot service ready", func(in infoBody) bool { return in.ServicesReady })
	if len(in.Services) != 1 || in.Services[0].Name != "keeper" {
		t.Fatalf("services after the upgrade: %+v", in.Services)
	}
}

// checkTicker attaches a new client to the counter session: its replay
// holds everything a client saw before (byte for byte), has no gap, and
// the counter goes on past what was seen.
func (w *upgradeWorkload) checkTicker(t *testing.T) {
	t.Helper()
	w.tickC.t = t
	w.tickC.drain()
	before := w.tickC.out.String()
	w.tickC.c.CloseNow()
	c := ptyDial(t, w.s, w.ticker)
	c.ready()
	_, last := contiguous(before, "tick-")
	c.waitFor(fmt.Sprintf("tick-%d\r\n", last+10), 20*time.Second)
	got := c.out.String()
	if !strings.HasPrefix(got, before) {
		t.Fatalf("the ticker's replay does not start with what a client saw before the upgrade (%d bytes seen, %d replayed)\nbefore: %q\nreplay: %q",
			len(before), len(got), tailStr(before, 200), tailStr(got[:min(len(got), len(before))], 200))
	}
	ok, n := contiguous(got, "tick-")
	if !ok || n <= w.tickSeen {
		t.Fatalf("the ticker's replay has a gap at tick-%d (last seen before: tick-%d): %q", n, w.tickSeen, tailStr(got, 300))
	}
	w.tickSeen = n
	w.tickC = c
}

// checkEnd ends everything and checks each item's output and true exit.
func (w *upgradeWorkload) checkEnd(t *testing.T, full bool) {
	t.Helper()
	s := w.s
	// The attached shell: its size kept, input and output work, exit code.
	w.shellC.c.CloseNow()
	sh := ptyDial(t, s, w.shell)
	sh.ready()
	sh.input("stty size; echo after-$((7*7))\n")
	sh.waitFor("after-49", 20*time.Second)
	if !strings.Contains(sh.out.String(), "30 100") || !strings.Contains(sh.out.String(), "before-42") {
		t.Fatalf("shell after the upgrades: no replay of before-42 or size not 30 100: %q", tailStr(sh.out.String(), 400))
	}
	if in := ptyGet(t, s, w.shell.SessionID); in.Rows != 30 || in.Cols != 100 {
		t.Fatalf("shell session size %dx%d, want 100x30", in.Cols, in.Rows)
	}
	sh.input("exit 7\n")
	sh.waitClose(20 * time.Second)
	if sh.exit != 7 {
		t.Fatalf("shell exit %d, want 7", sh.exit)
	}
	// The never-attached session: its output from before, then input.
	det := ptyDial(t, s, w.detached)
	det.ready()
	det.waitFor("det-start", 20*time.Second)
	det.input("x\n")
	det.waitFor("det-got-x", 20*time.Second)
	det.waitClose(20 * time.Second)
	if det.exit != 5 {
		t.Fatalf("detached session exit %d, want 5", det.exit)
	}
	// The piped process: stdin written before and after, true exit.
	pid := itoa(w.piped.Pid)
	s.JSON("POST", "/api/v1/processes/"+pid+"/stdin", "two\n", 204, nil)
	s.JSON("POST", "/api/v1/processes/"+pid+"/stdin/close", nil, 204, nil)
	if p := waitStatus(t, s, pid, "exited"); *p.ExitCode != 3 {
		t.Fatalf("piped process exit %d, want 3", *p.ExitCode)
	}
	waitLines(t, s, pid, "stdout", []string{"start", "got:one", "got:two"})
	// The sleeper: a signal now, its status says so.
	s.JSON("POST", "/api/v1/processes/"+itoa(w.sleeper.Pid)+"/signal", map[string]any{"signal": 15}, 200, nil)
	if p := waitStatus(t, s, itoa(w.sleeper.Pid), "signaled"); p.Signal == nil || *p.Signal != 15 {
		t.Fatalf("sleeper: %+v, want signaled 15", p)
	}
	if full {
		w.checkEndFull(t)
	}
}

// checkEndFull: the counter process's output complete on both streams
// and its exit, the back-off's restarts done by the new agent, the run's
// process not killed, the on-boot hook run once.
func (w *upgradeWorkload) checkEndFull(t *testing.T) {
	t.Helper()
	s := w.s
	pid := itoa(w.counter.Pid)
	p := waitStatusFor(t, s, pid, "exited", 120*time.Second)
	if *p.ExitCode != 4 {
		t.Fatalf("counter process exit %d, want 4", *p.ExitCode)
	}
	for stream, prefix := range map[string]string{"stdout": "line-", "stderr": "err-"} {
		lines := procLines(t, s, pid, stream)
		if len(lines) != counterLines {
			t.Fatalf("counter %s: %d lines, want %d (first %q, last %q)", stream, len(lines), counterLines, lines[0], lines[len(lines)-1])
		}
		for i, l := range lines {
			if l != prefix+strconv.Itoa(i) {
				t.Fatalf("counter %s line %d is %q, want %s%d", stream, i, l, prefix, i)
			}
		}
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		b := getProc(t, s, "backoff")
		if b.Managed.Status == "stopped" {
			if b.Managed.RestartCount != 2 || b.Managed.LastExit == nil || *b.Managed.LastExit.ExitCode != 2 {
				t.Fatalf("backoff stopped with %+v, want restart_count 2 and last exit 2", b.Managed)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backoff never finished its restarts (a back-off timer lost in the upgrade?): %+v", b.Managed)
		}
	}
	waitFile(t, s, "/tmp/run-finished")
	// The health loops run in the agent that serves now.
	hits, fails := w.hits.Load(), w.sickFails
	for deadline := time.Now().Add(20 * time.Second); w.hits.Load() < hits+3 || w.sickFails < fails+3; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("health checks stopped after the upgrades: %d more http checks, sick failures %d -> %d", w.hits.Load()-hits, fails, w.sickFails)
		}
		w.checkHealth(t)
	}
	if data, _ := os.ReadFile(s.SandboxPath("/tmp/boot-hook-runs")); string(data) != "run\n" {
		t.Fatalf("the on-boot hook ran %d times, want once (an upgrade is not a boot)", strings.Count(string(data), "run"))
	}
	// The log keeps its last 4 MiB: an early line may be gone, so this
	// counts starts seen, and the hook's file is the exact check.
	started := 0
	for _, line := range strings.Split(s.AgentLog(), "\n") {
		if strings.Contains(line, "service started") && strings.Contains(line, `"service":"keeper"`) {
			started++
		}
	}
	if started > 1 {
		t.Fatalf("the boot service was started %d times, want once", started)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// waitFile waits for path to exist inside the sandbox.
func waitFile(t *testing.T, s *System, path string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(s.SandboxPath(path)); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared in the sandbox", path)
		}
	}
}

// procLines is a process's kept lines of stream (stdout, stderr, output).
func procLines(t *testing.T, s *System, key, stream string) []string {
	t.Helper()
	var out struct {
		Lines        []string `json:"lines"`
		DroppedLines int      `json:"dropped_lines"`
	}
	s.JSON("GET", "/api/v1/processes/"+key+"/"+stream, nil, 200, &out)
	if out.DroppedLines != 0 {
		t.Fatalf("process %s %s: %d lines dropped", key, stream, out.DroppedLines)
	}
	return out.Lines
}

// waitLines waits until a process's stream holds exactly want.
func waitLines(t *testing.T, s *System, key, stream string, want []string) {
	t.Helper()
	var got []string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = procLines(t, s, key, stream); strings.Join(got, "\n") == strings.Join(want, "\n") {
			return
		}
	}
	t.Fatalf("process %s %s: %q, want %q", key, stream, got, want)
}

func waitStatusFor(t *testing.T, s *System, key, status string, d time.Duration) procInfo {
	t.Helper()
	for deadline := time.Now().Add(d); ; time.Sleep(100 * time.Millisecond) {
		p := getProc(t, s, key)
		if p.Status == status {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s: status %q after %v, want %q", key, p.Status, d, status)
		}
	}
}

// attachedGoesOn checks that a client attached before a refused upgrade
// was never dropped: it is the same connection, and its input and output
// still work.
func attachedGoesOn(t *testing.T, c *ptyConn, mark string) {
	t.Helper()
	c.input("echo " + mark + "-$((1+1))\n")
	c.waitFor(mark+"-2", 20*time.Second)
	if !c.drain() {
		t.Fatalf("the attached client was dropped: %v", c.err)
	}
}
