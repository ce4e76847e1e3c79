package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// make run as a new user meets it: the real scripts/run-local.sh with the
// real binaries, from a folder laid out like a clone (scripts/, bin/), on
// free loopback ports and with a HOME of its own, so nothing here touches
// this machine's 8080/7070/2222 or anyone's ~/.ssh.

// makeRun is one folder where make run is started, perhaps several times
// (its .run/ persists between runs, as in a clone).
type makeRun struct {
	t                 *testing.T
	root, home        string
	HTTP, Uplink, SSH string
	cmd               *exec.Cmd
	out               *syncBuffer
	done              chan struct{}
	code              int
}

func newMakeRun(t *testing.T) *makeRun {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (make deps)")
	}
	bin := Binaries(t)
	m := &makeRun{t: t, root: t.TempDir(), home: t.TempDir()}
	for _, d := range []string{"scripts", "bin"} {
		if err := os.Mkdir(filepath.Join(m.root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"scripts/run-local.sh":    filepath.Join(Root(), "scripts/run-local.sh"),
		"scripts/sandbox-init.sh": filepath.Join(Root(), "scripts/sandbox-init.sh"),
		"bin/tl-agent":            filepath.Join(bin, "tl-agent"),
		"bin/tl-proxy":            filepath.Join(bin, "tl-proxy"),
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(m.root, name)); err != nil {
			t.Fatal(err)
		}
	}
	m.HTTP, m.Uplink, m.SSH = freeAddr(t), freeAddr(t), freeAddr(t)
	return m
}

// start runs the script in its own process group (Ctrl-C reaches a
// group), with env added to a minimal environment: no SUDO_* from the
// test's own, so the script's user is root with m.home.
func (m *makeRun) start(env ...string) {
	m.t.Helper()
	m.cmd = exec.Command("bash", filepath.Join(m.root, "scripts/run-local.sh"))
	m.cmd.Dir = m.root
	m.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + m.home,
		"TL_HTTP_ADDR=" + m.HTTP, "TL_UPLINK_ADDR=" + m.Uplink, "TL_SSH_ADDR=" + m.SSH}, env...)
	m.out = &syncBuffer{}
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		m.t.Fatalf("start run-local.sh: %v", err)
	}
	m.done = make(chan struct{})
	go func() {
		err := m.cmd.Wait()
		m.code = m.cmd.ProcessState.ExitCode()
		if err != nil && m.code == 0 {
			m.code = -1
		}
		close(m.done)
	}()
	m.t.Cleanup(m.stop)
}

// stop interrupts a script still running, and kills its group if it does
// not end within 20 s.
func (m *makeRun) stop() {
	select {
	case <-m.done:
		return
	default:
	}
	m.interrupt()
	select {
	case <-m.done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.done
		m.t.Errorf("run-local.sh did not stop within 20 s of SIGINT\n%s", m.out)
	}
}

// interrupt is Ctrl-C: SIGINT to the script's process group.
func (m *makeRun) interrupt() { _ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGINT) }

// exited waits up to d for the script to end and returns its exit code.
func (m *makeRun) exited(d time.Duration) (int, bool) {
	select {
	case <-m.done:
		return m.code, true
	case <-time.After(d):
		return 0, false
	}
}

