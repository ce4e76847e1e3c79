package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tl CLI (cmd/tl) end to end: the real binary against a System,
// driven in tmux where it needs a terminal.

var (
	tlOnce sync.Once
	tlErr  error
)

// tlBinary builds cmd/tl beside the harness's binaries, once.
func tlBinary(t TB) string {
	t.Helper()
	bin := Binaries(t)
	tlOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", bin+"/tl", "./cmd/tl")
		cmd.Dir = Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			tlErr = fmt.Errorf("go build ./cmd/tl: %v\n%s", err, out)
		}
	})
	if tlErr != nil {
		t.Fatalf("%v", tlErr)
	}
	return filepath.Join(bin, "tl")
}

// tlEnv is the CLI's configuration for s, as make run prints it, with
// its own config folder (saved sessions) cfg.
func tlEnv(s *System, cfg string) []string {
	return append(os.Environ(), "TENSORLAKE_API_KEY="+s.APIKey,
		"TENSORLAKE_SANDBOX_PROXY_URL="+s.BaseURL(), "XDG_CONFIG_HOME="+cfg)
}

// tmux is one private tmux server (its own socket) with one session.
type tmux struct {
	t    *testing.T
	sock string
}

func newTmux(t *testing.T, cols, rows int, env []string, script string) *tmux {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("no tmux (make deps installs it)")
	}
	tm := &tmux{t: t, sock: filepath.Join(t.TempDir(), "tmux.sock")}
	path := filepath.Join(t.TempDir(), "pane.sh")
	if err := os.WriteFile(path, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("tmux", "-S", tm.sock, "-f", "/dev/null", "new-session", "-d", "-s", "tl",
		"-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows), path)
	cmd.Env = append(env, "TERM=xterm-256color")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("tmux", "-S", tm.sock, "kill-server").Run() })
	tm.run("set-option", "-g", "history-limit", "10000")
	return tm
}

func (tm *tmux) run(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", tm.sock}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %v: %v: %s", args, err, out)
	}
	return string(out)
}

// keys types literal text, then Enter.
func (tm *tmux) line(text string) {
	tm.t.Helper()
	tm.run("send-keys", "-t", "tl", "-l", text)
	tm.run("send-keys", "-t", "tl", "Enter")
}

// rule is the harness's rule with the pane's failures on the step.
func (tm *tmux) rule(t *testing.T, s *System, name string, f func(t *testing.T)) {
	t.Helper()
	rule(t, s, name, func(t *testing.T) { tm.t = t; f(t) })
}

// pane is the whole pane, scrollback included.
func (tm *tmux) pane() string { return tm.run("capture-pane", "-p", "-J", "-S", "-", "-t", "tl") }

