package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tensorlake/tl-agent/internal/threads"
)

// reporter collects lines that processes inside the sandbox send over TCP
// (the sandbox shares this machine's network): how a test hears from a
// process whose sandbox is about to vanish. bash's /dev/tcp does the
// sending.
type reporter struct {
	ln    net.Listener
	lines chan string
	conns chan net.Conn
}

func newReporter(t *testing.T) *reporter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &reporter{ln: ln, lines: make(chan string, 1000), conns: make(chan net.Conn, 100)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case r.conns <- c:
			default:
			}
			go func() {
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					r.lines <- sc.Text()
				}
			}()
		}
	}()
	return r
}

// tcp is the bash redirection target that reaches the reporter.
func (r *reporter) tcp() string {
	return "/dev/tcp/127.0.0.1/" + strconv.Itoa(r.ln.Addr().(*net.TCPAddr).Port)
}

// expect waits for a line with the prefix and returns it.
func (r *reporter) expect(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l := <-r.lines:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("no %q report within %v", prefix, d)
		}
	}
}

// zombiesOf counts zombie children of pid, as this machine's /proc shows.
func zombiesOf(pid int) int {
	n := 0
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		data, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		end := bytes.LastIndexByte(data, ')')
		if end < 0 {
			continue
		}
		f := strings.Fields(string(data[end+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}

// agentStatus reads the control socket's /status from this machine.
func agentStatus(t *testing.T, s *System) map[string]any {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.ControlSocket())
		}}}
	resp, err := client.Get("http://agent/status")
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	defer resp.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

// TestZombieStorm: a main command double-forks 10,000 orphans; all are
// reaped, and the main command's own exit code still reaches the agent
// (the reaper took every orphan without stealing its child's status).
func TestZombieStorm(t *testing.T) {
	RequireRoot(t)
	rep := newReporter(t)
	const n = 10000
	forker := buildForker(t)
	script := fmt.Sprintf(`exec 3<>%s; %s %d >/dev/null && echo stormed >&3; read -r code <&3; exit "$code"`, rep.tcp(), forker, n)
	s := Start(t, Options{AgentArgs: []string{"--exit-with-main"}, Main: []string{"bash", "-c", script}})
	rep.expect(t, "stormed", 120*time.Second)
	start := time.Now()
	var left int
	for time.Since(start) < 30*time.Second {
		if left = zombiesOf(s.AgentPid()); left == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	if left != 0 {
		t.Fatalf("%d zombies left %v after the storm", left, took)
	}
	t.Logf("no zombie of PID 1 left %v after the last of %d double-forks", took, n)
	st := agentStatus(t, s)
	reaper, _ := st["reaper"].(map[string]any)
	if got, _ := reaper["orphans_reaped"].(float64); got < n {
		t.Fatalf("reaper reaped %v orphans, want >= %d: %v", got, n, st)
	}
	c := <-rep.conns
	fmt.Fprintln(c, "42")
	if code := s.WaitAgentExit(30 * time.Second); code != 42 {
		t.Fatalf("agent exit code %d, want the main command's 42\n%s", code, tail(s.AgentLog(), 20))
	}
}

// buildForker builds testdata/forker where the sandbox sees it: /var/tmp
// is this machine's, through the overlay, and not mounted over.
func buildForker(t *testing.T) string {
	dir, err := os.MkdirTemp("/var/tmp", "tl-forker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the main command runs as tl-user
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/forker", "./integration/testdata/forker")
	cmd.Dir = Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build forker: %v\n%s", err, out)
	}
	return dir + "/forker"
}

// TestMainCommandSignaled: the main command killed by a signal ends the
// sandbox with 128+signal.
func TestMainCommandSignaled(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--exit-with-main"}, Main: []string{"sh", "-c", "sleep 1; kill -KILL $$"}})
	if code := s.WaitAgentExit(30 * time.Second); code != 128+9 {
		t.Fatalf("agent exit code %d, want 137\n%s", code, tail(s.AgentLog(), 20))
	}
}

// TestShutdownTermsEveryone: on SIGTERM, the main command (run as the
// sandbox user), its children and a process that left every group with
// setsid all get SIGTERM; the agent exits 0 well within the grace.
func TestShutdownTermsEveryone(t *testing.T) {
	RequireRoot(t)
	rep := newReporter(t)
	mainScript := fmt.Sprintf(`exec 3<>%s; echo "main $(id -un) $HOME" >&3; trap 'echo term-main >&3; exit 0' TERM; while :; do sleep 0.1; done`, rep.tcp())
	s := Start(t, Options{Main: []string{"bash", "-c", mainScript}})
	if got := rep.expect(t, "main ", 20*time.Second); got != "main tl-user /home/tl-user" {
		t.Errorf("main command runs as %q, want tl-user with its home", got)
	}
	stray := fmt.Sprintf(`exec 3<>%s; trap 'echo term-stray >&3; exit 0' TERM; echo stray-up >&3; while :; do sleep 0.1; done`, rep.tcp())
	if out, err := s.Exec("bash", "-c", "setsid bash -c \""+strings.ReplaceAll(stray, `"`, `\"`)+"\" </dev/null >/dev/null 2>&1 &"); err != nil {
		t.Fatalf("start stray: %v %s", err, out)
	}
	rep.expect(t, "stray-up", 20*time.Second)
	start := time.Now()
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := s.WaitAgentExit(20 * time.Second)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case l := <-rep.lines:
			got[l] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("SIGTERM reached only %v", got)
		}
	}
	if !got["term-main"] || !got["term-stray"] {
		t.Fatalf("SIGTERM reached %v, want main and stray", got)
	}
	if took >= 10*time.Second {
		t.Fatalf("shutdown took %v, not within the 10s grace", took)
	}
	log := s.AgentLog()
	for _, want := range []string{`"shutting down"`, `"sent SIGTERM"`, `"killed":0`, `"tl-agent stopped"`} {
		if !strings.Contains(log, want) {
			t.Errorf("agent log lacks %s", want)
		}
	}
	t.Logf("shutdown with 2 processes trapping SIGTERM took %v", took)
}

