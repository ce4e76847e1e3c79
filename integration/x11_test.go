package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
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

// X11 forwarding (ssh -X, -Y) through the proxy's front door, with a real
// X server on the client's side (Xvfb) and real X clients in the sandbox
// (xdpyinfo, xauth: the sandbox's root is this machine's, overlaid).

// xvfb is an X server for the ssh client: its display and the cookie
// that opens it, in the client's own Xauthority file.
type xvfb struct {
	display string // ":N"
	cookie  string // hex MIT-MAGIC-COOKIE-1
	env     []string
}

const xvfbW, xvfbH = 1234, 567

// startXvfb starts Xvfb (no TCP listener: a unix socket only, so its
// display can never be one the agent takes) and stops it by pid at
// cleanup.
func startXvfb(t *testing.T) *xvfb {
	t.Helper()
	if _, err := exec.LookPath("Xvfb"); err != nil {
		t.Fatalf("Xvfb not installed (scripts/deps.sh installs xvfb): %v", err)
	}
	dir := t.TempDir()
	auth := filepath.Join(dir, "Xauthority")
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	x := &xvfb{cookie: hex.EncodeToString(b)}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Xvfb reads the -auth file at start: the cookie goes in under a
	// placeholder name, fixed below once the display number is known.
	if out, err := exec.Command("xauth", "-f", auth, "add", ":0", "MIT-MAGIC-COOKIE-1", x.cookie).CombinedOutput(); err != nil {
		t.Fatalf("xauth add: %v %s", err, out)
	}
	cmd := exec.Command("Xvfb", "-displayfd", "3", "-auth", auth, "-nolisten", "tcp",
		"-screen", "0", fmt.Sprintf("%dx%dx24", xvfbW, xvfbH))
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logBuf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logBuf, logBuf
	if err := cmd.Start(); err != nil {
		t.Fatalf("Xvfb: %v", err)
	}
	w.Close()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case n := <-line:
		if _, err := strconv.Atoi(n); err != nil {
			t.Fatalf("Xvfb gave no display number (%q): %s", n, logBuf.String())
		}
		x.display = ":" + n
	case <-time.After(30 * time.Second):
		t.Fatalf("Xvfb did not start: %s", logBuf.String())
	}
	if out, err := exec.Command("xauth", "-f", auth, "add", x.display, "MIT-MAGIC-COOKIE-1", x.cookie).CombinedOutput(); err != nil {
		t.Fatalf("xauth add: %v %s", err, out)
	}
	x.env = append(os.Environ(), "DISPLAY="+x.display, "XAUTHORITY="+auth)
	if out, err := xcmd(x, "xdpyinfo").CombinedOutput(); err != nil {
		t.Fatalf("xdpyinfo on the client's side: %v %s", err, out)
	}
	return x
}

func xcmd(x *xvfb, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = x.env
	return cmd
}

// sshX runs ssh with the X server's environment; opts go before the
// destination.
func (s *sshSystem) sshX(t *testing.T, x *xvfb, opts []string, command string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append(append(s.SSHArgs(s.key.Private), opts...), s.SSHDest(), command)
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Env = x.env
	out, err := cmd.CombinedOutput()
	return string(out), sshExitCode(t, err)
}

var displayRe = regexp.MustCompile(`DISPLAY=localhost:(\d+)\.0\b`)

// displayOf is the display number the session reported with
// `echo DISPLAY=$DISPLAY`.
func displayOf(t *testing.T, out string) int {
	t.Helper()
	m := displayRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no DISPLAY=localhost:N.0 in the session:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	if n < 10 {
		t.Fatalf("display %d, want 10 or more (X11DisplayOffset)", n)
	}
	return n
}

