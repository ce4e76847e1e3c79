package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tensorlake/tl-agent/agent"
)

// The live upgrade's flow against the real binary as PID 1 (docs/upgrade.md):
// an upgrade to another build serves again as PID 1 with the new version,
// the uplink back and the main command still watched; a refused
// pre-flight changes nothing; a build that fails its restore rolls back.

// upgradeCLI runs `tl-agent upgrade` from this machine on s's control socket.
func upgradeCLI(s *System, args ...string) (string, error) {
	full := append([]string{"upgrade"}, args...)
	full = append(full, "--socket", s.ControlSocket())
	out, err := exec.Command(filepath.Join(s.bin, "tl-agent"), full...).CombinedOutput()
	return string(out), err
}

// waitUplink waits until the agent itself reports its uplink connected.
func waitUplink(t *testing.T, s *System) agent.Status {
	t.Helper()
	for i := 0; i < 200; i++ {
		st := agentState(t, s)
		if st.Uplink.State == "connected" && s.Connected() {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("uplink not back after the upgrade\nagent log:\n%s", tail(s.AgentLog(), 40))
	return agent.Status{}
}

func TestUpgradeToAnotherBuild(t *testing.T) {
	RequireRoot(t)
	next := UpgradeBinary(t, UpgradeVersionB, false)
	s := Start(t, Options{
		AgentArgs: []string{"--exit-with-main"},
		Main:      []string{"sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done"},
	})
	before := agentState(t, s)
	path := s.InstallFile(t, next.Path, "/tmp/tl-agent-next")
	out, err := upgradeCLI(s, path, "--sha256", fileSHA256(t, next.Path))
	if err != nil {
		t.Fatalf("tl-agent upgrade: %v\n%s\nagent log:\n%s", err, out, tail(s.AgentLog(), 60))
	}
	if !strings.Contains(out, "upgraded: dev -> "+next.Version) {
		t.Fatalf("tl-agent upgrade said %q", out)
	}
	st := waitUplink(t, s)
	if st.Version != next.Version || st.PID != 1 || before.PID != 1 {
		t.Fatalf("after the upgrade: version %q pid %d (before: pid %d)", st.Version, st.PID, before.PID)
	}
	last := st.Upgrade.Last
	if last == nil || last.Result != "ok" || last.From != "dev" || last.To != next.Version || st.Upgrade.Upgrades != 1 {
		t.Fatalf("upgrade status %+v", st.Upgrade)
	}
	if st.SandboxID != s.SandboxID || st.UptimeSecs < before.UptimeSecs {
		t.Fatalf("identity or uptime lost: %q, %d s (before %d s)", st.SandboxID, st.UptimeSecs, before.UptimeSecs)
	}
	var info map[string]any
	s.JSON("GET", "/api/v1/info", nil, 200, &info) // the API serves through the proxy again
	if m, err := exec.Command(filepath.Join(s.bin, "tl-agent"), "metrics", "--socket", s.ControlSocket()).Output(); err != nil ||
		!strings.Contains(string(m), "\ntl_agent_upgrades_total 1\n") {
		t.Fatalf("metrics after the upgrade (%v): no tl_agent_upgrades_total 1", err)
	}
	// The main command is the predecessor's child, watched again: its exit
	// (by SIGTERM, which it turns into 42) ends the sandbox with its code.
	if out, err := s.Exec("pkill", "-TERM", "-x", "-P", "1", "sh"); err != nil {
		t.Fatalf("pkill: %v %s", err, out)
	}
	if code := s.WaitAgentExit(30 * time.Second); code != 42 {
		t.Fatalf("agent exit %d, want the main command's 42\n%s", code, tail(s.AgentLog(), 30))
	}
}

// A pre-flight that refuses (a binary that is no agent, a checksum that
// differs) changes nothing: the same agent serves on.
func TestUpgradeRefused(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	before := agentState(t, s)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"/bin/true"}, "not a version"},
		{[]string{"/bin/echo"}, "no check answer"},
		{[]string{filepath.Join(s.bin, "nope")}, "no such file"},
		{[]string{"/bin/true", "--sha256", strings.Repeat("ab", 32)}, "sha256 mismatch"},
		{[]string{"relative/path"}, "absolute path"},
	} {
		out, err := upgradeCLI(s, c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("upgrade %v: err %v, out %q; want a refusal with %q", c.args, err, out, c.want)
		}
	}
	st := agentState(t, s)
	if st.Version != before.Version || st.Upgrade.Upgrades != 0 || st.Upgrade.State != "idle" || st.Uplink.Connects != before.Uplink.Connects {
		t.Fatalf("a refused upgrade changed the agent: %+v, uplink connects %d -> %d", st.Upgrade, before.Uplink.Connects, st.Uplink.Connects)
	}
	if last := st.Upgrade.Last; last == nil || last.Result != "refused" {
		t.Fatalf("the last refusal is not in the status: %+v", st.Upgrade.Last)
	}
	if !strings.Contains(s.AgentLog(), "upgrade refused") || strings.Contains(s.AgentLog(), "restoring the handed-over state") {
		t.Fatal("the log does not show the refusals only")
	}
}

