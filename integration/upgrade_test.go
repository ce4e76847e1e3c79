package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tensorlake/tl-agent/agent"
)

// Live upgrade of PID 1 (issue 22, docs/upgrade.md), end to end: the real
// agent as PID 1 of a sandbox, upgraded in place to a second build while
// PTY sessions, processes, managed restarts and a boot service run.

// upgradeCount is how many upgrades in a row TestLiveUpgrade makes,
// alternating two builds.
const upgradeCount = 20

// Leak tolerances after upgradeCount upgrades, against the agent before
// the first one (clients attached alike): a leak of one per upgrade is
// well over them.
const (
	upgradeFDSlack        = 4
	upgradeGoroutineSlack = 10
)

// upgradeSystem is a sandbox with the workload's boot image and an
// operator door (the platform's upgrade call), with both builds of the
// agent installed in its root.
func upgradeSystem(t *testing.T) (*System, operator, map[string]string) {
	t.Helper()
	RequireRoot(t)
	a, b := MainBuild(t), UpgradeBinary(t, UpgradeVersionB, false)
	s, op := lifecycleSystem(t, Options{EtcTLAgent: upgradeEtc(t)}, "sbx-unused", randHex(32))
	ensureUser(t, s)
	return s, op, map[string]string{
		a.Version: s.InstallFile(t, a.Path, "/opt/tl-upgrade/tl-agent-a"),
		b.Version: s.InstallFile(t, b.Path, "/opt/tl-upgrade/tl-agent-b"),
	}
}

// upgradeInsideTo upgrades with `tl-agent upgrade` inside the sandbox and
// waits until the sandbox serves as version through the proxy.
func upgradeInsideTo(t *testing.T, s *System, path, version string) time.Duration {
	t.Helper()
	start := time.Now()
	out, err := s.UpgradeInside(path)
	// A new agent refuses an upgrade until it has booted ("retry
	// shortly"); the test retries as an operator would, for 10 s.
	for retry := 0; err != nil && strings.Contains(out, `"STARTING"`) && retry < 100; retry++ {
		time.Sleep(100 * time.Millisecond)
		out, err = s.UpgradeInside(path)
	}
	if err != nil {
		t.Fatalf("tl-agent upgrade %s: %v\n%s\nagent log:\n%s", path, err, out, tail(s.AgentLog(), 40))
	}
	return s.WaitServing(t, version, start, 60*time.Second)
}

// upgradeDoor upgrades through the platform door of tl-proxy.
func upgradeDoor(t *testing.T, s *System, op operator, path, version string) time.Duration {
	t.Helper()
	start := time.Now()
	code, out := op.call("POST", "/sandboxes/"+s.SandboxID+"/upgrade", map[string]any{"path": path})
	if code != http.StatusAccepted {
		t.Fatalf("POST /sandboxes/%s/upgrade %s: %d %v\nagent log:\n%s", s.SandboxID, path, code, out, tail(s.AgentLog(), 40))
	}
	return s.WaitServing(t, version, start, 60*time.Second)
}

// agentFigures are the agent's fds and goroutines, the least of a few
// samples (a status call or a ping in flight counts too).
func agentFigures(t *testing.T, s *System) (fds, goroutines int) {
	t.Helper()
	fds, goroutines = 1<<30, 1<<30
	for i := 0; i < 5; i++ {
		st := agentState(t, s)
		fds, goroutines = min(fds, s.AgentFDs(t)), min(goroutines, st.Goroutines)
		time.Sleep(200 * time.Millisecond)
	}
	return fds, goroutines
}

// handoverFDs lists the agent's fds that only an upgrade makes: the
// state's memfd (internal/handover's name) and the old binary kept for a
// rollback (one of the builds). After the new agent serves, none must be
// left. (The incubator's memfd is PID 1's for good: not one of these.)
func handoverFDs(t *testing.T, s *System) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", s.AgentPid())
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("agent fds: %v", err)
	}
	var left []string
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if strings.HasPrefix(target, "/memfd:tl-agent-handover") || strings.HasPrefix(target, "/opt/tl-upgrade/") ||
			strings.HasPrefix(target, "/usr/local/bin/tl-agent") {
			left = append(left, e.Name()+" -> "+target)
		}
	}
	return left
}