// banner waits up to d for the "connected" banner's last line and fails
// the test if the script ends or the time passes first.
func (m *makeRun) banner(d time.Duration) string {
	m.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if out := m.out.String(); strings.Contains(out, "Ctrl-C stops both.") {
			return out
		}
		select {
		case <-m.done:
			m.t.Fatalf("run-local.sh exited %d before its banner:\n%s", m.code, m.out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	m.t.Fatalf("no banner within %v:\n%s", d, m.out)
	return ""
}

var apiKeyRe = regexp.MustCompile(`tl_dev_[0-9a-f]+`)

// system is a harness System for the sandbox make run started, built from
// the banner's API key, so the harness's request helpers apply.
func (m *makeRun) system(banner, id string) *System {
	key := apiKeyRe.FindString(banner)
	if key == "" {
		m.t.Fatalf("no API key in the banner:\n%s", banner)
	}
	return &System{t: m.t, SandboxID: id, APIKey: key, HTTPAddr: m.HTTP, SSHAddr: m.SSH}
}

// TestMakeRunBusyPort: with any of the proxy's ports taken (by a program
// that accepts and never answers, the worst case for a wait on curl),
// make run fails at once, non-zero, naming the cause and the setting.
func TestMakeRunBusyPort(t *testing.T) {
	for _, setting := range []string{"TL_HTTP_ADDR", "TL_UPLINK_ADDR", "TL_SSH_ADDR"} {
		t.Run(setting, func(t *testing.T) {
			m := newMakeRun(t)
			squat, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer squat.Close()
			go func() {
				var held []net.Conn // accepted, never answered
				defer func() {
					for _, c := range held {
						c.Close()
					}
				}()
				for len(held) < 64 {
					c, err := squat.Accept()
					if err != nil {
						return
					}
					held = append(held, c)
				}
			}()
			addr := squat.Addr().String()
			m.start(setting + "=" + addr)
			// Generous for a loaded machine; the script itself waits at
			// most 5 s for the proxy, and today's main waited 50 s here.
			code, ok := m.exited(15 * time.Second)
			if !ok {
				t.Fatalf("still running 15 s after start with %s busy:\n%s", addr, m.out)
			}
			out := m.out.String()
			if code == 0 {
				t.Fatalf("exit 0 with %s busy:\n%s", addr, out)
			}
			for _, want := range []string{"address already in use", addr, setting + "="} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "connected to tl-proxy") {
				t.Errorf("claims connected:\n%s", out)
			}
		})
	}
}

// TestMakeRunChangedSandboxID: a second make run with another
// TL_SANDBOX_ID in the same clone (its .run/ from the first) connects that
// sandbox, as the proxy itself confirms; an id the proxy would refuse is
// refused by make run, non-zero, with the rule.
func TestMakeRunChangedSandboxID(t *testing.T) {
	m := newMakeRun(t)
	m.start()
	first := m.system(m.banner(30*time.Second), "dev-sbx")
	m.stop()

	m.start("TL_SANDBOX_ID=other-sbx")
	out := m.banner(30 * time.Second)
	s := m.system(out, "other-sbx")
	if s.APIKey != first.APIKey {
		t.Errorf("API key changed across runs: %s, then %s", first.APIKey, s.APIKey)
	}
	if !s.Connected() {
		t.Fatalf("banner printed, but the proxy does not list other-sbx as connected:\n%s", out)
	}
	var health map[string]any
	s.JSON("GET", "/api/v1/health", nil, http.StatusOK, &health)
	m.stop()

	m.start("TL_SANDBOX_ID=Other-SBX")
	code, ok := m.exited(15 * time.Second)
	if !ok || code == 0 {
		t.Fatalf("upper-case id: exited=%v code=%d, want a non-zero exit:\n%s", ok, code, m.out)
	}
	if got := m.out.String(); !strings.Contains(got, "lower-case") || strings.Contains(got, "connected to tl-proxy") {
		t.Fatalf("upper-case id: the output does not give the rule:\n%s", got)
	}
}

// TestMakeRunSSHWithoutKey: a user with no ~/.ssh/id_*.pub gets a key made
// in .run/ and an ssh line that works as printed (BatchMode: no prompt for
// a password or an unknown host key); a key not registered is told which
// file to add it to.
func TestMakeRunSSHWithoutKey(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("needs OpenSSH's client (make deps)")
	}
	m := newMakeRun(t)
	m.start()
	out := m.banner(30 * time.Second)
	line := sshLine(t, out)
	for _, want := range []string{"-i " + filepath.Join(m.root, ".run"), "UserKnownHostsFile=" + filepath.Join(m.root, ".run", "known_hosts")} {
		if !strings.Contains(line, want) {
			t.Errorf("ssh line %q lacks %q", line, want)
		}
	}
	// As the user pastes it, plus BatchMode and a command; -F /dev/null
	// keeps this machine's own ssh config out of the test.
	run := func(l string) (string, error) { return runSSHLine(l, m.home, nil) }
	if got, err := run(line); err != nil || !strings.Contains(got, "LOGGED-IN") {
		t.Fatalf("the printed ssh line failed: %v\n%s\nline: %s", err, got, line)
	}

	other := NewSSHKey(t, "stranger")
	stranger := regexp.MustCompile(`-i \S+`).ReplaceAllString(line, "-i "+other.Private)
	got, err := run(stranger)
	if err == nil || !strings.Contains(got, "not registered") || !strings.Contains(got, "ssh_authorized_keys") {
		t.Fatalf("unregistered key: err=%v, want the refusal naming the keys file:\n%s", err, got)
	}
}