// A new build that fails its restore (the test flag) hands everything
// back: the old binary restores and reports the rollback.
func TestUpgradeRollback(t *testing.T) {
	RequireRoot(t)
	bad := UpgradeBinary(t, UpgradeVersionFail, true)
	s := Start(t, Options{Main: []string{"sleep", "600"}})
	out, err := upgradeCLI(s, s.InstallFile(t, bad.Path, "/tmp/tl-agent-bad"))
	if err == nil || !strings.Contains(out, "rolled_back") {
		t.Fatalf("tl-agent upgrade: %v %q; want a rollback reported\nagent log:\n%s", err, out, tail(s.AgentLog(), 60))
	}
	st := waitUplink(t, s)
	last := st.Upgrade.Last
	if st.Version != "dev" || st.PID != 1 || last == nil || last.Result != "rolled_back" || last.To != bad.Version ||
		!strings.Contains(last.Error, "testFailRestore") || st.Upgrade.Upgrades != 0 {
		t.Fatalf("after the rollback: version %q pid %d upgrade %+v %+v", st.Version, st.PID, st.Upgrade, last)
	}
	// The main command was handed back too: still the old agent's child.
	if out, err := s.Exec("pgrep", "-x", "-P", "1", "sleep"); err != nil {
		t.Fatalf("the main command is gone after the rollback: %v %s", err, out)
	}
}