// TestShutdownKillsAfterGrace: a process that ignores SIGTERM is killed
// once the grace is over, and not before.
func TestShutdownKillsAfterGrace(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--shutdown-grace", "2s"}})
	if out, err := s.Exec("bash", "-c", `setsid bash -c 'trap "" TERM; exec sleep 1000' </dev/null >/dev/null 2>&1 &`); err != nil {
		t.Fatalf("start: %v %s", err, out)
	}
	time.Sleep(200 * time.Millisecond) // let it install its disposition
	start := time.Now()
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := s.WaitAgentExit(20 * time.Second)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if took < 2*time.Second {
		t.Fatalf("agent exited after %v, before the 2s grace", took)
	}
	log := s.AgentLog()
	if !strings.Contains(log, `"grace over: sent SIGKILL"`) || !strings.Contains(log, `"killed":1`) {
		t.Fatalf("agent log lacks the SIGKILL of one process:\n%s", tail(log, 15))
	}
	t.Logf("shutdown with a SIGTERM-proof process took %v (grace 2s)", took)
}

// provisionedFiles are the files provisioning may touch.
var provisionedFiles = []string{"/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow",
	"/etc/hostname", "/etc/hosts", "/etc/sudoers", "/etc/sudoers.d/tl-user"}

func readAll(t *testing.T, path func(string) string) map[string]string {
	out := map[string]string{}
	for _, f := range provisionedFiles {
		data, err := os.ReadFile(path(f))
		fi, err2 := os.Stat(path(f))
		if err == nil && err2 == nil {
			out[f] = fmt.Sprintf("%v %s", fi.Mode(), data)
		}
	}
	return out
}