// TestLiveUpgrade: a workload of every kind survives 20 upgrades in a row
// between two builds (CLI inside the sandbox and the platform door by
// turns): after each, the new version answers as PID 1, every session
// and process is there with its pid, counters kept, the ticker's replay
// without a gap; at the end every item's output is complete and its exit
// code true, and the agent's fds and goroutines are back to what they were.
func TestLiveUpgrade(t *testing.T) {
	s, op, paths := upgradeSystem(t)
	a, b := MainBuild(t).Version, UpgradeVersionB
	w := startUpgradeWorkload(t, s, true)
	w.check(t, a)
	hostPid := s.AgentPid()
	baseFDs, baseG := agentFigures(t, s)
	t.Logf("before the first upgrade: %d fds, %d goroutines", baseFDs, baseG)

	took := upgradeInsideTo(t, s, paths[b], b)
	t.Logf("upgrade 1 (%s -> %s, CLI): serving again after %v", a, b, took.Round(time.Millisecond))
	w.check(t, b)

	for i := 2; i <= upgradeCount; i++ {
		from, to := a, b
		if i%2 == 0 {
			from, to = b, a
		}
		how := "CLI"
		if i%4 >= 2 {
			how = "door"
			took = upgradeDoor(t, s, op, paths[to], to)
		} else {
			took = upgradeInsideTo(t, s, paths[to], to)
		}
		t.Logf("upgrade %d (%s -> %s, %s): serving again after %v", i, from, to, how, took.Round(time.Millisecond))
		w.check(t, to)
		if u := agentState(t, s).Upgrade; u.Upgrades != int64(i) || u.Last == nil || u.Last.Result != "ok" || u.Last.From != from || u.Last.To != to {
			t.Fatalf("upgrade %d: the status reports %+v %+v, want %d upgrades, the last ok from %s to %s", i, u, u.Last, i, from, to)
		}
	}
	if s.AgentPid() != hostPid {
		t.Fatalf("the sandbox's PID 1 is a new process (host pid %d, was %d)", s.AgentPid(), hostPid)
	}

	// The same clients as at the baseline: the ticker's (check left one)
	// and the shell's.
	w.shellC.c.CloseNow()
	w.shellC = ptyDial(t, s, w.shell)
	w.shellC.ready()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		fds, g := agentFigures(t, s)
		left := handoverFDs(t, s)
		if fds <= baseFDs+upgradeFDSlack && g <= baseG+upgradeGoroutineSlack && len(left) == 0 {
			t.Logf("after %d upgrades: %d fds, %d goroutines (before: %d, %d)", upgradeCount, fds, g, baseFDs, baseG)
			break
		}
		if time.Now().After(deadline) {
			out, _ := exec.Command("curl", "-sS", "--unix-socket", s.ControlSocket(), "http://agent/debug/pprof/goroutine?debug=1").CombinedOutput()
			t.Fatalf("after %d upgrades: %d fds, %d goroutines, want at most %d+%d and %d+%d; upgrade fds left: %v\ngoroutines:\n%s",
				upgradeCount, fds, g, baseFDs, upgradeFDSlack, baseG, upgradeGoroutineSlack, left, tailStr(string(out), 6000))
		}
	}
	w.checkEnd(t, true)
}

// Fake new "binaries" for the pre-flight: each prints a version, and its
// upgrade-check answers as a build of another line would. refusesState
// refuses the state (a state format it does not read), as the check's
// JSON line says; oldProtocol accepts it but speaks an uplink protocol
// the proxy link does not; crashes dies in the check without an answer.
const (
	refusesState = `#!/bin/sh
case "$1" in
version) echo 99.0.0-refuses ;;
upgrade-check) echo '{"ok":false,"version":"99.0.0-refuses","error":"handover: state format 1 unknown (this build reads 99)"}'; exit 1 ;;
*) echo "refusing build started with $*" >&2; exit 1 ;;
esac
`
	oldProtocol = `#!/bin/sh
case "$1" in
version) echo 99.0.0-protocol ;;
upgrade-check) echo '{"ok":true,"version":"99.0.0-protocol","protocol":99,"sections":["agent"],"pids":1}' ;;
*) echo "protocol build started with $*" >&2; exit 1 ;;
esac
`
	crashes = `#!/bin/sh
case "$1" in
version) echo 99.0.0-crashes ;;
upgrade-check) echo 'panic: runtime error: index out of range [3] with length 3' >&2; exit 2 ;;
*) echo "crashing build started with $*" >&2; exit 1 ;;
esac
`
)

// installScript puts a fake binary into the sandbox's root.
func installScript(t *testing.T, s *System, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return s.InstallFile(t, p, "/opt/tl-upgrade/"+name)
}

