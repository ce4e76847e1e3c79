package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
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

	gossh "golang.org/x/crypto/ssh"
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
// 100 at once (the proxy caps one key at 128 channels), each listing the fds its shell holds: none may hold another
// session's PTY master (/dev/ptmx). A master dup'ed and marked
// close-on-exec in two steps leaked into concurrent sessions' shells, which
// could then read and type into them (issue 10 item 5). The sessions ride
// on OpenSSH connection multiplexing (20 master connections, five sessions
// each per wave) so the agent's PTY and fork paths, not key exchanges,
// take the time; API processes that list their fds run meanwhile.
func TestHostileSSHNoForeignTerminal(t *testing.T) {
	s := startSSH(t, Options{})
	const masters, perMaster, waves = 20, 5, 20
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
	// API processes forked meanwhile list their fds too: more forks in
	// the agent while PTYs open, and more children that would see a leak.
	stop := make(chan struct{})
	var apiRuns sync.WaitGroup
	var apiForks int
	for i := 0; i < 4; i++ {
		apiRuns.Add(1)
		go func() {
			defer apiRuns.Done()
			for n := 0; n < 100_000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp := s.Do("POST", "/api/v1/processes/run", map[string]any{"command": "ls", "args": []string{"-l", "/proc/self/fd/"}})
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				apiForks++
				if strings.Contains(string(body), "ptmx") {
					bad = append(bad, fmt.Sprintf("API process: %q", body))
				}
				mu.Unlock()
			}
		}()
	}
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
	close(stop)
	apiRuns.Wait()
	n := waves * masters * perMaster
	t.Logf("%d ssh -tt sessions in waves of %d, %d API processes meanwhile: %v", n, masters*perMaster, apiForks, time.Since(start))
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
	waitFile := func(t *testing.T, p string) {
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
	// the agent's folder, /) go through the agent's SSH server. Each rule
	// holds on both paths.
	unixL := func(t *testing.T, i int, target string) (string, error) {
		local := filepath.Join(dir, fmt.Sprintf("l%d.sock", i))
		s.background(t, "-N", "-L", local+":"+target, s.SSHDest())
		waitFile(t, local)
		return get(local, "http://x/debug/pprof/cmdline")
	}
	rule(t, s.System, "unix -L reaches a socket tl-user may use (absolute and relative path)", func(t *testing.T) {
		for i, target := range []string{userSock, strings.TrimPrefix(userSock, "/")} {
			if body, err := unixL(t, i, target); body != "hello user" {
				t.Errorf("unix -L to tl-user's socket %s: %v %q", target, err, body)
			}
		}
	})
	rule(t, s.System, "unix -L to the root-only control socket does not connect (absolute and relative path)", func(t *testing.T) {
		for i, target := range []string{"/run/tl-agent.sock", "run/tl-agent.sock"} {
			if body, err := unixL(t, 10+i, target); err == nil {
				t.Errorf("unix -L to the root-only control socket (%s) answered: %q", target, body)
			}
		}
	})

	fwd := []string{"-o", "ExitOnForwardFailure=yes", "-R"}
	rule(t, s.System, "-R may not bind a privileged port; port 0 is allowed", func(t *testing.T) {
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
		if out, code := s.sshWith(t, "", append(fwd, fmt.Sprintf("127.0.0.1:%d:127.0.0.1:1", low)), "true"); code != 255 {
			t.Errorf("-R to privileged port %d: exit %d %q, want refused", low, code, out)
		}
		if out, code := s.sshWith(t, "", append(fwd, "0:127.0.0.1:1"), "true"); code != 0 {
			t.Errorf("-R to port 0: exit %d %q", code, out)
		}
	})
	rule(t, s.System, "-R of a socket in root's folder is refused, new or stale, and makes or replaces nothing", func(t *testing.T) {
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
	})
	rule(t, s.System, "-R where tl-user may write makes a socket owned by tl-user", func(t *testing.T) {
		mine := "/tmp/tl-user-fwd.sock"
		cmd, _ := s.background(t, "-N", "-R", mine+":127.0.0.1:1", s.SSHDest())
		waitFile(t, s.SandboxPath(mine))
		sshOwner(t, s.SandboxPath(mine), s.uid)
		_ = cmd.Process.Kill()
	})
}