// sshLine is the banner's ssh command line.
func sshLine(t *testing.T, banner string) string {
	t.Helper()
	for _, l := range strings.Split(banner, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "ssh ") {
			return l
		}
	}
	t.Fatalf("no ssh line in the banner:\n%s", banner)
	return ""
}

// runSSHLine runs a printed ssh line as a user pastes it (through bash),
// plus BatchMode (no prompt for a password or an unknown host key) and the
// command true; -F /dev/null keeps this machine's ssh config out of it.
// cred, when set, runs it as that user.
func runSSHLine(line, home string, cred *syscall.Credential) (string, error) {
	cmd := exec.Command("bash", "-c", "timeout 30 ssh -F /dev/null -o BatchMode=yes "+strings.TrimPrefix(line, "ssh ")+" true && echo LOGGED-IN")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	b, err := cmd.CombinedOutput()
	if err == nil && !strings.Contains(string(b), "LOGGED-IN") {
		err = fmt.Errorf("no LOGGED-IN")
	}
	return string(b), err
}

// TestMakeRunSSHUnderSudo: `sudo make run` by a user with no key: the key
// and known_hosts in .run/ are that user's, and the printed line works
// when that user (here nobody, whose home has no ~/.ssh) runs it.
func TestMakeRunSSHUnderSudo(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("needs OpenSSH's client (make deps)")
	}
	m := newMakeRun(t)
	// The test's folders are root's (0700): let the user reach .run/.
	for d := m.root; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m.start("SUDO_USER=nobody", "SUDO_UID=65534", "SUDO_GID=65534")
	line := sshLine(t, m.banner(30*time.Second))
	if !strings.Contains(line, "-i "+filepath.Join(m.root, ".run")) {
		t.Fatalf("ssh line %q does not use a key made in .run/", line)
	}
	if got, err := runSSHLine(line, "/nonexistent", &syscall.Credential{Uid: 65534, Gid: 65534}); err != nil {
		t.Fatalf("the printed ssh line, run by the sudo user: %v\n%s\nline: %s", err, got, line)
	}
}

// TestMakeRunInterruptWithShell: Ctrl-C with an interactive shell alive in
// a PTY stops make run well within the agent's shutdown grace (10 s): the
// shell gets SIGHUP first, as a terminal's hang-up.
func TestMakeRunInterruptWithShell(t *testing.T) {
	m := newMakeRun(t)
	m.start()
	s := m.system(m.banner(30*time.Second), "dev-sbx")
	var sess ptyCreated
	s.JSON("POST", "/api/v1/pty", map[string]any{"command": "bash", "args": []string{"-i"}}, http.StatusCreated, &sess)
	var info ptyInfo
	s.JSON("GET", "/api/v1/pty/"+sess.SessionID, nil, http.StatusOK, &info)
	if !info.IsAlive {
		t.Fatalf("the shell is not alive: %+v", info)
	}
	start := time.Now()
	m.interrupt()
	code, ok := m.exited(10 * time.Second)
	if !ok {
		agentLog, _ := os.ReadFile(filepath.Join(m.root, ".run", "agent.log"))
		t.Fatalf("make run still running 10 s after Ctrl-C with a shell alive:\n%s\nagent log (tail):\n%s", m.out, tail(string(agentLog), 40))
	}
	t.Logf("make run returned %v after Ctrl-C (exit %d)", time.Since(start).Round(time.Millisecond), code)
	if c, err := net.DialTimeout("tcp", m.HTTP, time.Second); err == nil {
		c.Close()
		t.Fatalf("the proxy still listens on %s after make run returned", m.HTTP)
	}
	// Nothing of this run is left: the agent was told its uplink address.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), m.Uplink) {
			t.Errorf("still running after make run returned: %s: %q", f, b)
		}
	}
}