// TestLiveUpgradeRefused: new binaries that fail verification or refuse the
// state in the pre-flight change nothing: the call says why, the same
// agent goes on (version, processes, pids), clients stay attached; then
// the good build with its right checksum upgrades.
func TestLiveUpgradeRefused(t *testing.T) {
	s, op, paths := upgradeSystem(t)
	a, b := MainBuild(t).Version, UpgradeBinary(t, UpgradeVersionB, false)
	w := startUpgradeWorkload(t, s, false)
	refuses := installScript(t, s, "refuses", refusesState)
	if err := os.WriteFile(s.SandboxPath("/opt/tl-upgrade/not-executable"), []byte(refusesState), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := fileSHA256(t, b.Path)
	procsBefore := procTable(t, s)

	cases := []struct {
		name, path string
		args       []string
		reason     string // in the answer
	}{
		{"a binary that prints no version (/bin/true)", "/bin/true", nil, "not a version"},
		{"a checksum that does not match", paths[b.Version], []string{"--sha256", strings.Repeat("0", 64)}, "sha256 mismatch"},
		{"a path that does not exist", "/opt/tl-upgrade/nope", nil, "no such file"},
		{"a file that is not executable", "/opt/tl-upgrade/not-executable", nil, "not executable"},
		{"a build that refuses the state in the pre-flight", refuses, nil, "state format 1 unknown"},
		{"a build that speaks an uplink protocol the proxy does not", installScript(t, s, "protocol", oldProtocol), nil, "protocol 99"},
		{"a build that crashes in the pre-flight", installScript(t, s, "crashes", crashes), nil, "index out of range"},
	}
	for i, c := range cases {
		rule(t, s, c.name, func(t *testing.T) {
			out, err := s.UpgradeInside(c.path, c.args...)
			if err == nil {
				t.Fatalf("tl-agent upgrade %s %v succeeded: %s", c.path, c.args, out)
			}
			if !strings.Contains(out, c.reason) {
				t.Fatalf("tl-agent upgrade %s: %q, want the reason (%q)", c.path, out, c.reason)
			}
			t.Logf("refused: %s", strings.TrimSpace(out))
			nothingChanged(t, s, w, a, procsBefore, fmt.Sprintf("still%d", i))
		})
	}
	rule(t, s, "the platform door refuses the same build with the reason", func(t *testing.T) {
		code, out := op.call("POST", "/sandboxes/"+s.SandboxID+"/upgrade", map[string]any{"path": refuses})
		if code/100 == 2 || !strings.Contains(fmt.Sprint(out), "state format 1 unknown") {
			t.Fatalf("door upgrade to a refusing build: %d %v, want a refusal with its reason", code, out)
		}
		nothingChanged(t, s, w, a, procsBefore, "door")
	})
	rule(t, s, "the good build with its checksum upgrades, everything kept", func(t *testing.T) {
		start := time.Now()
		out, err := s.UpgradeInside(paths[b.Version], "--sha256", sum)
		if err != nil {
			t.Fatalf("tl-agent upgrade --sha256 %s: %v %s", sum, err, out)
		}
		s.WaitServing(t, b.Version, start, 60*time.Second)
		w.check(t, b.Version)
	})
	rule(t, s, "an upgrade to the same build is allowed, everything kept", func(t *testing.T) {
		upgradeInsideTo(t, s, paths[b.Version], b.Version) // the CLI waits for the result
		u := agentState(t, s).Upgrade
		if u.Upgrades != 2 || u.Last == nil || u.Last.Result != "ok" || u.Last.From != b.Version || u.Last.To != b.Version {
			t.Fatalf("after an upgrade to the same build: %+v %+v, want 2 upgrades, the last ok from %s to itself", u, u.Last, b.Version)
		}
		w.check(t, b.Version)
		w.checkEnd(t, false)
	})
}

// nothingChanged: the same agent answers as version, the process table
// is as before, and the clients attached before are still attached.
func nothingChanged(t *testing.T, s *System, w *upgradeWorkload, version string, procs map[int]string, mark string) {
	t.Helper()
	if st := agentState(t, s); st.Version != version || st.PID != 1 {
		t.Fatalf("after a refused upgrade: version %q pid %d, want %q 1", st.Version, st.PID, version)
	}
	if got := procTable(t, s); fmt.Sprint(got) != fmt.Sprint(procs) {
		t.Fatalf("process table changed by a refused upgrade:\nbefore %v\nafter  %v", procs, got)
	}
	w.shellC.t, w.tickC.t = t, t
	attachedGoesOn(t, w.shellC, mark)
	if !w.tickC.drain() {
		t.Fatalf("the ticker's client was dropped by a refused upgrade: %v", w.tickC.err)
	}
	_, last := contiguous(w.tickC.out.String(), "tick-")
	w.tickC.waitFor(fmt.Sprintf("tick-%d\r\n", last+5), 20*time.Second)
	if ok, n := contiguous(w.tickC.out.String(), "tick-"); !ok {
		t.Fatalf("the ticker's client: gap at tick-%d", n)
	}
}

// procTable is pid -> status of every process in the table.
func procTable(t *testing.T, s *System) map[int]string {
	t.Helper()
	var list struct {
		Processes []procInfo `json:"processes"`
	}
	s.JSON("GET", "/api/v1/processes", nil, 200, &list)
	m := map[int]string{}
	for _, p := range list.Processes {
		m[p.Pid] = p.Status
	}
	return m
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// drain takes the messages queued now (not those that keep coming from a
// printing session: bounded by the queue's length); false when the
// connection has ended.
func (p *ptyConn) drain() bool {
	for n := len(p.msgs) + 1; n > 0; n-- {
		open, got := p.take(50 * time.Millisecond)
		if !open {
			return false
		}
		if !got {
			return true
		}
	}
	return true
}

// TestLiveUpgradeRollback: a build that fails its own restore after the exec
// (the fail-restore switch) hands the state back to the old binary: the
// old agent comes back as PID 1 with everything, reports the failed
// upgrade, and a later upgrade to a good build still works.
func TestLiveUpgradeRollback(t *testing.T) {
	s, _, paths := upgradeSystem(t)
	a, b := MainBuild(t).Version, UpgradeVersionB
	fail := UpgradeBinary(t, UpgradeVersionFail, true)
	failPath := s.InstallFile(t, fail.Path, "/opt/tl-upgrade/tl-agent-fail")
	w := startUpgradeWorkload(t, s, false)
	// A process printing through the rollback: the lines the failed build
	// read must come back too.
	var printer procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sh", "args": []string{"-c",
		"i=0; while [ $i -lt 300 ]; do echo p-$i; i=$((i+1)); sleep 0.02; done; exit 4"}}, 201, &printer)

	rule(t, s, "the failing build rolls back to the old agent", func(t *testing.T) {
		start := time.Now()
		out, err := s.UpgradeInside(failPath)
		t.Logf("tl-agent upgrade to the fail-restore build: %v %s", err, strings.TrimSpace(out))
		if err == nil || !strings.Contains(out, "rolled_back") {
			t.Fatalf("tl-agent upgrade to the fail-restore build: %v %q, want exit 1 saying rolled_back", err, out)
		}
		rec := waitUpgradeReport(t, s, 60*time.Second)
		if rec.To != UpgradeVersionFail || rec.From != a || !strings.Contains(rec.Error, "testFailRestore") {
			t.Fatalf("the status' rollback record %+v, want from %s to %s with the new build's reason", rec, a, UpgradeVersionFail)
		}
		s.WaitServing(t, a, start, 60*time.Second)
		// The exec happened: the uplink dropped, and with it the client
		// attached before.
		w.tickC.t = t
		for deadline := time.Now().Add(20 * time.Second); ; {
			if open, _ := w.tickC.take(time.Second); !open {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the client attached before the upgrade was never dropped: the fail-restore build did not run")
			}
		}
	})
	// The printing process and session are checked last, each on its own:
	// a loss stays in their output for good, and the rules before still
	// check everything else.
	w.skipTicker = true
	rule(t, s, "sessions, processes, counters and the boot service are intact after the rollback", func(t *testing.T) {
		w.check(t, a)
	})
	rule(t, s, "a good build still upgrades after the rollback", func(t *testing.T) {
		upgradeInsideTo(t, s, paths[b], b)
		w.check(t, b)
		w.checkEnd(t, false)
	})
	last := func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			prev := s.t
			s.t = t
			defer func() { s.t = prev }()
			f(t)
		})
	}
	last("the printing process's output has every line across the rollback and the upgrade", func(t *testing.T) {
		if p := waitStatusFor(t, s, itoa(printer.Pid), "exited", 60*time.Second); *p.ExitCode != 4 {
			t.Fatalf("printer exit %d, want 4", *p.ExitCode)
		}
		lines := procLines(t, s, itoa(printer.Pid), "stdout")
		for i, l := range lines {
			if l != "p-"+itoa(i) {
				t.Fatalf("printer line %d is %q, want p-%d (of %d lines)", i, l, i, len(lines))
			}
		}
		if len(lines) != 300 {
			t.Fatalf("printer: %d lines, want 300", len(lines))
		}
	})
	last("the printing session's replay has no gap across the rollback and the upgrade", func(t *testing.T) {
		w.checkTicker(t)
	})
}

// waitUpgradeReport waits until the agent's status reports the last
// upgrade rolled back and returns that record.
func waitUpgradeReport(t *testing.T, s *System, d time.Duration) agent.UpgradeRecord {
	t.Helper()
	var last agent.UpgradeStatus
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		last = agentStateQuiet(s).Upgrade // zero between the execs
		if last.Last != nil && last.Last.Result == "rolled_back" {
			return *last.Last
		}
	}
	t.Fatalf("the agent's status never reported the rollback within %v (upgrade part: %+v)\nagent log:\n%s", d, last, tail(s.AgentLog(), 40))
	return agent.UpgradeRecord{}
}
