package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
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
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests drive the SSH front door of tl-proxy and the agent's SSH
// server with OpenSSH's own clients (ssh, scp, sftp, rsync, ssh-agent).

// sshSystem is a sandbox reachable over SSH with one registered key.
type sshSystem struct {
	*System
	key SSHKey
	uid uint32 // tl-user's uid in the sandbox (1000 unless the image has another user there)
}

func startSSH(t *testing.T, opts Options) *sshSystem {
	t.Helper()
	RequireRoot(t)
	key := NewSSHKey(t, "alice@test")
	opts.SSHKeys = WriteAuthorizedKeys(t, key.Public)
	s := &sshSystem{System: Start(t, opts), key: key}
	sandboxReady(t, s.System)
	out, err := s.Exec("id", "-u", "tl-user")
	uid, perr := strconv.ParseUint(strings.TrimSpace(out), 10, 32)
	if err != nil || perr != nil {
		t.Fatalf("id -u tl-user: %v %q", err, out)
	}
	s.uid = uint32(uid)
	return s
}

// ssh runs the ssh client with args after the destination and returns
// combined output and exit code.
func (s *sshSystem) ssh(t *testing.T, stdin string, args ...string) (string, int) {
	t.Helper()
	return s.sshWith(t, stdin, nil, args...)
}

func (s *sshSystem) sshWith(t *testing.T, stdin string, opts []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append(append(s.SSHArgs(s.key.Private), opts...), append([]string{s.SSHDest()}, args...)...)
	cmd := exec.CommandContext(ctx, "ssh", full...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), sshExitCode(t, err)
}

func sshExitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("run: %v", err)
	return -1
}

// background starts a long-lived ssh (forwards) and stops it at cleanup.
func (s *sshSystem) background(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	return s.backgroundWith(t, nil, args...)
}

// backgroundWith puts opts first: ssh keeps the first value of an option.
func (s *sshSystem) backgroundWith(t *testing.T, opts []string, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	full := append(append(opts, s.SSHArgs(s.key.Private)...), "-o", "ExitOnForwardFailure=yes")
	full = append(full, args...)
	cmd := exec.Command("ssh", full...)
	out := &syncBuffer{} // one lock for both streams and the reader
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("ssh: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd, out
}

// httpServer serves "hello <name>" on loopback; the sandbox shares the
// host's network, so it is reachable from inside as 127.0.0.1:port.
func sshHttpServer(t *testing.T, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", name)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// httpGet fetches url through an optional dialer, retrying while a
// forward is being set up.
func sshHttpGet(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	var last error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := c.Get(url)
		if err != nil {
			last = err
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(body)
	}
	t.Fatalf("GET %s: %v", url, last)
	return ""
}

func sshUnixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}, DisableKeepAlives: true}}
}

func sshFreePort(t *testing.T) int {
	t.Helper()
	_, p, _ := strings.Cut(freeAddr(t), ":")
	n, _ := strconv.Atoi(p)
	return n
}