// wait waits until the pane has want after the last occurrence of after
// ("" for anywhere) and returns the pane.
func (tm *tmux) wait(after, want string, d time.Duration) string {
	tm.t.Helper()
	deadline := time.Now().Add(d)
	for {
		p := tm.pane()
		rest := p
		if after != "" {
			i := strings.LastIndex(p, after)
			rest = ""
			if i >= 0 {
				rest = p[i+len(after):]
			}
		}
		if strings.Contains(rest, want) {
			return p
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("pane has no %q after %q within %v:\n%s", want, after, d, p)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestCLISSH: `tl sbx ssh` in a real terminal (tmux): the shell's prompt,
// the terminal's size and its changes, Ctrl-C and Ctrl-Z reaching the
// remote side, detach and `tl sbx attach` replaying what was missed, the
// remote exit code as the CLI's, and the local terminal as it was before.
func TestCLISSH(t *testing.T) {
	s := ptySystem(t, Options{})
	tl := tlBinary(t)
	cfg, dir := t.TempDir(), t.TempDir()
	// The pane runs the CLI three times and reports each exit code, and
	// the terminal's settings before and after.
	script := fmt.Sprintf(`#!/bin/sh
stty -a > %[2]s/before
%[1]s sbx ssh %[3]s
echo "TL-SSH-EXIT=$?"
id=$(basename "$(ls %[4]s/tl/sessions/*.json)" .json)
%[1]s sbx attach "$id"
echo "TL-ATTACH-EXIT=$?"
%[1]s sbx ssh %[3]s --shell /bin/sh
echo "TL-SSH2-EXIT=$?"
stty -a > %[2]s/after
echo PANE-DONE
sleep 600
`, tl, dir, s.SandboxID, cfg)
	tm := newTmux(t, 100, 30, tlEnv(s, cfg), script)
	var first string // the saved session of the first ssh
	step := func(name string, f func(t *testing.T)) { tm.rule(t, s, name, f) }

	step("the shell's prompt appears", func(t *testing.T) {
		tm.wait("ctrl-] detaches", "$ ", 20*time.Second)
		tm.line("echo marker-$((6*7))")
		tm.wait("", "marker-42", 10*time.Second)
	})
	step("stty size is the terminal's, and follows tmux resize-window", func(t *testing.T) {
		tm.line("stty size")
		tm.wait("stty size", "30 100", 10*time.Second)
		tm.run("resize-window", "-t", "tl", "-x", "120", "-y", "40")
		tm.line("stty size")
		tm.wait("stty size", "40 120", 10*time.Second)
	})
	step("Ctrl-C interrupts a remote sleep 100 and the session goes on", func(t *testing.T) {
		tm.line("sleep 100")
		waitRemote(t, s, "sleep 100")
		tm.run("send-keys", "-t", "tl", "C-c")
		tm.line("echo after-ctrl-c-$((1+1))")
		tm.wait("", "after-ctrl-c-2", 20*time.Second) // far less than the sleep
	})
	step("Ctrl-Z stops a remote job", func(t *testing.T) {
		tm.line("sleep 100")
		waitRemote(t, s, "sleep 100")
		tm.run("send-keys", "-t", "tl", "C-z")
		tm.wait("", "Stopped", 10*time.Second)
		tm.line("kill -9 %1; echo killed-$((2+2))")
		tm.wait("", "killed-4", 10*time.Second)
	})
	step("the detach key leaves the shell running; output meanwhile is replayed on attach", func(t *testing.T) {
		tm.line("sleep 2; echo while-detached-$((5*5))")
		tm.run("send-keys", "-t", "tl", "-H", "1d") // ctrl-]
		tm.wait("", "TL-SSH-EXIT=0", 10*time.Second)
		files, _ := filepath.Glob(filepath.Join(cfg, "tl", "sessions", "*.json"))
		if len(files) != 1 {
			t.Fatalf("saved sessions: %v", files)
		}
		if st, err := os.Stat(files[0]); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("saved session %s: %v, mode %v (want 0600)", files[0], err, st.Mode())
		}
		first = files[0]
		// Only the replay can show this line: it was written while no
		// client was attached.
		tm.wait("TL-SSH-EXIT=0", "while-detached-25", 20*time.Second)
		tm.line("echo reattached-$((3*3))")
		tm.wait("TL-SSH-EXIT=0", "reattached-9", 10*time.Second)
	})
	step("the remote exit code is the CLI's; an ended session is forgotten", func(t *testing.T) {
		tm.line("exit 3")
		tm.wait("", "TL-ATTACH-EXIT=3", 10*time.Second)
		if _, err := os.Stat(first); !os.IsNotExist(err) {
			t.Fatalf("the ended session is still saved: %s (%v)", first, err)
		}
		tm.wait("TL-ATTACH-EXIT=3", "$ ", 20*time.Second)
		tm.line("exit 7")
		tm.wait("", "TL-SSH2-EXIT=7", 10*time.Second)
	})
	step("the local terminal is as it was (stty -a)", func(t *testing.T) {
		tm.wait("", "PANE-DONE", 10*time.Second)
		before, _ := os.ReadFile(filepath.Join(dir, "before"))
		after, _ := os.ReadFile(filepath.Join(dir, "after"))
		// The size changed on purpose (resize-window); all else must not.
		size := regexp.MustCompile(`rows \d+; columns \d+;`)
		before, after = size.ReplaceAll(before, nil), size.ReplaceAll(after, nil)
		if len(before) == 0 || !bytes.Equal(before, after) {
			t.Fatalf("stty -a before:\n%s\nafter:\n%s", before, after)
		}
		for _, want := range []string{" icanon ", " echo ", " isig "} {
			if !strings.Contains(" "+strings.Join(strings.Fields(string(after)), " ")+" ", want) {
				t.Fatalf("stty -a after has no %q:\n%s", want, after)
			}
		}
	})
}

// waitRemote waits until a process whose command line is cmdline runs in
// the sandbox, so keys sent next reach it rather than the shell's reader.
func waitRemote(t *testing.T, s *System, cmdline string) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if out, err := s.Exec("pgrep", "-f", "^"+cmdline+"$"); err == nil && strings.TrimSpace(out) != "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%q never ran in the sandbox", cmdline)
}