// The platform's door: POST /sandboxes/{id}/upgrade on the proxy's
// operator listener answers 202 once the pre-flight accepted; the new
// agent serves --ssh-listen with the same host key (clients see no key
// change).
func TestUpgradeThroughOperatorDoor(t *testing.T) {
	RequireRoot(t)
	if _, err := exec.LookPath("ssh-keyscan"); err != nil {
		t.Skip("needs ssh-keyscan (scripts/deps.sh)")
	}
	sshAddr := freeAddr(t)
	s, op := lifecycleSystem(t, Options{AgentArgs: []string{"--ssh-listen", sshAddr}}, "sbx-unused", randHex(32))
	_, port, _ := strings.Cut(sshAddr, ":")
	scan := func() string {
		t.Helper()
		// -T 2: a port that is not an SSH server must not cost keyscan's
		// default 5 s a try.
		for i := 0; i < 100; i++ {
			out, err := exec.Command("ssh-keyscan", "-T", "2", "-t", "ed25519", "-p", port, "127.0.0.1").Output()
			if f := strings.Fields(string(out)); err == nil && len(f) >= 3 {
				return f[2]
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("ssh-keyscan on %s got no key", sshAddr)
		return ""
	}
	t0 := time.Now()
	keyBefore := scan()
	t.Logf("scan %v", time.Since(t0))
	next := UpgradeBinary(t, UpgradeVersionB, false)
	s.InstallFile(t, next.Path, "/tmp/tl-agent-next")
	base := "/sandboxes/" + s.SandboxID
	if code, out := op.call("POST", base+"/upgrade", map[string]any{"path": "/tmp/tl-agent-next", "sha256": "zz"}); code != 400 {
		t.Fatalf("a bad sha256 through the door: %d %v", code, out)
	}
	code, out := op.call("POST", base+"/upgrade", map[string]any{"path": "/tmp/tl-agent-next"})
	if code != 202 || out["state"] != "upgrading" || out["to"] != next.Version {
		t.Fatalf("upgrade through the door: %d %v", code, out)
	}
	id, _ := out["id"].(string)
	t.Logf("door answered %v", time.Since(t0))
	var st agent.Status
	for i := 0; i < 300; i++ {
		if st = agentStateQuiet(s); st.Upgrade.Last != nil && st.Upgrade.Last.ID == id {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Version != next.Version || st.Upgrade.Last == nil || st.Upgrade.Last.Result != "ok" {
		t.Fatalf("after the door's upgrade: version %q, %+v\n%s", st.Version, st.Upgrade.Last, tail(s.AgentLog(), 40))
	}
	t.Logf("status ok %v", time.Since(t0))
	waitUplink(t, s)
	t.Logf("uplink %v", time.Since(t0))
	if code, st := op.call("GET", base+"/lifecycle", nil); code != 200 || st["state"] != "running" {
		t.Fatalf("lifecycle status after the upgrade: %d %v", code, st)
	}
	if after := scan(); after != keyBefore {
		t.Fatalf("the ssh host key changed across the upgrade: %s -> %s", keyBefore, after)
	}
}

// agentStateQuiet is agentState that tolerates the agent being between
// binaries (the control socket down for a moment).
func agentStateQuiet(s *System) agent.Status {
	var st agent.Status
	out, err := exec.Command(filepath.Join(s.bin, "tl-agent"), "status", "--json", "--socket", s.ControlSocket()).Output()
	if err == nil {
		_ = json.Unmarshal(out, &st)
	}
	return st
}

// Listen mode (a runtime dials in): the listener is handed over, not made
// again (the socket file keeps its inode), and the proxy's --connect
// link comes back. An upgrade to the same build; the agent is no PID 1
// here (a child subreaper).
func TestUpgradeListenMode(t *testing.T) {
	bin := Binaries(t)
	dir := t.TempDir()
	sock, ctl := filepath.Join(dir, "uplink.sock"), filepath.Join(dir, "ctl.sock")
	token, key := randHex(32), "tl_test_"+randHex(8)
	cfgPath := filepath.Join(dir, "proxy.json")
	cfg := `{"sandboxes":{"lm":{"token":"` + token + `"}},"api_keys":{"` + key + `":"t"}}`
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	agentLog := startBareAgent(t, bin, "--listen", "unix:"+sock, "--sandbox-id", "lm", "--token", token, "--control-socket", ctl)
	httpAddr := freeAddr(t)
	p := exec.Command(filepath.Join(bin, "tl-proxy"), "--config", cfgPath, "--uplink-addr", "127.0.0.1:0",
		"--http-addr", httpAddr, "--ssh-addr", "", "--connect", "unix:"+sock, "--state-dir", dir)
	p.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Process.Kill(); _ = p.Wait() }()
	healthy := func() bool {
		for i := 0; i < 300; i++ {
			req, _ := http.NewRequest("GET", "http://"+httpAddr+"/api/v1/health", nil)
			req.Host = "lm.local"
			req.Header.Set("Authorization", "Bearer "+key)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return true
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	}
	if !healthy() {
		t.Fatalf("no healthy answer before the upgrade\n%s", agentLog.String())
	}
	var before syscall.Stat_t
	if err := syscall.Stat(sock, &before); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	out, err := exec.Command(filepath.Join(bin, "tl-agent"), "upgrade", filepath.Join(bin, "tl-agent"), "--socket", ctl).CombinedOutput()
	t.Logf("tl-agent upgrade took %v: %s", time.Since(t0), out)
	if err != nil || !strings.Contains(string(out), "upgraded: dev -> dev") {
		t.Fatalf("tl-agent upgrade: %v %s\n%s", err, out, agentLog.String())
	}
	var after syscall.Stat_t
	if err := syscall.Stat(sock, &after); err != nil || after.Ino != before.Ino {
		t.Fatalf("the listen socket was made again (inode %d -> %d, %v)", before.Ino, after.Ino, err)
	}
	if !healthy() {
		t.Fatalf("no healthy answer after the upgrade\n%s", agentLog.String())
	}
	t.Logf("healthy through the proxy %v after the call", time.Since(t0))
	// A build that fails its restore hands the listener back too.
	bad := UpgradeBinary(t, UpgradeVersionFail, true)
	out, err = exec.Command(filepath.Join(bin, "tl-agent"), "upgrade", bad.Path, "--socket", ctl).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "rolled_back") {
		t.Fatalf("upgrade to the fail-restore build: %v %s\n%s", err, out, agentLog.String())
	}
	if err := syscall.Stat(sock, &after); err != nil || after.Ino != before.Ino {
		t.Fatalf("the listen socket was made again after the rollback (inode %d -> %d, %v)", before.Ino, after.Ino, err)
	}
	if !healthy() {
		t.Fatalf("no healthy answer after the rollback\n%s", agentLog.String())
	}
}

// In a bare sandbox the agent mounts /proc, /dev/pts, /run... itself; the
// new binary's set-up finds them mounted and mounts nothing twice.
func TestUpgradeBareMountsOnce(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{Bare: true})
	mounts := func() string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", s.AgentPid()))
		if err != nil {
			t.Fatal(err)
		}
		var pts []string
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(l); len(f) > 4 {
				pts = append(pts, f[4])
			}
		}
		return strings.Join(pts, " ")
	}
	before := mounts()
	if !strings.Contains(s.AgentLog(), "mounted missing file systems") {
		t.Fatalf("the bare sandbox's agent mounted nothing: %s", before)
	}
	same := s.InstallFile(t, filepath.Join(s.bin, "tl-agent"), "/tmp/tl-agent-same")
	if out, err := upgradeCLI(s, same); err != nil || !strings.Contains(out, "upgraded: dev -> dev") {
		t.Fatalf("tl-agent upgrade: %v %s\n%s", err, out, tail(s.AgentLog(), 40))
	}
	if after := mounts(); after != before {
		t.Fatalf("mounts changed across the upgrade:\nbefore %s\nafter  %s", before, after)
	}
	waitUplink(t, s)
}

