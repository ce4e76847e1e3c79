package process

import (
	"encoding/json"
	"strings"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/launch"
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

// launchRefused maps the launcher's refusals (and a fork the kernel
// refuses for now) to the one set of codes the PTY API shares
// (launch.APIError, docs/processes.md); nil for any other failure.
func launchRefused(err error) error {
	if _, _, ok := launch.APIError(err); ok {
		return err
	}
	return nil
}

// spec is a validated, resolved start request: everything needed to start
// the process again (restarts reuse it).
type spec struct {
	command    string
	args       []string
	path       string // resolved executable
	dir        string
	env        []string // without the cookie
	attr       *syscall.SysProcAttr
	user       *identity.User
	stdinPipe  bool
	stdoutKeep bool
	stderrKeep bool
	// startLog, when set, is the logger of the request that asked for
	// this start, with its ids. The first start takes it (startWith);
	// later starts of the same spec, a supervisor's restarts, belong to
	// no request and log with the table's.
	startLog *zerolog.Logger
}

// prepare validates req and resolves its user (defaultUser when absent,
// if not nil), directory and executable.
func prepare(req *StartRequest, defaultUser *identity.User) (*spec, error) {
	if req.Command == "" {
		return nil, refuse(ErrInvalid, "command is required")
	}
	if strings.ContainsRune(req.Command, 0) {
		return nil, refuse(ErrInvalid, "command contains a NUL byte")
	}
	for _, a := range req.Args {
		if strings.ContainsRune(a, 0) {
			return nil, refuse(ErrInvalid, "an argument contains a NUL byte")
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
	s.user = defaultUser
	if req.User != nil && !req.User.IsZero() || s.user == nil {
		var us identity.Spec
		if req.User != nil {
			us = req.User.Spec
		}
		if s.user, err = launch.Resolve(us); err != nil {
			return nil, launchRefused(err)
		}
	}
	// The launcher owns the PATH, directory and exec rules; restarts reuse
	// what it resolved.
	c, err := launch.Build(launch.Spec{
		User: s.user, Argv: append([]string{req.Command}, req.Args...),
		Dir: req.WorkingDir, Env: req.Env, Group: launch.NewGroup,
	})
	if err != nil {
		if ae := launchRefused(err); ae != nil {
			return nil, ae
		}
		return nil, err
	}
	s.path, s.dir, s.env, s.attr = c.Cmd.Path, c.Cmd.Dir, c.Cmd.Env, c.Cmd.SysProcAttr
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