// listenSSH is a sandbox whose agent also serves --ssh-listen, with
// tl-user's ~/.ssh/authorized_keys holding lines (written as tl-user's
// own file: the agent reads it as tl-user).
func listenSSH(t *testing.T, lines ...string) (*sshSystem, string) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", sshFreePort(t))
	s := startSSH(t, Options{AgentArgs: []string{"--ssh-listen", addr}})
	s.writeUserKeys(t, lines...)
	return s, addr
}

func (s *sshSystem) writeUserKeys(t *testing.T, lines ...string) {
	t.Helper()
	dir := s.SandboxPath("/home/tl-user/.ssh")
	p := filepath.Join(dir, "authorized_keys")
	_ = os.Remove(p)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{dir, p} {
		if err := os.Chown(f, int(s.uid), int(s.uid)); err != nil {
			t.Fatal(err)
		}
	}
}

// goKey is an in-memory key for Go SSH clients, with its authorized_keys
// line.
func goKey(t *testing.T) (gossh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return sig, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(sig.PublicKey())))
}

// TestHostileSSHListenKeyOptions: on --ssh-listen, a key whose line
// carries an option the agent does not implement (command=, from=,
// restrict) is refused; before, each gave a full shell. A FIFO in place of
// authorized_keys is refused without blocking (issue 10 item 7, issue 11
// item 2).
func TestHostileSSHListenKeyOptions(t *testing.T) {
	s, addr := listenSSH(t)
	_, port, _ := strings.Cut(addr, ":")
	direct := func() (string, int) {
		args := append(s.SSHOpts(s.key.Private), "-p", port, "tl-user@127.0.0.1", "echo shell-ok")
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ssh", args...).CombinedOutput()
		return string(out), sshExitCode(t, err)
	}
	for _, opt := range []string{`command="echo forced"`, `from="10.9.9.9"`, `restrict`, `no-pty`} {
		s.writeUserKeys(t, opt+" "+s.key.Public)
		if out, code := direct(); code != 255 {
			t.Errorf("key with %s: exit %d %q, want refused", opt, code, out)
		}
	}
	s.writeUserKeys(t, s.key.Public)
	if out, code := direct(); code != 0 || out != "shell-ok\n" {
		t.Fatalf("plain key: exit %d %q", code, out)
	}
	p := s.SandboxPath("/home/tl-user/.ssh/authorized_keys")
	_ = os.Remove(p)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(p, int(s.uid), int(s.uid))
	if out, code := direct(); code != 255 {
		t.Errorf("authorized_keys a FIFO: exit %d %q, want refused", code, out)
	}
	if !strings.Contains(s.AgentLog(), "is not a regular file") {
		t.Errorf("no log line for the FIFO")
	}
	s.writeUserKeys(t, s.key.Public)
	if out, code := direct(); code != 0 {
		t.Fatalf("after the FIFO: exit %d %q", code, out)
	}
}

// stallSigner answers the server's public-key query but never signs: a
// stranger who knows a listed public key (they are public) can hold a
// connection at the query stage.
type stallSigner struct {
	gossh.Signer
	queried chan<- struct{}
	release <-chan struct{}
}

func (s stallSigner) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	s.queried <- struct{}{}
	<-s.release
	return nil, errors.New("released")
}

// closeSignal tells when the server closed the connection.
type closeSignal struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeSignal) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.once.Do(func() { close(c.closed) })
	}
	return n, err
}