// tlRun runs the CLI with args and returns its stdout, stderr and exit
// code; with timeVerbose it runs under /usr/bin/time -v and also returns
// the CLI's peak RSS in KiB.
func tlRun(t *testing.T, s *System, cfg string, timeVerbose bool, args ...string) (stdout, stderr string, code int, rssKiB int) {
	t.Helper()
	name, full := tlBinary(t), args
	if timeVerbose {
		name, full = "/usr/bin/time", append([]string{"-v", tlBinary(t)}, args...)
	}
	cmd := exec.Command(name, full...)
	cmd.Env = tlEnv(s, cfg)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code < 0 {
		t.Fatalf("tl %v: %v", args, err)
	}
	stderr = e.String()
	if timeVerbose {
		m := regexp.MustCompile(`Maximum resident set size \(kbytes\): (\d+)`).FindStringSubmatch(stderr)
		if m == nil {
			t.Fatalf("no peak RSS from /usr/bin/time -v: %s", stderr)
		}
		fmt.Sscan(m[1], &rssKiB)
		stderr = stderr[:strings.Index(stderr, "\tCommand being timed")]
	}
	return o.String(), stderr, code, rssKiB
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", p).Output()
	if err != nil {
		t.Fatalf("sha256sum %s: %v", p, err)
	}
	return strings.Fields(string(out))[0]
}