// TestProvisionInSandbox: on this machine's Debian root (in the overlay),
// tl-user is made, sudo works for it without a password, the host name is
// tl-sbx inside and unchanged outside, and provisioning again changes no
// byte. This machine's own /etc is compared before and after.
func TestProvisionInSandbox(t *testing.T) {
	RequireRoot(t)
	hostBefore := readAll(t, func(p string) string { return p })
	hostName, _ := os.Hostname()
	s := Start(t, Options{})
	inside := func(p string) string { return s.SandboxPath(p) }

	out, err := s.Exec("id", "tl-user")
	if err != nil || !strings.Contains(out, "(sudo)") || !strings.Contains(out, "(tl-user)") {
		t.Fatalf("id tl-user: %q %v", out, err)
	}
	uid := strings.TrimSpace(mustExec(t, s, "id", "-u", "tl-user"))
	if taken := ownerOfUID1000(); taken != "" && taken != "tl-user" {
		if uid == "1000" || !strings.Contains(s.AgentLog(), "uid taken by another user") {
			t.Errorf("uid 1000 belongs to %s here: want tl-user on the next uid and the decision logged, got uid %s", taken, uid)
		}
	}
	fi, err := os.Stat(inside("/home/tl-user"))
	if err != nil || fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid) != uid {
		t.Fatalf("home: %v %v", fi, err)
	}
	fi, err = os.Stat(inside("/etc/sudoers.d/tl-user"))
	if err != nil || fi.Mode().Perm() != 0o440 {
		t.Fatalf("sudoers drop-in: %v %v", fi, err)
	}
	// sudo as tl-user, no password, no terminal.
	out, err = s.Exec("setpriv", "--reuid", uid, "--regid", uid, "--init-groups", "sudo", "-n", "id", "-u")
	if err != nil || strings.TrimSpace(out) != "0" {
		t.Fatalf("sudo -n as tl-user: %q %v", out, err)
	}
	if got := strings.TrimSpace(mustExec(t, s, "hostname")); got != "tl-sbx" {
		t.Errorf("host name inside %q, want tl-sbx", got)
	}
	if now, _ := os.Hostname(); now != hostName || now == "tl-sbx" {
		t.Errorf("host name outside changed: %q -> %q", hostName, now)
	}
	hosts, _ := os.ReadFile(inside("/etc/hosts"))
	if !strings.Contains(string(hosts), "127.0.1.1\ttl-sbx") {
		t.Errorf("/etc/hosts inside lacks tl-sbx:\n%s", hosts)
	}

	before := readAll(t, inside)
	out, err = s.Exec("sh", "-c", "/usr/local/bin/tl-agent provision 2>/dev/null")
	if err != nil {
		t.Fatalf("second provision: %v\n%s", err, out)
	}
	var res struct{ Changed []string }
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Changed) != 0 {
		t.Errorf("second provision changed %v (%v):\n%s", res.Changed, err, out)
	}
	after := readAll(t, inside)
	for f, v := range before {
		if after[f] != v {
			t.Errorf("second provision changed %s", f)
		}
	}
	for f, v := range readAll(t, func(p string) string { return p }) {
		if hostBefore[f] != v {
			t.Errorf("this machine's %s changed", f)
		}
	}
}

func mustExec(t *testing.T, s *System, args ...string) string {
	t.Helper()
	out, err := s.Exec(args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

func ownerOfUID1000() string {
	data, _ := os.ReadFile("/etc/passwd")
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Split(l, ":"); len(f) > 2 && f[2] == "1000" {
			return f[0]
		}
	}
	return ""
}

// TestProvisionReadOnly: a read-only /etc and a missing /etc are clear
// errors (checked with `tl-agent provision` on throwaway roots inside the
// sandbox), and the agent of a sandbox keeps serving.
func TestProvisionReadOnly(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	script := `set -e
mkdir -p /mnt/ro /mnt/none
mount -t tmpfs none /mnt/ro
mkdir /mnt/ro/etc
echo 'root:x:0:0:root:/root:/bin/sh' > /mnt/ro/etc/passwd
mount -o remount,ro /mnt/ro
mount -t tmpfs none /mnt/none
set +e
/usr/local/bin/tl-agent provision --root /mnt/ro 2>&1; echo "rc=$?"
/usr/local/bin/tl-agent provision --root /mnt/none 2>&1; echo "rc=$?"`
	out, err := s.Exec("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "/etc is read-only") || !strings.Contains(out, "no /etc in the root file system") ||
		strings.Count(out, "rc=1") != 2 {
		t.Fatalf("want both clear errors and exit 1:\n%s", out)
	}
	s.JSON("GET", "/api/v1/health", nil, 200, nil)
}

// TestBareMounts: started with nothing but /dev (TL_SANDBOX_BARE), the
// agent mounts /proc, /sys, /dev/pts (its own instance, behind
// /dev/ptmx), /dev/shm, /run and /tmp, and leaves /dev alone.
func TestBareMounts(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{Bare: true})
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", s.AgentPid()))
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	opts := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		types[f[4]] = g[0]
		opts[f[4]] = g[2]
	}
	// Paths show relative to the agent's root (the overlay).
	want := map[string]string{"/proc": "proc", "/sys": "sysfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs", "/run": "tmpfs", "/tmp": "tmpfs"}
	for p, fstype := range want {
		if got := types[p]; got != fstype {
			t.Errorf("%s: mounted %q, want %s", p, got, fstype)
		}
	}
	if !strings.Contains(opts["/dev/pts"], "ptmxmode=666") {
		t.Errorf("/dev/pts options %q lack ptmxmode=666", opts["/dev/pts"])
	}
	log := s.AgentLog()
	if !strings.Contains(log, `"mounted":["/proc","/sys","/dev/pts","/dev/shm","/run","/tmp"]`) {
		t.Errorf("agent log lacks the mounts it made (and only those):\n%s", tail(log, 30))
	}
	// A PTY from /dev/ptmx lands in the new, empty instance.
	out, err := s.Exec("bash", "-c", "exec 3<>/dev/ptmx; ls /dev/pts")
	if err != nil || strings.Join(strings.Fields(out), " ") != "0 ptmx" {
		t.Errorf("pty in the new devpts: %q %v", out, err)
	}
	if _, err := os.Stat(filepath.Join(s.SandboxPath("/tmp"))); err != nil {
		t.Errorf("/tmp: %v", err)
	}
}