func TestSSHX11(t *testing.T) {
	s := startSSH(t, Options{})
	x := startXvfb(t)
	dims := fmt.Sprintf("dimensions:    %dx%d pixels", xvfbW, xvfbH)

	for _, flag := range []string{"-Y", "-X"} {
		rule(t, s.System, "ssh "+flag+" shows the client's X display to xdpyinfo in the sandbox", func(t *testing.T) {
			out, code := s.sshX(t, x, []string{flag}, "echo DISPLAY=$DISPLAY; xdpyinfo")
			if code != 0 || !strings.Contains(out, dims) {
				t.Fatalf("exit %d, want 0 and %q:\n%s", code, dims, out)
			}
			displayOf(t, out)
		})
	}

	rule(t, s.System, "the sandbox never holds the client's cookie", func(t *testing.T) {
		out, code := s.sshX(t, x, []string{"-Y"}, "echo DISPLAY=$DISPLAY; xauth list; cat ~/.Xauthority | od -An -tx1 | tr -d ' \\n'")
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		n := displayOf(t, out)
		if !regexp.MustCompile(fmt.Sprintf(`(?m)/unix:%d\s+MIT-MAGIC-COOKIE-1\s+[0-9a-f]{32}$`, n)).MatchString(out) {
			t.Fatalf("no cookie for unix:%d in the sandbox's xauth list:\n%s", n, out)
		}
		if strings.Contains(out, x.cookie) {
			t.Fatalf("the client's real cookie %s is in the sandbox:\n%s", x.cookie, out)
		}
	})

	rule(t, s.System, "the display stops listening when its session ends", func(t *testing.T) {
		out, code := s.sshX(t, x, []string{"-Y"}, "echo DISPLAY=$DISPLAY")
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		// The integration sandbox shares this machine's network.
		addr := fmt.Sprintf("127.0.0.1:%d", 6000+displayOf(t, out))
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				break
			}
			c.Close()
			if time.Now().After(deadline) {
				t.Fatalf("%s still listening 10 s after the session ended", addr)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	rule(t, s.System, "without xauth in the sandbox the user is told, and X clients are refused with the reason", func(t *testing.T) {
		// The sandbox's root is an overlay: this hides xauth inside only.
		if out, err := s.Exec("mv", "/usr/bin/xauth", "/usr/bin/xauth.hidden"); err != nil {
			t.Fatalf("hide xauth: %v %s", err, out)
		}
		defer s.Exec("mv", "/usr/bin/xauth.hidden", "/usr/bin/xauth")
		out, code := s.sshX(t, x, []string{"-Y"}, "rm -f ~/.Xauthority; xdpyinfo")
		if code == 0 || !strings.Contains(out, "xauth is not installed in the sandbox") || !strings.Contains(out, "wrong X11 authorization") {
			t.Fatalf("exit %d, want a failure naming xauth and the refused authorization:\n%s", code, out)
		}
	})
}

// xholdScript runs in the sandbox's session: X clients that connect to
// the display with its cookie, read the start of the server's answer and
// then neither read nor close, outside the session's process group (so
// the hang-up does not end them).
const xholdScript = `n=${DISPLAY#localhost:}; n=${n%.*}
c=$(xauth list | awk -v d="unix:$n" '$1 ~ d"$" {print $3}')
esc=$(printf %s "$c" | sed 's/../\\x&/g')
for i in $(seq "$1"); do
  setsid bash -c 'exec 3<>/dev/tcp/127.0.0.1/'$((6000+n))'
    printf "l\0\x0b\0\0\0\x12\0\x10\0\0\0MIT-MAGIC-COOKIE-1\0\0'"$esc"'" >&3
    head -c 8 <&3 > /tmp/xhold.'$i'
    exec sleep 600' < /dev/null > /dev/null 2>&1 &
done
sleep 600
`

// TestSSHX11EndsWithConnection: X clients that neither read nor close
// keep their connections to the display open; when the SSH connection
// ends, the agent closes its side, so its fds and goroutines return to
// their baseline.
func TestSSHX11EndsWithConnection(t *testing.T) {
	s := startSSH(t, Options{})
	x := startXvfb(t)
	if err := os.WriteFile(s.SandboxPath("/tmp/xhold.sh"), []byte(xholdScript), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _ = s.sshX(t, x, []string{"-Y"}, "true") // warm up: first-connection allocations
	time.Sleep(500 * time.Millisecond)
	baseFD, baseG := sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)

	const n = 5
	cmd := exec.Command("ssh", append(append(s.SSHArgs(s.key.Private), "-Y"), s.SSHDest(), fmt.Sprintf("bash /tmp/xhold.sh %d", n))...)
	cmd.Env = x.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	defer func() { _ = cmd.Process.Kill(); <-done }()
	// Each client got the X server's first 8 bytes: 1 is Success.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, _ := s.Exec("sh", "-c", "for f in /tmp/xhold.[0-9]*; do od -An -tu1 -N1 $f; done | grep -c '^ *1$'")
		if strings.TrimSpace(out) == strconv.Itoa(n) {
			break
		}
		if time.Now().After(deadline) {
			o, _ := s.Exec("sh", "-c", "od -c /tmp/xhold.[0-9]*")
			t.Fatalf("%d X clients not answered by the X server within 20 s:\n%s\n%s", n, out, o)
		}
	}
	_ = cmd.Process.Kill() // the SSH connection ends with its X connections open
	<-done
	var fd, g int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		fd, g = sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)
		if fd <= baseFD+2 && g <= baseG+6 {
			return
		}
	}
	t.Fatalf("X11 relays outlived their SSH connection: fds %d (baseline %d), goroutines %d (baseline %d) after %d X connections",
		fd, baseFD, g, baseG, n)
}
