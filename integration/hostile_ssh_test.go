package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
