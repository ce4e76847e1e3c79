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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Attacks on the agent's SSH server and its forwards (issue 10), each
// against the real binaries with OpenSSH's clients.

// TestHostileSSHTerminalOwner: the session's terminal belongs to tl-user
// on both PTY paths (SSH and the PTY API), as OpenSSH makes it, so the
// user can open it again. Before, it stayed root:tty 0620.
func TestHostileSSHTerminalOwner(t *testing.T) {
	s := startSSH(t, Options{})
	const script = `t=$(tty); stat -c %U:%G:%a "$t"; echo hi > "$t" && echo wrote-ok`
	want := "tl-user:tty:620"
	out, code := s.ssh(t, "", "-tt", script)
	if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, "wrote-ok") {
		t.Fatalf("ssh -tt: exit %d, output %q, want %q and wrote-ok", code, out, want)
	}
	p := ptyCreate(t, s.System, map[string]any{"command": "sh", "args": []string{"-c", script}})
	c := ptyDial(t, s.System, p)
	c.ready()
	c.waitClose(20 * time.Second)
	if got := c.out.String(); c.exit != 0 || !strings.Contains(got, want) || !strings.Contains(got, "wrote-ok") {
		t.Fatalf("PTY API: exit %d, output %q, want %q and wrote-ok", c.exit, got, want)
	}
}

// TestHostileSSHNoForeignTerminal: thousands of `ssh -tt` sessions, up to
// 200 at once, each listing the fds its shell holds: none may hold another
// session's PTY master (/dev/ptmx). A master dup'ed and marked
// close-on-exec in two steps leaked into concurrent sessions' shells, which
// could then read and type into them (issue 10 item 5). The sessions ride
// on OpenSSH connection multiplexing (20 master connections, ten sessions
// each per wave) so the agent's PTY and fork paths, not key exchanges,
// take the time.
func TestHostileSSHNoForeignTerminal(t *testing.T) {
	s := startSSH(t, Options{})
	const masters, perMaster, waves = 20, 10, 10
	dir, err := os.MkdirTemp("/tmp", "tlmux-") // short: unix socket paths are bounded
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socks := make([]string, masters)
	for i := range socks {
		socks[i] = filepath.Join(dir, fmt.Sprint(i))
		s.backgroundWith(t, []string{"-o", "ControlMaster=yes", "-o", "ControlPath=" + socks[i]}, "-N", s.SSHDest())
	}
	for _, sock := range socks {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("master connection %s never came up", sock)
			}
		}
	}
	start := time.Now()
	var mu sync.Mutex
	var bad []string
	for w := 0; w < waves; w++ {
		var wg sync.WaitGroup
		for i := 0; i < masters*perMaster; i++ {
			wg.Add(1)
			go func(sock string) {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
				defer cancel()
				args := append(s.SSHArgs(s.key.Private), "-o", "ControlMaster=no", "-o", "ControlPath="+sock,
					"-tt", s.SSHDest(), "ls -l /proc/self/fd/")
				out, err := exec.CommandContext(ctx, "ssh", args...).CombinedOutput()
				got := string(out)
				if err != nil || !strings.Contains(got, "/dev/pts/") || strings.Contains(got, "ptmx") {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%v: %q", err, got))
					mu.Unlock()
				}
			}(socks[i%masters])
		}
		wg.Wait()
	}
	n := waves * masters * perMaster
	t.Logf("%d ssh -tt sessions in waves of %d: %v", n, masters*perMaster, time.Since(start))
	for i, b := range bad {
		if i == 10 {
			t.Errorf("... %d more", len(bad)-10)
			break
		}
		t.Errorf("session: %s", b)
	}
}

// TestHostileSSHForwardsAsUser: forwards reach, bind and make only what
// tl-user could (issue 10 item 2). Before, they acted as root: a unix -L
// to the root-only control socket printed the agent's token through
// /debug/pprof/cmdline, -R bound ports below 1024, and -R of a socket made
// (or replaced a stale one) in any folder.
func TestHostileSSHForwardsAsUser(t *testing.T) {
	s := startSSH(t, Options{})
	dir := t.TempDir()
	waitFile := func(p string) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := os.Stat(p); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("ssh never listened on %s", p)
			}
		}
	}
	get := func(sock, url string) (string, error) {
		resp, err := sshUnixClient(sock).Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	// A socket tl-user may use: the forwards below work at all.
	userSock := "/tmp/tl-user-srv.sock"
	ln, err := net.Listen("unix", s.SandboxPath(userSock))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "hello user") })}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	if err := os.Chown(s.SandboxPath(userSock), int(s.uid), -1); err != nil {
		t.Fatal(err)
	}
	// Absolute paths take the proxy's stream shortcut; relative ones (from
	// the agent's folder, /) go through the agent's SSH server.
	for i, target := range []string{"/run/tl-agent.sock", "run/tl-agent.sock", userSock, strings.TrimPrefix(userSock, "/")} {
		local := filepath.Join(dir, fmt.Sprintf("l%d.sock", i))
		s.background(t, "-N", "-L", local+":"+target, s.SSHDest())
		waitFile(local)
		body, err := get(local, "http://x/debug/pprof/cmdline")
		if target == userSock || "/"+target == userSock {
			if body != "hello user" {
				t.Errorf("unix -L to tl-user's socket %s: %v %q", target, err, body)
			}
			continue
		}
		if err == nil {
			t.Errorf("unix -L to the root-only control socket (%s) answered: %q", target, body)
		}
	}

	// -R to a privileged port.
	low := 0
	for p := 1000; p > 900 && low == 0; p-- {
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			l.Close()
			low = p
		}
	}
	if low == 0 {
		t.Fatal("no free port below 1000")
	}
	fwd := []string{"-o", "ExitOnForwardFailure=yes", "-R"}
	if out, code := s.sshWith(t, "", append(fwd, fmt.Sprintf("127.0.0.1:%d:127.0.0.1:1", low)), "true"); code != 255 {
		t.Errorf("-R to privileged port %d: exit %d %q, want refused", low, code, out)
	}
	if out, code := s.sshWith(t, "", append(fwd, "0:127.0.0.1:1"), "true"); code != 0 {
		t.Errorf("-R to port 0: exit %d %q", code, out)
	}

	// -R of a socket in a folder only root may write, new or stale.
	stale := "/run/tl-stale.sock"
	sl, err := net.Listen("unix", s.SandboxPath(stale))
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()
	var before syscall.Stat_t
	if err := syscall.Stat(s.SandboxPath(stale), &before); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/run/tl-new.sock", stale} {
		if out, code := s.sshWith(t, "", append(fwd, p+":127.0.0.1:1"), "true"); code != 255 {
			t.Errorf("-R %s in root's folder: exit %d %q, want refused", p, code, out)
		}
	}
	if _, err := os.Lstat(s.SandboxPath("/run/tl-new.sock")); err == nil {
		t.Errorf("a socket was made in /run")
	}
	var after syscall.Stat_t
	if err := syscall.Stat(s.SandboxPath(stale), &after); err != nil || after.Ino != before.Ino || after.Uid != 0 {
		t.Errorf("root's stale socket replaced: %v ino %d->%d uid %d", err, before.Ino, after.Ino, after.Uid)
	}
	// Where tl-user may write, the socket is made, and is tl-user's.
	mine := "/tmp/tl-user-fwd.sock"
	cmd, _ := s.background(t, "-N", "-R", mine+":127.0.0.1:1", s.SSHDest())
	waitFile(s.SandboxPath(mine))
	sshOwner(t, s.SandboxPath(mine), s.uid)
	_ = cmd.Process.Kill()
}