func TestSSHShellAndExec(t *testing.T) {
	s := startSSH(t, Options{})

	t.Run("pty shell", func(t *testing.T) {
		// One line: sudo flushes the terminal's pending input.
		script := "whoami; hostname; pwd; sudo -n true && echo SUDO-OK; echo TERM=$TERM; exit 7\n"
		out, code := s.sshWith(t, script, []string{"-tt", "-o", "SetEnv=TERM=xterm-256color"})
		if code != 7 {
			t.Fatalf("exit %d, want 7; output:\n%s", code, out)
		}
		for _, want := range []string{"tl-user@tl-sbx", "tl-user\r\ntl-sbx\r\n", "/home/tl-user\r\n", "SUDO-OK", "TERM=xterm-256color"} {
			if !strings.Contains(out, want) {
				t.Errorf("shell output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("exec identity", func(t *testing.T) {
		out, code := s.ssh(t, "", "whoami; hostname; pwd; echo $HOME $SHELL; tty || true")
		want := "tl-user\ntl-sbx\n/home/tl-user\n/home/tl-user /bin/bash\nnot a tty\n"
		if code != 0 || out != want {
			t.Fatalf("exit %d, output %q, want %q", code, out, want)
		}
	})
	t.Run("exit codes and signals", func(t *testing.T) {
		for _, c := range []struct {
			cmd  string
			want int
		}{
			{"true", 0}, {"exit 42", 42}, {"false", 1},
			// OpenSSH's client exits 255 when the program was killed
			// by a signal (exit-signal), as against OpenSSH's sshd.
			{"kill -TERM $$", 255}, {"kill -KILL $$", 255},
		} {
			if _, code := s.ssh(t, "", c.cmd); code != c.want {
				t.Errorf("%q: exit %d, want %d", c.cmd, code, c.want)
			}
		}
	})
	t.Run("keepalives", func(t *testing.T) {
		// ServerAliveInterval gives up after 1 unanswered keepalive here:
		// each must be relayed to the agent and answered.
		out, code := s.sshWith(t, "", []string{"-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=1"}, "sleep 3; echo alive")
		if code != 0 || out != "alive\n" {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})
	t.Run("client env", func(t *testing.T) {
		out, _ := s.sshWith(t, "", []string{"-o", "SetEnv=LANG=fr_FR.UTF-8 LC_TL_TEST=hello"}, "echo $LANG $LC_TL_TEST")
		if out != "fr_FR.UTF-8 hello\n" {
			t.Fatalf("env: %q", out)
		}
	})
	t.Run("stdin eof and stderr", func(t *testing.T) {
		cmd := exec.Command("ssh", append(s.SSHArgs(s.key.Private), s.SSHDest(), "cat; echo done; echo oops >&2")...)
		cmd.Stdin = strings.NewReader("line1\nline2\n")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err != nil || stdout.String() != "line1\nline2\ndone\n" || stderr.String() != "oops\n" {
			t.Fatalf("%v: stdout %q, stderr %q", err, stdout.String(), stderr.String())
		}
	})
	t.Run("byte clean", func(t *testing.T) {
		data := make([]byte, 3<<20)
		_, _ = rand.Read(data)
		cmd := exec.Command("ssh", append(s.SSHArgs(s.key.Private), s.SSHDest(), "cat")...)
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("cat round trip: %v, %d bytes back of %d, equal=%v", err, len(out), len(data), bytes.Equal(out, data))
		}
	})
	t.Run("raw pty output", func(t *testing.T) {
		// The terminal's own onlcr turns \n into \r\n once; the server
		// must not add another \r.
		out, _ := s.ssh(t, "", "-tt", "printf 'a\\nb\\n'")
		if out != "a\r\nb\r\n" {
			t.Fatalf("pty output %q, want %q", out, "a\r\nb\r\n")
		}
	})
	t.Run("tmux", func(t *testing.T) {
		out, code := s.ssh(t, "", "-tt", "tmux new-session -d -s tltest 'sleep 60' && tmux ls && tmux kill-server")
		if code != 0 || !strings.Contains(out, "tltest:") {
			t.Fatalf("tmux: exit %d, %q", code, out)
		}
	})
}

// TestSSHFiles is the file-transfer contract: scp in both modes, sftp and
// rsync, byte for byte and owned by the sandbox user.
func TestSSHFiles(t *testing.T) {
	s := startSSH(t, Options{})
	dir := t.TempDir()
	src := filepath.Join(dir, "src.bin")
	data := make([]byte, 2<<20+123)
	_, _ = rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	scp := func(t *testing.T, args ...string) {
		t.Helper()
		full := append(append([]string{"-P", s.SSHPort()}, s.SSHOpts(s.key.Private)...), args...)
		if out, err := exec.Command("scp", full...).CombinedOutput(); err != nil {
			t.Fatalf("scp %v: %v: %s", args, err, out)
		}
	}
	sameAsSrc := func(t *testing.T, path string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s differs from the source (%v)", path, err)
		}
	}

	rule(t, s.System, "scp (sftp mode) copies both ways byte for byte, files owned by tl-user", func(t *testing.T) {
		scp(t, src, s.SSHDest()+":up-sftp.bin")
		sameAsSrc(t, s.SandboxPath("/home/tl-user/up-sftp.bin"))
		sshOwner(t, s.SandboxPath("/home/tl-user/up-sftp.bin"), s.uid)
		scp(t, s.SSHDest()+":up-sftp.bin", filepath.Join(dir, "down-sftp.bin"))
		sameAsSrc(t, filepath.Join(dir, "down-sftp.bin"))
	})
	rule(t, s.System, "~ and ~user paths expand (expand-path@openssh.com)", func(t *testing.T) {
		scp(t, src, s.SSHDest()+":~tl-user/tilde.bin")
		sameAsSrc(t, s.SandboxPath("/home/tl-user/tilde.bin"))
		scp(t, s.SSHDest()+":~/tilde.bin", filepath.Join(dir, "down-tilde.bin"))
		sameAsSrc(t, filepath.Join(dir, "down-tilde.bin"))
	})
	rule(t, s.System, "legacy scp (-O, an exec of scp) copies both ways byte for byte", func(t *testing.T) {
		scp(t, "-O", src, s.SSHDest()+":up-legacy.bin")
		sameAsSrc(t, s.SandboxPath("/home/tl-user/up-legacy.bin"))
		scp(t, "-O", s.SSHDest()+":up-legacy.bin", filepath.Join(dir, "down-legacy.bin"))
		sameAsSrc(t, filepath.Join(dir, "down-legacy.bin"))
	})
	var sftpBefore, sshBefore int
	rule(t, s.System, "an sftp batch: pwd, mkdir, put, rename over a file, symlink, get, rm, df", func(t *testing.T) {
		other := filepath.Join(dir, "other.txt")
		_ = os.WriteFile(other, []byte("other"), 0o644)
		batch := strings.Join([]string{
			"pwd",
			"mkdir box",
			"put " + src + " box/a.bin",
			"put " + other + " box/b.txt",
			"rename box/b.txt box/a.bin", // over an existing file
			"ln -s a.bin box/link",
			"get box/link " + filepath.Join(dir, "got.txt"),
			"put " + other + " box/gone.txt",
			"rm box/gone.txt",
			"df -h",
		}, "\n") + "\n"
		sftpBefore = sftpSessionsTotal(t, s.System)
		sshBefore = sshConnectionsTotal(t, s.System)
		full := append(append([]string{"-P", s.SSHPort()}, s.SSHOpts(s.key.Private)...), "-b", "-", s.SSHDest())
		cmd := exec.Command("sftp", full...)
		cmd.Stdin = strings.NewReader(batch)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sftp: %v:\n%s", err, out)
		}
		if !strings.Contains(string(out), "/home/tl-user") || !strings.Contains(string(out), "Avail") {
			t.Errorf("sftp output lacks pwd (the home folder) or df (statvfs@openssh.com):\n%s", out)
		}
		if got, _ := os.ReadFile(filepath.Join(dir, "got.txt")); string(got) != "other" {
			t.Errorf("get through symlink after rename-over: %q", got)
		}
		if target, err := os.Readlink(s.SandboxPath("/home/tl-user/box/link")); err != nil || target != "a.bin" {
			t.Errorf("symlink: %q %v", target, err)
		}
		if _, err := os.Stat(s.SandboxPath("/home/tl-user/box/gone.txt")); !os.IsNotExist(err) {
			t.Errorf("rm: %v", err)
		}
		sshOwner(t, s.SandboxPath("/home/tl-user/box"), s.uid)
	})
	rule(t, s.System, "sftp is one sftpd session over a bare stream, no SSH connection to the agent", func(t *testing.T) {
		if n := sftpSessionsTotal(t, s.System); n != sftpBefore+1 {
			t.Errorf("sftpd served %v sessions for one sftp run, want 1", n-sftpBefore)
		}
		if n := sshConnectionsTotal(t, s.System); n != sshBefore {
			t.Errorf("sftp opened %v SSH connections to the agent, want none", n-sshBefore)
		}
	})
	rule(t, s.System, "rsync over ssh copies a tree both ways", func(t *testing.T) {
		tree := filepath.Join(dir, "tree")
		_ = os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
		_ = os.WriteFile(filepath.Join(tree, "sub", "f.bin"), data, 0o600)
		_ = os.WriteFile(filepath.Join(tree, "g.txt"), []byte("g"), 0o644)
		rsh := "ssh " + strings.Join(s.SSHArgs(s.key.Private), " ")
		for _, args := range [][]string{
			{"-a", tree + "/", s.SSHDest() + ":tree/"},
			{"-a", s.SSHDest() + ":tree/", filepath.Join(dir, "back") + "/"},
		} {
			if out, err := exec.Command("rsync", append([]string{"-e", rsh}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("rsync %v: %v: %s", args, err, out)
			}
		}
		sameAsSrc(t, s.SandboxPath("/home/tl-user/tree/sub/f.bin"))
		sameAsSrc(t, filepath.Join(dir, "back", "sub", "f.bin"))
	})
}

func sshOwner(t *testing.T, path string, uid uint32) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	if st.Uid != uid {
		t.Errorf("%s owned by uid %d, want %d", path, st.Uid, uid)
	}
}

// TestSSHForwards is the forwarding contract of the SSH front door: -L,
// -D, -R (TCP and unix sockets) and agent forwarding, each a rule.
func TestSSHForwards(t *testing.T) {
	s := startSSH(t, Options{})
	a, b := sshHttpServer(t, "a"), sshHttpServer(t, "b")

	t.Run("-L to the sandbox's 127.0.0.1 reaches the port", func(t *testing.T) {
		before := sshConnectionsTotal(t, s.System)
		lp := sshFreePort(t)
		s.background(t, "-N", "-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", lp, a), s.SSHDest())
		if got := sshHttpGet(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", lp)); got != "hello a" {
			t.Fatalf("-L to 127.0.0.1: got %q, want the server's \"hello a\"", got)
		}
		if n := sshConnectionsTotal(t, s.System); n != before {
			t.Fatalf("-L to 127.0.0.1 opened %d SSH connections to the agent, want none (the proxy's tcp stream)", n-before)
		}
	})
	t.Run("-L to another loopback address goes through the agent's SSH server", func(t *testing.T) {
		// Only 127.0.0.1 and localhost take the proxy's stream shortcut;
		// 127.0.0.2 (loopback too) goes through the agent's SSH server.
		ln, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Skip("no 127.0.0.2:", err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "hello two") })}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		before := sshConnectionsTotal(t, s.System)
		lp := sshFreePort(t)
		s.background(t, "-N", "-L", fmt.Sprintf("127.0.0.1:%d:%s", lp, ln.Addr()), s.SSHDest())
		if got := sshHttpGet(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", lp)); got != "hello two" {
			t.Fatalf("-L to 127.0.0.2: got %q, want \"hello two\"", got)
		}
		if n := sshConnectionsTotal(t, s.System); n != before+1 {
			t.Fatalf("-L to 127.0.0.2 opened %d SSH connections to the agent, want 1", n-before)
		}
	})
	t.Run("-L to a closed port closes the client's connection", func(t *testing.T) {
		lp, closed := sshFreePort(t), sshFreePort(t)
		s.background(t, "-N", "-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", lp, closed), s.SSHDest())
		time.Sleep(300 * time.Millisecond)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", lp))
			if err != nil {
				continue // ssh not listening yet
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := c.Read(make([]byte, 1))
			c.Close()
			if n != 0 || err == nil {
				t.Fatalf("read from a forward to a closed port: %d %v, want the connection closed", n, err)
			}
			return
		}
		t.Fatal("ssh -L never listened")
	})
	t.Run("-D (SOCKS) reaches a port by name", func(t *testing.T) {
		lp := sshFreePort(t)
		s.background(t, "-N", "-D", fmt.Sprintf("127.0.0.1:%d", lp), s.SSHDest())
		var out []byte
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			out, err = exec.Command("curl", "-sS", "--max-time", "10", "--socks5-hostname", fmt.Sprintf("127.0.0.1:%d", lp),
				fmt.Sprintf("http://localhost:%d/", b)).CombinedOutput()
			if err == nil {
				break
			}
		}
		if err != nil || string(out) != "hello b" {
			t.Fatalf("curl through -D: %v %q", err, out)
		}
	})
	t.Run("-R port 0 allocates a distinct port per forward, each reaching its target", func(t *testing.T) {
		_, out := s.backgroundWith(t, []string{"-o", "LogLevel=INFO"}, "-N",
			"-R", fmt.Sprintf("0:127.0.0.1:%d", a), "-R", fmt.Sprintf("0:127.0.0.1:%d", b), s.SSHDest())
		re := regexp.MustCompile(`Allocated port (\d+) for remote forward to 127.0.0.1:(\d+)`)
		var ms [][]string
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && len(ms) < 2; time.Sleep(100 * time.Millisecond) {
			ms = re.FindAllStringSubmatch(out.String(), -1)
		}
		if len(ms) != 2 || ms[0][1] == ms[1][1] {
			t.Fatalf("want two distinct allocated ports, ssh said:\n%s", out.String())
		}
		for _, m := range ms {
			want := map[string]string{strconv.Itoa(a): "hello a", strconv.Itoa(b): "hello b"}[m[2]]
			if got := sshHttpGet(t, http.DefaultClient, "http://127.0.0.1:"+m[1]+"/"); got != want {
				t.Errorf("-R port %s: %q, want %q", m[1], got, want)
			}
		}
	})
	t.Run("-R fixed port is freed when the connection drops, and can be bound again", func(t *testing.T) {
		rp := sshFreePort(t)
		for i := 0; i < 2; i++ {
			cmd, _ := s.background(t, "-N", "-R", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", rp, a), s.SSHDest())
			if got := sshHttpGet(t, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/", rp)); got != "hello a" {
				t.Fatalf("-R round %d: got %q, want \"hello a\"", i, got)
			}
			_ = cmd.Process.Kill() // no cancel: the forward must end with the connection
			sshWaitClosed(t, fmt.Sprintf("127.0.0.1:%d", rp))
		}
	})
	t.Run("-L to a unix socket connects as tl-user", func(t *testing.T) {
		srvPath := "/tmp/tl-test-srv.sock"
		ln, err := net.Listen("unix", s.SandboxPath(srvPath))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "hello unix") })}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		// Forwards connect as tl-user, who needs write permission on it.
		if err := os.Chown(s.SandboxPath(srvPath), int(s.uid), -1); err != nil {
			t.Fatal(err)
		}
		local := filepath.Join(t.TempDir(), "l.sock")
		s.background(t, "-N", "-L", local+":"+srvPath, s.SSHDest())
		if got := sshHttpGet(t, sshUnixClient(local), "http://x/"); got != "hello unix" {
			t.Fatalf("unix -L: got %q, want \"hello unix\"", got)
		}
	})
	t.Run("-R to a unix socket is owned by tl-user and replaces a stale socket", func(t *testing.T) {
		remote := "/tmp/tl-test-fwd.sock"
		for i := 0; i < 2; i++ {
			cmd, _ := s.background(t, "-N", "-R", fmt.Sprintf("%s:127.0.0.1:%d", remote, b), s.SSHDest())
			if got := sshHttpGet(t, sshUnixClient(s.SandboxPath(remote)), "http://x/"); got != "hello b" {
				t.Fatalf("unix -R round %d: got %q, want \"hello b\"", i, got)
			}
			sshOwner(t, s.SandboxPath(remote), s.uid)
			_ = cmd.Process.Kill()
		}
	})
	t.Run("-A gives the session a tl-user-owned agent socket that reaches the client's agent", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "agent.sock")
		agent := exec.Command("ssh-agent", "-D", "-a", sock)
		agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := agent.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = agent.Process.Kill(); _ = agent.Wait() }()
		env := append(os.Environ(), "SSH_AUTH_SOCK="+sock)
		var err error
		for i := 0; i < 50; i++ {
			add := exec.Command("ssh-add", s.key.Private)
			add.Env = env
			if err = add.Run(); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("ssh-add: %v", err)
		}
		cmd := exec.Command("ssh", append(s.SSHArgs(s.key.Private), "-A", s.SSHDest(), "ssh-add -l; stat -c %U $SSH_AUTH_SOCK")...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "alice@test") || !strings.Contains(string(out), "tl-user") {
			t.Fatalf("ssh -A: %v: %s (want the key alice@test listed, the socket owned by tl-user)", err, out)
		}
	})
}

