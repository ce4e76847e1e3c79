package process

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/threads"
)

// StartRequest is the body of POST /api/v1/processes and /run.
type StartRequest struct {
	Command     string            `json:"command"`
	Args        []string          `json:"args"`
	Env         map[string]string `json:"env"`
	WorkingDir  string            `json:"working_dir"`
	User        *UserSpec         `json:"user"`
	StdinMode   string            `json:"stdin_mode"`
	StdoutMode  string            `json:"stdout_mode"`
	StderrMode  string            `json:"stderr_mode"`
	Name        *string           `json:"name"`
	Restart     *RestartPolicy    `json:"restart"`
	HealthCheck *HealthCheck      `json:"health_check"`
	Timeout     float64           `json:"timeout"` // seconds; run only
}

// UserSpec is the `user` field: every form identity.Spec takes, plus the
// SDKs' object form with a name ({"name": "tl-user"}).
type UserSpec struct{ identity.Spec }

// UnmarshalJSON accepts {"name": ...} besides identity.Spec's forms.
func (u *UserSpec) UnmarshalJSON(b []byte) error {
	var obj struct {
		Name *string `json:"name"`
		UID  *uint32 `json:"uid"`
		GID  *uint32 `json:"gid"`
	}
	if json.Unmarshal(b, &obj) == nil && obj.Name != nil && obj.UID == nil {
		u.Spec = identity.Spec{Name: *obj.Name}
		return nil
	}
	return u.Spec.UnmarshalJSON(b)
}

// Error codes answered by the process API besides the spec's.
const (
	codeInvalid        = "INVALID_REQUEST"
	codeUnknownUser    = "UNKNOWN_USER"
	codeBadDir         = "INVALID_WORKING_DIR"
	codeNotFoundCmd    = "COMMAND_NOT_FOUND"
	codeNotExecutable  = "NOT_EXECUTABLE"
	codeBadName        = "INVALID_NAME"
	codeNameInUse      = "NAME_IN_USE"
	codeBadSignal      = "INVALID_SIGNAL"
	codeNotRunning     = "PROCESS_NOT_RUNNING"
	codeNotFound       = "NOT_FOUND"
	codeStdin          = "STDIN_NOT_WRITABLE"
	codeStdinBlocked   = "STDIN_BLOCKED"
	codeStartFailed    = "START_FAILED"
	codeTooMany        = "TOO_MANY_PROCESSES"
	codeShuttingDown   = "SHUTTING_DOWN"
	codeStdinTooLarge  = "STDIN_TOO_LARGE"
	codeStdinSlow      = "STDIN_TIMEOUT"
	codeBadHealthPath  = "INVALID_HEALTH_CHECK"
	codeClientTooSlow  = "CLIENT_TOO_SLOW"
	codeTooManyFollow  = "TOO_MANY_FOLLOWERS"
	codeInvalidRestart = "INVALID_RESTART"
	codeRestarting     = "RESTART_IN_PROGRESS"
	codeExhausted      = httpx.CodeResourcesExhausted
)

// spec is a validated, resolved start request: everything needed to start
// the process again (restarts reuse it).
type spec struct {
	command    string
	args       []string
	path       string // resolved executable
	dir        string
	env        []string // without the cookie
	user       *identity.User
	stdinPipe  bool
	stdoutKeep bool
	stderrKeep bool
}