// With a cgroup of its own (v1 here), the new binary's headroom set-up
// finds the workload cgroup made and uses it again with the same limits,
// and a process started after the upgrade lands in it.
func TestUpgradeKeepsHeadroom(t *testing.T) {
	RequireRoot(t)
	RequireCgroupV1(t)
	s := Start(t, Options{CgroupV1: &CgroupV1{MemoryBytes: 256 << 20, Pids: 200, Freezer: true}})
	before := agentState(t, s).Headroom
	if before == nil || before.Workload == "" {
		t.Fatalf("no workload cgroup before the upgrade: %+v", before)
	}
	same := s.InstallFile(t, filepath.Join(s.bin, "tl-agent"), "/tmp/tl-agent-same")
	if out, err := upgradeCLI(s, same); err != nil {
		t.Fatalf("tl-agent upgrade: %v %s\n%s", err, out, tail(s.AgentLog(), 40))
	}
	st := waitUplink(t, s)
	if h := st.Headroom; h == nil || h.HeadroomStatus != before.HeadroomStatus {
		t.Fatalf("headroom after the upgrade %+v, before %+v", h, before)
	}
	resp := s.Do("POST", "/api/v1/processes/run", map[string]any{"command": "cat", "args": []string{"/proc/self/cgroup"}})
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if !strings.Contains(string(out), "memory:/"+s.cgroup+"/workload") {
		t.Fatalf("a process started after the upgrade is not in the workload cgroup:\n%s", out)
	}
}