func sshWaitClosed(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
	}
	t.Fatalf("%s still listening after its connection dropped", addr)
}

func TestSSHRefusals(t *testing.T) {
	RequireRoot(t)
	good, narrow, stranger := NewSSHKey(t, "good"), NewSSHKey(t, "narrow"), NewSSHKey(t, "stranger")
	keys := WriteAuthorizedKeys(t, `sandboxes="*" `+good.Public, `sandboxes="other-sbx" `+narrow.Public)
	s := &sshSystem{System: Start(t, Options{SSHKeys: keys}), key: good}
	sandboxReady(t, s.System)
	try := func(key SSHKey, user string) (string, int) {
		// OpenSSH prints the proxy's banner at its default log level.
		args := append([]string{"-o", "LogLevel=INFO"}, s.SSHArgs(key.Private)...)
		cmd := exec.Command("ssh", append(args, user+"@127.0.0.1", "true")...)
		out, err := cmd.CombinedOutput()
		return string(out), sshExitCode(t, err)
	}
	cases := []struct {
		name string
		key  SSHKey
		user string
		want string
	}{
		// Each names what fixes it: the file and the line to add, the
		// option, the config (issue 15, item 6).
		{"key not registered", stranger, s.SandboxID, "is not registered with this proxy; add this line to the users' keys file (\"ssh_authorized_keys\" in tl-proxy's --config, or its --ssh-authorized-keys flag):\n  " + strings.Join(strings.Fields(stranger.Public)[:2], " ")},
		{"sandbox not reachable with key", narrow, s.SandboxID, "sandbox " + s.SandboxID + " is not reachable with key SHA256:"},
		{"sandbox not reachable with key: the fix", narrow, s.SandboxID, ": add " + s.SandboxID + " to the sandboxes=\"...\" option of its line in the users' keys file"},
		{"no such sandbox", good, "nope", "sandbox nope does not exist: tl-proxy's --config has no \"nope\" under \"sandboxes\""},
		{"nothing on port", good, "1-" + s.SandboxID, "nothing answers on port 1"},
	}
	for _, c := range cases {
		out, code := try(c.key, c.user)
		if code != 255 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, output %q, want 255 and %q", c.name, code, out, c.want)
		}
	}
	if out, code := try(good, s.SandboxID); code != 0 {
		t.Fatalf("good key: exit %d: %s", code, out)
	}
	_ = s.SignalAgent(syscall.SIGTERM)
	s.WaitAgentExit(20 * time.Second)
	for deadline := time.Now().Add(10 * time.Second); s.Connected() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	out, code := try(good, s.SandboxID)
	if code != 255 || !strings.Contains(out, "sandbox "+s.SandboxID+" is not connected: start its agent (tl-agent --sandbox-id "+s.SandboxID) {
		t.Fatalf("stopped sandbox: exit %d, output %q", code, out)
	}
}

func sshFdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("fds: %v", err)
	}
	return len(ents)
}

// TestSSHNoLeaks opens many connections (sessions, sftp sessions, some
// dropped before the handshake) and checks the agent's fds and goroutines return to baseline.
func TestSSHNoLeaks(t *testing.T) {
	s := startSSH(t, Options{})
	_, _ = s.ssh(t, "", "true") // warm up: first-connection allocations
	time.Sleep(500 * time.Millisecond)
	baseFD, baseG := sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)
	const total, parallel = 1000, 50
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	var failed sync.Map
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			// Alternate a full session with a connection dropped mid-handshake.
			if i%4 == 3 {
				if c, err := net.Dial("tcp", s.SSHAddr); err == nil {
					_, _ = bufio.NewReader(c).ReadString('\n')
					c.Close()
				}
				return
			}
			// Every tenth is an sftp session (the proxy's SFTP stream).
			if i%10 == 1 {
				full := append(append([]string{"-P", s.SSHPort()}, s.SSHOpts(s.key.Private)...), "-b", "-", s.SSHDest())
				cmd := exec.Command("sftp", full...)
				cmd.Stdin = strings.NewReader("pwd\n")
				if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "/home/tl-user") {
					failed.Store(i, fmt.Sprintf("sftp: %v %q", err, out))
				}
				return
			}
			cmd := exec.Command("ssh", append(s.SSHArgs(s.key.Private), s.SSHDest(), "echo ok")...)
			if out, err := cmd.CombinedOutput(); err != nil || string(out) != "ok\n" {
				failed.Store(i, fmt.Sprintf("%v %q", err, out))
			}
		}(i)
	}
	wg.Wait()
	failed.Range(func(k, v any) bool { t.Errorf("connection %v: %v", k, v); return true })
	var fd, g int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		fd, g = sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)
		if fd <= baseFD+5 && g <= baseG+10 {
			t.Logf("after %d connections: fds %d (baseline %d), goroutines %d (baseline %d)", total, fd, baseFD, g, baseG)
			return
		}
	}
	t.Fatalf("after %d connections: fds %d (baseline %d), goroutines %d (baseline %d)", total, fd, baseFD, g, baseG)
}