// prepare validates req and resolves its user (defaultUser when absent),
// directory and executable.
func prepare(req *StartRequest, defaultUser string) (*spec, error) {
	// User lookups and stats block: bounded like every request's file
	// syscalls (internal/threads).
	threads.Blocking.Enter()
	defer threads.Blocking.Leave()
	if req.Command == "" {
		return nil, badRequest(codeInvalid, "command is required")
	}
	if strings.ContainsRune(req.Command, 0) {
		return nil, badRequest(codeInvalid, "command contains a NUL byte")
	}
	for _, a := range req.Args {
		if strings.ContainsRune(a, 0) {
			return nil, badRequest(codeInvalid, "an argument contains a NUL byte")
		}
	}
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, badRequest(codeInvalid, "bad environment variable %q", k)
		}
	}
	s := &spec{command: req.Command, args: append([]string{}, req.Args...)}
	var err error
	if s.stdinPipe, err = mode(req.StdinMode, "stdin_mode", "closed", "pipe"); err != nil {
		return nil, err
	}
	discard := false
	if discard, err = mode(req.StdoutMode, "stdout_mode", "capture", "discard"); err != nil {
		return nil, err
	}
	s.stdoutKeep = !discard
	if discard, err = mode(req.StderrMode, "stderr_mode", "capture", "discard"); err != nil {
		return nil, err
	}
	s.stderrKeep = !discard
	us := identity.Spec{Name: defaultUser}
	if req.User != nil && !req.User.IsZero() {
		us = req.User.Spec
	}
	if s.user, err = identity.Resolve(us); err != nil {
		return nil, badRequest(codeUnknownUser, "%v", err)
	}
	if s.dir, err = s.user.Dir(req.WorkingDir); err != nil {
		return nil, badRequest(codeBadDir, "%v", err)
	}
	s.env = s.user.Env("", req.Env)
	if s.path, err = lookPath(req.Command, s.dir, envValue(s.env, "PATH")); err != nil {
		return nil, err
	}
	return s, nil
}

// mode checks an enum field whose first value is the default; it reports
// whether the second value was chosen.
func mode(v, field, def, other string) (bool, error) {
	switch v {
	case "", def:
		return false, nil
	case other:
		return true, nil
	}
	return false, refuse(ErrInvalid, "%s must be %q or %q, not %q", field, def, other, v)
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// lookPath resolves cmd the way a shell would for the process: a name with
// a slash is a path (relative to dir), else it is searched in path. The
// answer says which of "not found" and "not executable" applies.
func lookPath(cmd, dir, path string) (string, error) {
	if strings.Contains(cmd, "/") {
		p := cmd
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return p, checkExecutable(p, cmd)
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			continue
		}
		p := filepath.Join(d, cmd)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", badRequest(codeNotFoundCmd, "command %q not found in PATH", cmd)
}

func checkExecutable(p, cmd string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return badRequest(codeNotFoundCmd, "command %q: no such file", cmd)
	case err != nil:
		return badRequest(codeNotExecutable, "command %q: %v", cmd, err)
	case !fi.Mode().IsRegular():
		return badRequest(codeNotExecutable, "command %q is not a regular file", cmd)
	case fi.Mode()&0o111 == 0:
		return badRequest(codeNotExecutable, "command %q is not executable", cmd)
	}
	return nil
}

// validName applies the spec's rule: anything but empty, all digits, or
// containing '/'. All-digit path segments mean pids.
func validName(n string) error {
	if n == "" || strings.Contains(n, "/") || isDigits(n) || len(n) > 255 {
		return refuse(ErrBadName, "name %q: must be non-empty, not all digits, without '/', at most 255 bytes", n)
	}
	return nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// canEnter reports whether u may search dir and each of its parents by
// their mode bits (ACLs aside). Used only to explain a failed start.
func canEnter(dir string, u *identity.User) bool {
	if u.UID == 0 {
		return true
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return true
		}
		perm := fi.Mode().Perm()
		var bit fs.FileMode = 0o001
		switch {
		case st.Uid == u.UID:
			bit = 0o100
		case st.Gid == u.GID || slices.Contains(u.Groups, st.Gid):
			bit = 0o010
		}
		if perm&bit == 0 {
			return false
		}
		if d == "/" || d == "." {
			return true
		}
	}
}

// maxHealthPath bounds health_check.path.
const maxHealthPath = 2048

// validHealthPath accepts an origin-form request target: it starts with
// '/', so the probe's URL "http://127.0.0.1:<port>" + path always names
// that host ("@example.com/" would make 127.0.0.1:<port> the user info
// and send the probe elsewhere), and holds no spaces or control bytes.
func validHealthPath(path string) error {
	if !strings.HasPrefix(path, "/") || len(path) > maxHealthPath {
		return refuse(ErrBadHealthCheck, "health_check.path must start with / and be at most %d bytes, not %q", maxHealthPath, path)
	}
	for i := 0; i < len(path); i++ {
		if path[i] <= ' ' || path[i] == 0x7f {
			return refuse(ErrBadHealthCheck, "health_check.path must not hold spaces or control characters: %q", path)
		}
	}
	return nil
}