// TestCLIVerbs: tl sbx exec, cp, ls and tunnel against the real binaries.
func TestCLIVerbs(t *testing.T) {
	s := ptySystem(t, Options{})
	cfg := t.TempDir()

	rule(t, s, "exec: stdout and stderr apart, the command's exit code", func(t *testing.T) {
		out, errOut, code, _ := tlRun(t, s, cfg, false, "sbx", "exec", s.SandboxID, "--",
			"sh", "-c", "echo out1; echo err1 >&2; echo out2; exit 5")
		if out != "out1\nout2\n" || errOut != "err1\n" || code != 5 {
			t.Fatalf("stdout %q, stderr %q, exit %d; want out1 out2, err1, 5", out, errOut, code)
		}
		out, _, code, _ = tlRun(t, s, cfg, false, "sbx", "exec", s.SandboxID, "--workdir", "/tmp", "--env", "A=b c", "sh", "-c", `pwd; echo "$A"`)
		if out != "/tmp\nb c\n" || code != 0 {
			t.Fatalf("flags before the command without --: %q, exit %d", out, code)
		}
	})
	rule(t, s, "exec: --timeout kills the command, exit 124", func(t *testing.T) {
		_, errOut, code, _ := tlRun(t, s, cfg, false, "sbx", "exec", s.SandboxID, "--timeout", "1", "sleep", "60")
		if code != 124 || !strings.Contains(errOut, "Command timed out after 1s") {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
	})

	// 64 MiB of random bytes, both ways, the CLI's memory well under it.
	const size = 64 << 20
	dir := t.TempDir()
	src := filepath.Join(dir, "big")
	if out, err := exec.Command("sh", "-c", fmt.Sprintf("head -c %d /dev/urandom > %s", size, src)).CombinedOutput(); err != nil {
		t.Fatalf("make the file: %v %s", err, out)
	}
	want := sha256File(t, src)
	const maxRSS = 24 << 10 // KiB: well under the file's 64 MiB
	rule(t, s, "cp local to sandbox: bytes identical, memory bounded, no bar without a terminal", func(t *testing.T) {
		out, errOut, code, rss := tlRun(t, s, cfg, true, "sbx", "cp", src, s.SandboxID+":/tmp/big")
		if code != 0 || !strings.Contains(out, "(67108864 bytes)") {
			t.Fatalf("exit %d: %s %s", code, out, errOut)
		}
		if errOut != "" {
			t.Fatalf("stderr is not a terminal, yet: %q", errOut)
		}
		if got := sha256File(t, s.SandboxPath("/tmp/big")); got != want {
			t.Fatalf("sandbox copy sha256 %s, want %s", got, want)
		}
		t.Logf("upload peak RSS %d KiB", rss)
		if rss > maxRSS {
			t.Fatalf("peak RSS %d KiB for a %d MiB upload (want < %d KiB)", rss, size>>20, maxRSS)
		}
	})
	rule(t, s, "cp sandbox to local: bytes identical, memory bounded", func(t *testing.T) {
		back := t.TempDir()
		out, errOut, code, rss := tlRun(t, s, cfg, true, "sbx", "cp", s.SandboxID+":/tmp/big", back+"/")
		if code != 0 {
			t.Fatalf("exit %d: %s %s", code, out, errOut)
		}
		if got := sha256File(t, filepath.Join(back, "big")); got != want {
			t.Fatalf("local copy sha256 %s, want %s", got, want)
		}
		if left, _ := filepath.Glob(filepath.Join(back, ".*")); len(left) != 0 {
			t.Fatalf("temporary files left: %v", left)
		}
		t.Logf("download peak RSS %d KiB", rss)
		if rss > maxRSS {
			t.Fatalf("peak RSS %d KiB for a %d MiB download (want < %d KiB)", rss, size>>20, maxRSS)
		}
	})
	rule(t, s, "cp on a terminal: a progress bar on stderr", func(t *testing.T) {
		tm := newTmux(t, 120, 10, tlEnv(s, cfg), fmt.Sprintf("#!/bin/sh\n%s sbx cp %s %s:/tmp/big2\necho CP-EXIT=$?\nsleep 600\n", tlBinary(t), src, s.SandboxID))
		p := tm.wait("", "CP-EXIT=0", 60*time.Second)
		if !strings.Contains(p, "big [==============================] 100%  64.0 MiB / 64.0 MiB") {
			t.Fatalf("no full progress bar:\n%s", p)
		}
		if got := sha256File(t, s.SandboxPath("/tmp/big2")); got != want {
			t.Fatalf("sha256 %s, want %s", got, want)
		}
	})
	rule(t, s, "cp: the seed's errors", func(t *testing.T) {
		for _, c := range []struct{ a, b, want string }{
			{"ab:/a", "cd:/b", "Cannot copy between two sandboxes. One side must be local."},
			{"./a", "./b", "One of src or dest must be a sandbox path (identifier:/path)."},
		} {
			_, errOut, code, _ := tlRun(t, s, cfg, false, "sbx", "cp", c.a, c.b)
			if code != 2 || !strings.Contains(errOut, c.want) {
				t.Fatalf("cp %s %s: exit %d, %q", c.a, c.b, code, errOut)
			}
		}
		_, errOut, code, _ := tlRun(t, s, cfg, false, "sbx", "cp", s.SandboxID+":/nonexistent", t.TempDir())
		if code != 1 || !strings.Contains(errOut, "failed to download file (HTTP 404") {
			t.Fatalf("missing remote file: exit %d, %q", code, errOut)
		}
	})
	rule(t, s, "attach to a session that is gone: one line, exit 1, the saved file removed", func(t *testing.T) {
		id := "AAAAAAAAAAAAAAAAAAAAA"
		sdir := filepath.Join(cfg, "tl", "sessions")
		os.MkdirAll(sdir, 0o700)
		saved := filepath.Join(sdir, id+".json")
		data := fmt.Sprintf(`{"session_id":%q,"token":%q,"sandbox":%q}`, id, strings.Repeat("ab", 32), s.SandboxID)
		if err := os.WriteFile(saved, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		tm := newTmux(t, 120, 10, tlEnv(s, cfg), fmt.Sprintf("#!/bin/sh\n%s sbx attach %s\necho ATTACH-EXIT=$?\nsleep 600\n", tlBinary(t), id))
		p := tm.wait("", "ATTACH-EXIT=1", 20*time.Second)
		if !strings.Contains(p, "tl: failed to attach to PTY session "+id+" (HTTP 404 Not Found): ") || !strings.Contains(p, "(SESSION_NOT_FOUND)") {
			t.Fatalf("pane:\n%s", p)
		}
		if _, err := os.Stat(saved); !os.IsNotExist(err) {
			t.Fatalf("the saved session is still there: %v", err)
		}
	})
	rule(t, s, "ls: the proxy's sandboxes and whether each is connected", func(t *testing.T) {
		out, errOut, code, _ := tlRun(t, s, cfg, false, "sbx", "ls")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "SANDBOX") ||
			!strings.HasPrefix(lines[1], s.SandboxID+" ") || !strings.Contains(lines[1], " connected ") {
			t.Fatalf("exit %d: %q %q", code, out, errOut)
		}
	})
	rule(t, s, "tunnel: curl through the local port reaches the sandbox's port", func(t *testing.T) {
		const port = 8766
		startEcho(t, s, port)
		local := freeAddr(t)
		_, lport, _ := strings.Cut(local, ":")
		cmd := exec.Command(tlBinary(t), "sbx", "tunnel", s.SandboxID, fmt.Sprint(port), "--local-port", lport)
		cmd.Env = tlEnv(s, cfg)
		var errOut syncBuffer
		cmd.Stderr = &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		defer func() { cmd.Process.Kill(); <-done }()
		for i := 0; !strings.Contains(errOut.String(), "Listening on 127.0.0.1:"+lport); i++ {
			if i > 200 {
				t.Fatalf("tunnel did not listen: %s", errOut.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		for i := 0; i < 3; i++ { // one WebSocket per connection
			r := curl(t, "http://"+local+"/tunnel-check")
			if r.status != 200 || !strings.Contains(r.body, `["host", "`+local+`"]`) {
				t.Fatalf("through the tunnel: %d %q (tl: %s)", r.status, r.body, errOut.String())
			}
		}
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("tunnel did not stop on SIGINT: %s", errOut.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(errOut.String(), "Stopping tunnel listener") {
			t.Fatalf("after SIGINT: exit %d, %s", code, errOut.String())
		}
	})
}

// TestCLISSHExitPaths: the local terminal is restored however `tl sbx
// ssh` ends: a signal to the CLI (the session kept), the session killed
// through the API, and the connection lost with the proxy.
func TestCLISSHExitPaths(t *testing.T) {
	s := ptySystem(t, Options{})
	tl := tlBinary(t)
	cfg, dir := t.TempDir(), t.TempDir()
	script := fmt.Sprintf(`#!/bin/sh
stty -a > %[2]s/before
for i in 1 2 3; do
  %[1]s sbx ssh %[3]s
  echo "TL-EXIT-$i=$?"
  stty -a > %[2]s/after-$i
done
sleep 600
`, tl, dir, s.SandboxID)
	tm := newTmux(t, 90, 25, tlEnv(s, cfg), script)
	step := func(name string, f func(t *testing.T)) { tm.rule(t, s, name, f) }
	// session is the newest saved session of the pane's CLI.
	session := func(t *testing.T, skip map[string]bool) string {
		for i := 0; i < 100; i++ {
			files, _ := filepath.Glob(filepath.Join(cfg, "tl", "sessions", "*.json"))
			for _, f := range files {
				if id := strings.TrimSuffix(filepath.Base(f), ".json"); !skip[id] {
					return id
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("no new saved session")
		return ""
	}
	sane := func(t *testing.T, i int) {
		before, _ := os.ReadFile(filepath.Join(dir, "before"))
		var after []byte
		for j := 0; j < 50 && len(after) == 0; j++ {
			after, _ = os.ReadFile(filepath.Join(dir, fmt.Sprintf("after-%d", i)))
			time.Sleep(100 * time.Millisecond)
		}
		if len(before) == 0 || !bytes.Equal(before, after) {
			t.Fatalf("stty -a before:\n%s\nafter exit path %d:\n%s", before, i, after)
		}
	}
	seen := map[string]bool{}
	step("SIGTERM to the CLI: terminal restored, exit 143, the session kept", func(t *testing.T) {
		tm.wait("detaches", "$ ", 20*time.Second)
		id := session(t, seen)
		seen[id] = true
		shPid := strings.TrimSpace(tm.run("display-message", "-p", "-t", "tl", "#{pane_pid}"))
		kids, _ := os.ReadFile("/proc/" + shPid + "/task/" + shPid + "/children")
		var pid int
		fmt.Sscan(string(kids), &pid)
		if pid <= 0 {
			t.Fatalf("no CLI process under the pane's shell %s", shPid)
		}
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		tm.wait("", "TL-EXIT-1=143", 10*time.Second)
		sane(t, 1)
		var info ptyInfo
		s.JSON("GET", "/api/v1/pty/"+id, nil, 200, &info)
		if !info.IsAlive {
			t.Fatalf("the session ended with the CLI: %+v", info)
		}
	})
	step("the session killed through the API: terminal restored, exit 1", func(t *testing.T) {
		tm.wait("TL-EXIT-1", "$ ", 20*time.Second)
		id := session(t, seen)
		seen[id] = true
		resp := s.Do("DELETE", "/api/v1/pty/"+id, nil)
		if resp.StatusCode != 204 {
			t.Fatalf("DELETE: %d", resp.StatusCode)
		}
		tm.wait("TL-EXIT-1", "TL-EXIT-2=1", 20*time.Second)
		tm.wait("TL-EXIT-1", "PTY session terminated", time.Second)
		sane(t, 2)
	})
	step("the proxy gone: terminal restored, exit 1, the attach line", func(t *testing.T) {
		tm.wait("TL-EXIT-2", "$ ", 20*time.Second)
		id := session(t, seen)
		s.KillProxy()
		tm.wait("TL-EXIT-2", "TL-EXIT-3=1", 20*time.Second)
		tm.wait("TL-EXIT-2", "tl sbx attach "+id, time.Second)
		sane(t, 3)
	})
}

// TestMakeRunTLLine: the tl line make run prints works as printed, from
// the clone's folder, in a terminal.
func TestMakeRunTLLine(t *testing.T) {
	m := newMakeRun(t)
	if err := os.Symlink(tlBinary(t), filepath.Join(m.root, "bin", "tl")); err != nil {
		t.Fatal(err)
	}
	m.start()
	out := m.banner(30 * time.Second)
	line := ""
	for _, l := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(l, "tl CLI (this project's, docs/cli.md): "); ok {
			line = rest
		}
	}
	if !strings.HasSuffix(line, "./bin/tl sbx ssh dev-sbx") {
		t.Fatalf("no tl line in the banner:\n%s", out)
	}
	script := fmt.Sprintf("#!/bin/sh\ncd %s\n%s\necho TL-LINE-EXIT=$?\nsleep 600\n", m.root, line)
	tm := newTmux(t, 100, 30, append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir()), script)
	tm.wait("detaches", "$ ", 20*time.Second)
	tm.line("hostname; exit 4")
	p := tm.wait("", "TL-LINE-EXIT=4", 20*time.Second)
	if !strings.Contains(p, "\ntl-sbx\n") {
		t.Fatalf("the shell is not the sandbox's:\n%s", p)
	}
}