func sshGoroutines(t *testing.T, s *System) int {
	t.Helper()
	return agentState(t, s).Goroutines
}

// TestSSHPortRoute: the agent's in-sandbox listener (--ssh-listen) with
// tl-user's authorized_keys, reached directly and through the front door
// as <port>-<sandbox>, where the proxy logs in with its own host key.
func TestSSHPortRoute(t *testing.T) {
	RequireRoot(t)
	port := sshFreePort(t)
	s := startSSH(t, Options{AgentArgs: []string{"--ssh-listen", fmt.Sprintf("127.0.0.1:%d", port)}})
	route := fmt.Sprintf("%d-%s@127.0.0.1", port, s.SandboxID)

	// Before the proxy's key is authorized, the user is told what to do.
	args := append([]string{"-o", "LogLevel=INFO"}, s.SSHArgs(s.key.Private)...)
	out, err := exec.Command("ssh", append(args, route, "true")...).CombinedOutput()
	if sshExitCode(t, err) != 255 || !strings.Contains(string(out), "refused the proxy") {
		t.Fatalf("unauthorized proxy key: %v %q", err, out)
	}

	scan, err := exec.Command("ssh-keyscan", "-t", "ed25519", "-p", s.SSHPort(), "127.0.0.1").Output()
	if err != nil {
		t.Fatalf("ssh-keyscan: %v", err)
	}
	_, proxyKey, _ := strings.Cut(strings.TrimSpace(string(scan)), " ")
	if !strings.Contains(string(out), "append the proxy's key to ~tl-user/.ssh/authorized_keys in the sandbox:\n  "+proxyKey) {
		t.Errorf("the refusal does not give the line to add (%s): %q", proxyKey, out)
	}
	s.writeUserKeys(t, proxyKey, s.key.Public) // tl-user's own file: the agent reads it as tl-user

	out, err = exec.Command("ssh", append(s.SSHArgs(s.key.Private), route, "whoami; exit 3")...).CombinedOutput()
	if sshExitCode(t, err) != 3 || string(out) != "tl-user\n" {
		t.Fatalf("through the port route: %v %q", err, out)
	}
	direct := append(s.SSHOpts(s.key.Private), "-p", strconv.Itoa(port), "tl-user@127.0.0.1", "hostname")
	out, err = exec.Command("ssh", direct...).CombinedOutput()
	if err != nil || string(out) != "tl-sbx\n" {
		t.Fatalf("direct to --ssh-listen: %v %q", err, out)
	}
	wrongUser := append(s.SSHOpts(s.key.Private), "-p", strconv.Itoa(port), "root@127.0.0.1", "true")
	if err := exec.Command("ssh", wrongUser...).Run(); sshExitCode(t, err) != 255 {
		t.Fatalf("root login on --ssh-listen: %v, want refused", err)
	}
}