// TestMakeRunOwnNetwork: make run's sandbox has its own network namespace
// (only lo and slirp4netns's tap0; the host's loopback, where the proxy
// listens, is out of reach), so a server inside can take the very port
// the proxy holds on the host and be reached through its port route; and
// /dev is a fresh minimal one, without the host's disks or kmsg; its root
// has no device nodes, modules, clock or writable kernel settings.
func TestMakeRunOwnNetwork(t *testing.T) {
	if _, err := exec.LookPath("slirp4netns"); err != nil {
		t.Skip("needs slirp4netns (make deps)")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("needs /usr/bin/python3 for a server inside the sandbox")
	}
	m := newMakeRun(t)
	m.start()
	s := m.system(m.banner(30*time.Second), "dev-sbx")
	_, port, _ := net.SplitHostPort(m.HTTP)

	probe := "ls /sys/class/net; echo ---; ls /dev; echo ---; " +
		"timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/" + port + "' 2>/dev/null && echo host-loopback-open || echo host-loopback-closed"
	r := run(t, s, map[string]any{"command": "bash", "args": []string{"-c", probe}})
	out := strings.Join(r.stdout, "\n")
	parts := strings.Split(out, "---")
	if len(parts) != 3 {
		t.Fatalf("probe said:\n%s\nstderr: %v", out, r.stderr)
	}
	if links := strings.Fields(parts[0]); strings.Join(links, " ") != "lo tap0" {
		t.Errorf("network interfaces in the sandbox: %v, want lo and tap0 only", links)
	}
	var extra []string
	for _, name := range strings.Fields(parts[1]) {
		switch name {
		case "null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout", "stderr", "ptmx", "pts", "shm":
		default:
			extra = append(extra, name)
		}
	}
	if len(extra) > 0 {
		t.Errorf("/dev in the sandbox has %v: want a minimal /dev", extra)
	}
	if !strings.Contains(parts[2], "host-loopback-closed") {
		t.Errorf("the sandbox reaches the host's 127.0.0.1:%s: %s", port, parts[2])
	}

	// The sandbox's root (tl-user has password-less sudo) cannot make
	// device nodes, load modules or write kernel settings. Writing
	// domainname is harmless even if it got through: it is per UTS
	// namespace.
	harden := "sudo -n mknod /tmp/disk b 8 0 && echo mknod-ok; " +
		"sudo -n sh -c 'echo x > /proc/sys/kernel/domainname' && echo sysctl-ok; " +
		"sudo -n grep CapBnd /proc/self/status"
	r = run(t, s, map[string]any{"command": "bash", "args": []string{"-c", harden}})
	out = strings.Join(r.stdout, "\n")
	if strings.Contains(out, "mknod-ok") || strings.Contains(out, "sysctl-ok") {
		t.Errorf("the sandbox's root made a device node or wrote /proc/sys:\n%s\n%v", out, r.stderr)
	}
	var bnd uint64
	if _, err := fmt.Sscanf(out, "CapBnd:\t%x", &bnd); err != nil {
		t.Fatalf("no CapBnd in %q: %v", out, err)
	}
	for name, bit := range map[string]uint{"sys_module": 16, "sys_rawio": 17, "sys_time": 25, "mknod": 27} {
		if bnd&(1<<bit) != 0 {
			t.Errorf("the sandbox's bounding set %x holds cap_%s", bnd, name)
		}
	}

	// A server inside on the proxy's own port, reached by its port route.
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "/usr/bin/python3", "args": []string{"-m", "http.server", port, "--bind", "127.0.0.1", "--directory", "/dev"},
	}, 201, &p)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := http.DefaultClient.Do(s.PortRequest(ctx, "GET", mustAtoi(t, port), "/", nil))
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(string(body), "urandom") {
				cancel()
				break
			}
			err = fmt.Errorf("%d %.200s", resp.StatusCode, body)
		}
		cancel()
		if time.Now().After(deadline) {
			t.Fatalf("a server on port %s inside the sandbox is not reachable by its port route: %v", port, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMakeRunAgentFails: an agent that cannot start (here a stale
// TL_AGENT_TOKEN exported in the user's shell, which the agent refuses
// beside make run's token file) ends make run non-zero with the agent's
// own words, and no banner.
func TestMakeRunAgentFails(t *testing.T) {
	m := newMakeRun(t)
	m.start("TL_AGENT_TOKEN=0123456789abcdef0123456789abcdef")
	code, ok := m.exited(30 * time.Second)
	out := m.out.String()
	if !ok || code == 0 {
		t.Fatalf("exited=%v code=%d, want a non-zero exit:\n%s", ok, code, out)
	}
	if !strings.Contains(out, "exclusive") || strings.Contains(out, "connected to tl-proxy") {
		t.Fatalf("the output does not show the agent's error, or claims connected:\n%s", out)
	}
}