// TestHostileSSHListenQueryFlood: 300 connections to --ssh-listen that
// stop after a public-key query (no signature). Before, a query lifted
// the handshake deadline and the listener shared the uplink's 256
// connections: every real login through the proxy was refused while they
// were held. Now the proxy's users still get in, and each query-only
// connection ends at the handshake deadline (30 s) (issue 10 item 11).
func TestHostileSSHListenQueryFlood(t *testing.T) {
	signer, line := goKey(t)
	s, addr := listenSSH(t, line)
	const n = 300
	queried := make(chan struct{}, n)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var served []*closeSignal
	for i := 0; i < n; i++ {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c := &closeSignal{Conn: raw, closed: make(chan struct{})}
		t.Cleanup(func() { raw.Close() })
		go func() {
			cfg := &gossh.ClientConfig{User: "tl-user", HostKeyCallback: gossh.InsecureIgnoreHostKey(),
				Auth: []gossh.AuthMethod{gossh.PublicKeys(stallSigner{signer, queried, release})}}
			_, _, _, _ = gossh.NewClientConn(c, addr, cfg)
		}()
		served = append(served, c)
	}
	// Wait for the listener to have taken as many as it will.
	got := 0
	for quiet := time.After(5 * time.Second); ; {
		select {
		case <-queried:
			got++
			quiet = time.After(2 * time.Second)
			continue
		case <-quiet:
		}
		break
	}
	t.Logf("%d of %d connections reached the key query", got, n)
	if got == 0 {
		t.Fatal("no connection reached the key query: the flood tested nothing")
	}
	// A real login through the proxy is not refused.
	if out, code := s.ssh(t, "", "echo in"); code != 0 || out != "in\n" {
		t.Fatalf("login through the proxy during the flood: exit %d %q", code, out)
	}
	// Every held connection ends at the handshake deadline.
	start := time.Now()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	open := 0
	for _, c := range served {
		if open > 0 {
			select {
			case <-c.closed:
			default:
				open++
			}
			continue
		}
		select {
		case <-c.closed:
		case <-deadline.C:
			open++
		}
	}
	if open > 0 {
		t.Fatalf("%d query-only connections still open %v after the flood", open, time.Since(start))
	}
	t.Logf("all query-only connections closed %v after the login", time.Since(start))
}

// TestHostileSSHChannelFlood: one authenticated client on --ssh-listen
// opens 100 session channels and sends 2 MiB on each without any request
// (x/crypto buffers up to a channel's 2 MiB window unread). Before, PID 1
// grew by about that much per channel (14 to 153 MB with 60). Now at most
// 16 unstarted sessions per connection are accepted, so the growth stays
// under 64 MiB (16 x 2 MiB of data plus overhead), and they are closed
// after 10 s (issue 10 item 8).
func TestHostileSSHChannelFlood(t *testing.T) {
	signer, line := goKey(t)
	s, addr := listenSSH(t, line)
	c, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{User: "tl-user", HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)}})
	if err != nil {
		t.Fatalf("login on --ssh-listen: %v", err)
	}
	defer c.Close()
	pid := s.AgentPid()
	before := vmKB(t, pid, "VmRSS")
	const channels, each = 100, 2 << 20
	chunk := make([]byte, 32<<10)
	var wg sync.WaitGroup
	accepted := 0
	for i := 0; i < channels; i++ {
		ch, reqs, err := c.OpenChannel("session", nil)
		if err != nil {
			continue
		}
		accepted++
		go gossh.DiscardRequests(reqs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent := 0; sent < each; sent += len(chunk) {
				if _, err := ch.Write(chunk); err != nil {
					return // closed by the agent
				}
			}
		}()
	}
	sent := make(chan struct{})
	go func() { wg.Wait(); close(sent) }()
	// Sample while the data goes in (the last writes of each channel may
	// wait for a window that never reopens: stop after a few seconds).
	peak := before
	for end := time.After(4 * time.Second); ; {
		select {
		case <-sent:
		case <-end:
		case <-time.After(100 * time.Millisecond):
			peak = max(peak, vmKB(t, pid, "VmRSS"))
			continue
		}
		break
	}
	peak = max(peak, vmKB(t, pid, "VmRSS"))
	growth := peak - before
	t.Logf("%d of %d channels accepted; agent RSS %d KiB before, peak %d KiB (+%d KiB)", accepted, channels, before, peak, growth)
	if growth > 64<<10 {
		t.Fatalf("agent RSS grew by %d KiB under a channel flood, want < 64 MiB", growth)
	}
	// The agent still serves others.
	c2, err := gossh.Dial("tcp", addr, &gossh.ClientConfig{User: "tl-user", HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)}})
	if err != nil {
		t.Fatalf("second login: %v", err)
	}
	defer c2.Close()
	sess, err := c2.NewSession()
	if err != nil {
		t.Fatalf("session after the flood: %v", err)
	}
	if out, err := sess.Output("echo alive"); err != nil || string(out) != "alive\n" {
		t.Fatalf("session after the flood: %v %q", err, out)
	}
}
