package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLaunchRefusalsAcrossDoors drives the same bad commands through every
// door that starts a user's command (PTY create, process start, run, SSH
// exec) and checks that each refuses them alike: one launcher, one code,
// one wording (issue 12, part 1). SSH exec goes through the user's shell
// as with OpenSSH, so there the wording comes on stderr with the shell's
// exit status (127 not found, 126 not executable); a working dir and a
// user are not things an SSH client picks, so those rows are HTTP only.
func TestLaunchRefusalsAcrossDoors(t *testing.T) {
	s := startSSH(t, Options{})
	if out, err := s.Exec("sh", "-c", "grep '^tl-user:.*/bash$' /etc/passwd"); err != nil {
		t.Fatalf("tl-user's shell is not bash (the SSH rows expect its wording): %v %s", err, out)
	}
	if out, err := s.Exec("sh", "-c", "printf '#!/no/such/interp\\n' > /tmp/tl-noint.sh && chmod 755 /tmp/tl-noint.sh"); err != nil {
		t.Fatalf("script: %v %s", err, out)
	}
	cases := []struct {
		name   string
		body   map[string]any
		code   string
		words  string
		sshCmd string // "" when SSH has no such door
		exit   int
	}{
		{"missing command", map[string]any{"command": "tl-no-such-cmd"}, "COMMAND_NOT_FOUND", "tl-no-such-cmd: command not found", "tl-no-such-cmd", 127},
		{"not executable", map[string]any{"command": "/etc/passwd"}, "NOT_EXECUTABLE", "/etc/passwd: Permission denied", "/etc/passwd", 126},
		// Found, but its #! interpreter is not: known only at exec, after
		// the PTY exists; still the launcher's words alone (SSH: bash's).
		{"missing interpreter", map[string]any{"command": "/tmp/tl-noint.sh"}, "COMMAND_NOT_FOUND", "/tmp/tl-noint.sh: command not found (its #! interpreter is missing)", "", 0},
		{"bad working dir", map[string]any{"command": "true", "working_dir": "/no/such/dir"}, "INVALID_WORKING_DIR", "working directory /no/such/dir: no such file or directory", "", 0},
		{"unknown user", map[string]any{"command": "true", "user": "nobody-here"}, "UNKNOWN_USER", "unknown user: nobody-here", "", 0},
	}
	doors := []string{"/api/v1/pty", "/api/v1/processes", "/api/v1/processes/run"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, door := range doors {
				status, code, msg := launchRefusal(t, s.System, door, c.body)
				// The wording opens the message: no door adds its own.
				if status != 400 || code != c.code || !strings.HasPrefix(msg, c.words) {
					t.Errorf("%s: %d %s %q; want 400 %s with %q", door, status, code, msg, c.code, c.words)
				}
			}
			if c.sshCmd == "" {
				return
			}
			out, exit := s.ssh(t, "", c.sshCmd)
			if exit != c.exit || !strings.Contains(out, c.words) {
				t.Errorf("ssh exec %s: exit %d, %q; want %d with %q", c.sshCmd, exit, out, c.exit, c.words)
			}
		})
	}
	// A user whose home does not exist (nobody: /nonexistent) starts in /,
	// as with su, sshd and docker, on every door.
	t.Run("home missing starts in /", func(t *testing.T) {
		body := map[string]any{"command": "pwd", "user": "nobody"}
		if r := run(t, s.System, body); len(r.stdout) != 1 || r.stdout[0] != "/" {
			t.Errorf("run as nobody: stdout %q, end %v; want /", r.stdout, r.end)
		}
		for _, door := range doors[:2] {
			if status, code, msg := launchRefusal(t, s.System, door, body); status != 201 {
				t.Errorf("%s as nobody: %d %s %s; want 201", door, status, code, msg)
			}
		}
	})
}

// launchRefusal posts body to path and returns the status and, for an
// error, its code and message.
func launchRefusal(t *testing.T, s *System, path string, body any) (int, string, string) {
	t.Helper()
	data, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req := s.Request(ctx, "POST", path, bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct{ Error, Code string }
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e.Code, e.Error
}
