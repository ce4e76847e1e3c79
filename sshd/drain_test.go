package sshd

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/leakcheck"
	"github.com/tensorlake/tl-agent/launch"
)

// Without a PTY the session lasts until every writer of the pipes has
// closed them, as with OpenSSH: a background job's later output arrives,
// before exit-status.
func TestBackgroundOutputKeepsSession(t *testing.T) {
	c := dial(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errb
	if err := sess.Run("(sleep 1; echo late; echo late-err >&2) & echo first; exit 4"); err != nil {
		if ee, ok := err.(*gossh.ExitError); !ok || ee.ExitStatus() != 4 {
			t.Fatalf("err %v, want exit 4", err)
		}
	}
	if out.String() != "first\nlate\n" || errb.String() != "late-err\n" {
		t.Fatalf("stdout %q stderr %q", out.String(), errb.String())
	}
}

// With a PTY the session ends at the shell's exit once the terminal is
// drained, as with OpenSSH, even while a process that left the session
// (setsid) still holds the terminal.
func TestPTYEndsAtShellExit(t *testing.T) {
	c := dial(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	sess.Stdout = &out
	// The shell waits until the process has its own session (else the
	// terminal's hang-up at the shell's exit could kill it first).
	pidFile := filepath.Join(t.TempDir(), "pid")
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	cmd := "setsid sh -c 'echo $$ > " + pidFile + ".tmp; mv " + pidFile + ".tmp " + pidFile + "; exec sleep 30' & " +
		"for i in $(seq 1000); do [ -e " + pidFile + " ] && break; sleep 0.01; done; echo x"
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(out.String(), "x") {
			t.Fatalf("err %v, output %q", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the session outlived its shell, held by a process of another session")
	}
}

// A client that closes the session while a background job still writes
// ends it: the slot is given back with the connection still up, and after
// Close nothing of the session is left.
func TestClientLeavesWhileJobWrites(t *testing.T) { jobWritesAtEnd(t, false) }

// The server's Close ends such a session too, and leaves nothing of it.
func TestCloseWhileJobWrites(t *testing.T) { jobWritesAtEnd(t, true) }

func jobWritesAtEnd(t *testing.T, serverClose bool) {
	u := me(t)
	base := leakcheck.Take(t)
	s, reaper, c, b := serveUncleaned(t, u)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The job dies of SIGPIPE at its first write after the session ends.
	if err := sess.Start("(for i in $(seq 200); do sleep 0.05; echo tick; done) & echo first"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(stdout, buf); err != nil || string(buf) != "first\n" {
		t.Fatalf("first: %q %v", buf, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	if serverClose {
		s.Close()
	}
	_ = sess.Close()
	for deadline := time.Now().Add(10 * time.Second); len(s.slots) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the session still holds its slot after the client closed it")
		}
	}
	c.Close()
	s.Close()
	reaper.Close()
	b.Close()
	base.Check(t)
}

// The PTY drain needs no timer when nothing else holds the terminal:
// hungUp tells the two cases apart.
func TestHungUp(t *testing.T) {
	master, slave, err := launch.OpenPTY(launch.Size{Rows: 24, Cols: 80}, me(t))
	if err != nil {
		t.Skip(err)
	}
	defer master.Close()
	if hungUp(master) {
		t.Fatal("hung up while the slave is open")
	}
	if _, err := slave.Write([]byte("last words\n")); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	if !hungUp(master) {
		t.Fatal("not hung up after the slave's last close")
	}
	b, err := io.ReadAll(master) // to EIO
	if !strings.Contains(string(b), "last words") {
		t.Fatalf("output before EIO: %q (%v)", b, err)
	}
}
