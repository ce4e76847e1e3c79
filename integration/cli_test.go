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
	step := func(name string, f func(t *testing.T)) {
		rule(t, s, name, func(t *testing.T) { tm.t = t; f(t) })
	}

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
