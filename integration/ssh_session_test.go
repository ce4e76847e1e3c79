package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestSSHBackgroundOutput: as with OpenSSH's sshd, a session without a
// PTY lasts until every writer of its stdout and stderr has closed, so a
// background job's later output arrives; a job with its output redirected
// lets the session end at once; a client that leaves while such a job
// lives leaves nothing behind in the agent.
func TestSSHBackgroundOutput(t *testing.T) {
	s := startSSH(t, Options{})

	t.Run("late output delivered", func(t *testing.T) {
		out, code := s.ssh(t, "", "(sleep 2; echo late; echo late-err >&2) & echo first")
		if code != 0 || out != "first\nlate\nlate-err\n" && out != "first\nlate-err\nlate\n" {
			t.Fatalf("exit %d, output %q, want first, late and late-err, exit 0", code, out)
		}
	})
	t.Run("redirected job does not hold the session", func(t *testing.T) {
		out, code := s.sshBounded(t, 25*time.Second, nil, "nohup sleep 30 >/dev/null 2>&1 & echo x")
		if code != 0 || out != "x\n" {
			t.Fatalf("exit %d, output %q, want x, exit 0", code, out)
		}
	})
	t.Run("pty ends with the shell", func(t *testing.T) {
		// With a PTY, OpenSSH ends at the shell's exit once the terminal
		// is drained, even while another session holds the terminal.
		// The shell waits until that process has left its session.
		out, code := s.sshBounded(t, 25*time.Second, []string{"-tt"},
			"setsid sh -c 'touch /tmp/bg-pty; exec sleep 30' & for i in $(seq 1000); do [ -e /tmp/bg-pty ] && break; sleep 0.01; done; echo x")
		if code != 0 || !strings.Contains(out, "x") {
			t.Fatalf("exit %d, output %q, want x, exit 0", code, out)
		}
	})
	t.Run("client leaves while a job writes", func(t *testing.T) {
		_, _ = s.ssh(t, "", "true") // warm up: first-connection allocations
		time.Sleep(500 * time.Millisecond)
		baseFD, baseG := sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)
		const n = 5
		var cmds []*exec.Cmd
		for i := 0; i < n; i++ {
			cmd, out := s.background(t, s.SSHDest(), "(for i in $(seq 300); do sleep 0.1; echo tick; done) & echo first")
			for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "first"); time.Sleep(50 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("no output from the session: %q", out.String())
				}
			}
			cmds = append(cmds, cmd)
		}
		for _, c := range cmds {
			_ = c.Process.Kill()
		}
		var fd, g int
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			fd, g = sshFdCount(t, s.AgentPid()), sshGoroutines(t, s.System)
			if fd <= baseFD+3 && g <= baseG+5 {
				return
			}
		}
		t.Fatalf("sessions outlived their clients: fds %d (baseline %d), goroutines %d (baseline %d) after %d clients left",
			fd, baseFD, g, baseG, n)
	})
}

// sshBounded runs ssh with opts and the command, killed after d: the
// output and exit code, failing the test if it had to be killed.
func (s *sshSystem) sshBounded(t *testing.T, d time.Duration, opts []string, command string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	full := append(append(s.SSHArgs(s.key.Private), opts...), s.SSHDest(), command)
	cmd := exec.CommandContext(ctx, "ssh", full...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("ssh %q still running after %s: %q", command, d, out)
	}
	return string(out), sshExitCode(t, err)
}

// TestSSHSFTPOwnerNames: OpenSSH's sftp formats `ls -l` of single files
// itself, with names from users-groups-by-id@openssh.com (without the
// extension it prints the numeric ids).
func TestSSHSFTPOwnerNames(t *testing.T) {
	s := startSSH(t, Options{})
	if out, code := s.ssh(t, "", "echo x > owned.txt && mkdir -p d && echo y > d/f"); code != 0 {
		t.Fatalf("make files: exit %d: %s", code, out)
	}
	full := append(append([]string{"-P", s.SSHPort()}, s.SSHOpts(s.key.Private)...), "-b", "-", s.SSHDest())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sftp", full...)
	cmd.Stdin = strings.NewReader("ls -l owned.txt\nls -l d\nls -l /etc/passwd\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sftp: %v:\n%s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "-") {
			lines = append(lines, strings.Fields(l)[2]+" "+strings.Fields(l)[3])
		}
	}
	want := []string{"tl-user tl-user", "tl-user tl-user", "root root"}
	if strings.Join(lines, ",") != strings.Join(want, ",") {
		t.Fatalf("owners %q, want %q:\n%s", lines, want, out)
	}
}