// TestMountsLeftAlone: a runtime that mounted everything gets no mount.
func TestMountsLeftAlone(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	if !strings.Contains(s.AgentLog(), `"file systems already mounted"`) {
		t.Fatalf("agent log:\n%s", tail(s.AgentLog(), 30))
	}
}

// TestSignalsCannotKillPID1: every catchable signal but SIGTERM and SIGINT,
// sent to PID 1, leaves it serving; the forwardable ones reach the main
// command.
func TestSignalsCannotKillPID1(t *testing.T) {
	RequireRoot(t)
	rep := newReporter(t)
	script := fmt.Sprintf(`exec 3<>%s; for s in HUP USR1 USR2 QUIT WINCH; do trap "echo got-$s >&3" $s; done; echo up >&3; while :; do sleep 0.1; done`, rep.tcp())
	s := Start(t, Options{Main: []string{"bash", "-c", script}})
	rep.expect(t, "up", 20*time.Second)
	for sig := syscall.Signal(1); sig <= 64; sig++ {
		switch sig {
		case syscall.SIGKILL, syscall.SIGSTOP, syscall.SIGTERM, syscall.SIGINT, 32, 33: // 32, 33: glibc's own
			continue
		}
		if err := s.SignalAgent(sig); err != nil {
			t.Fatalf("signal %d: %v", sig, err)
		}
		time.Sleep(5 * time.Millisecond) // distinct signals are not coalesced, but be gentle
	}
	got := map[string]bool{}
	for len(got) < 5 {
		select {
		case l := <-rep.lines:
			got[l] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("forwarded signals reached the main command: %v, want HUP USR1 USR2 QUIT WINCH", got)
		}
	}
	s.JSON("GET", "/api/v1/health", nil, 200, nil)
	if !strings.Contains(s.AgentLog(), `"signal ignored"`) {
		t.Errorf("agent log lacks ignored signals")
	}
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s.WaitAgentExit(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

// TestNotPID1Subreaper: under another init (here: a plain child of the
// test, as under `docker run --init`), the agent is a child subreaper: an
// orphan of its main command comes back to it, is swept at shutdown, and a
// process that is not its descendant is never touched.
func TestNotPID1Subreaper(t *testing.T) {
	RequireRoot(t)
	rep := newReporter(t)
	outsider := exec.Command("sleep", "1000")
	if err := outsider.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = outsider.Process.Kill(); _ = outsider.Wait() }()
	script := fmt.Sprintf(`exec 3<>%s; (sleep 1000 & echo "orphan $!" >&3); while :; do sleep 0.1; done`, rep.tcp())
	host, _ := os.Hostname()
	s := Start(t, Options{NoSandbox: true, AgentArgs: []string{"--user", "root", "--provision=false"}, Main: []string{"bash", "-c", script}})
	defer func() {
		if now, _ := os.Hostname(); now != host {
			t.Errorf("this machine's host name changed: %q -> %q", host, now)
		}
	}()
	var orphan int
	fmt.Sscan(strings.TrimPrefix(rep.expect(t, "orphan ", 20*time.Second), "orphan "), &orphan)
	deadline := time.Now().Add(10 * time.Second)
	for parentOf(orphan) != s.AgentPid() {
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d has parent %d, want the agent %d", orphan, parentOf(orphan), s.AgentPid())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s.WaitAgentExit(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	// Dead at once; gone from /proc once reaped, by us or, for a zombie
	// left at our exit, by this machine's init.
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(orphan, 0) != syscall.ESRCH; {
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d survived the shutdown", orphan)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := outsider.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("a process that is not the agent's was touched: %v", err)
	}
}

// parentOf reads a process's parent pid from this machine's /proc.
func parentOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 2 {
		return -1
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// TestMainStartsAfterThreadReserve: the thread reserve is made in the
// background during the start, and no user process runs before it is
// made: the main command, the first fork, already sees PID 1 holding it.
func TestMainStartsAfterThreadReserve(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{Main: []string{"sh", "-c", "grep Threads: /proc/1/status > /tmp/threads-at-main"}})
	var got string
	for start := time.Now(); time.Since(start) < 20*time.Second; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(s.SandboxPath("/tmp/threads-at-main")); err == nil && len(b) > 0 {
			got = string(b)
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(got, "Threads:")))
	if err != nil {
		t.Fatalf("main command wrote %q", got)
	}
	if n < threads.DefaultReserve {
		t.Fatalf("PID 1 had %d threads when the main command ran, want the reserve of %d made first", n, threads.DefaultReserve)
	}
}
