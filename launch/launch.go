// Package launch is the one owner of "start a user's command": it turns
// {user, argv, working dir, environment, optional terminal, process group
// or session} into a ready *exec.Cmd, and says why one cannot start with
// a few sentinel errors that every door (PTY, process, run, SSH, the main
// command, the sftp-server re-exec) maps the same way.
//
// It is its own package rather than part of identity: identity says who a
// process runs as and is needed by code that starts nothing (the files
// API, SSH forwards' filesystem credentials); launch adds how a command is
// found and started (PATH, exec checks, the PTY opener) and what it costs
// (creack/pty, os/exec). launch imports identity, never the reverse, and
// it waits for nothing itself: Start runs the command through the
// incubator (incubator.go) with the caller's start, the reaper's, the one
// owner of waiting.
//
// The rules, the same for every door:
//
//   - A name without '/' is searched in the PATH of the command's own
//     environment (not the agent's). Only absolute entries count: an empty
//     entry, ".", or a relative one is skipped, so what a name runs never
//     depends on the working directory. A shell reads an empty entry as
//     "." (POSIX), but OpenSSH, su and login never set one, and Go's
//     os/exec refuses such results (exec.ErrDot) for the same reason: a
//     file planted in a folder the user cd's into must not shadow a
//     command. A command in the working directory is run as ./cmd.
//   - A name with '/' is a path, relative to the working directory.
//   - "Not executable" means: not a regular file, no execute bit at all,
//     or the kernel refused to run it for the user (EACCES, ENOEXEC).
//   - No working dir asked: the user's home, or / when the home does not
//     exist (as su, sshd and docker do for uid 65534's /nonexistent).
//     An asked one must exist and be a folder; one the user cannot enter
//     is told apart from a command it cannot run when the exec fails.
//   - Which variables a caller may set is the door's choice: SSH refuses
//     the LoginVar ones in its env requests; the HTTP APIs refuse none,
//     as the SDKs set PATH on purpose. Build refuses only malformed ones.
package launch

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/threads"
)

// Why a command cannot start. Errors from Build and Classify wrap exactly
// one of these; APIError gives each its one wire code.
var (
	ErrNotFound           = errors.New("command not found")
	ErrNotExecutable      = errors.New("not executable")
	ErrBadDir             = errors.New("bad working directory")
	ErrBadEnv             = errors.New("bad environment")
	ErrUnknownUser        = identity.ErrUnknownUser
	ErrResourcesExhausted = errors.New("the sandbox is out of resources for now")
)

// Group is how the command is placed among processes, so kills and
// hang-ups reach its whole tree.
type Group int

const (
	// NewGroup: its own process group (commands on pipes).
	NewGroup Group = iota
	// NewSession: its own session, with its terminal (Spec.Terminal) as
	// the controlling one, so job control and SIGHUP on hang-up work.
	NewSession
)

// Spec is a request to start a command.
type Spec struct {
	User *identity.User
	// Argv is the command and its arguments; Argv[0] is looked up by the
	// PATH rule unless Exe is set.
	Argv []string
	// Exe, when set, is the program to run, taken as is: a login shell
	// whose argv[0] is "-bash", or the agent's own binary.
	Exe string
	// Dir is the asked working directory ("" for the default, relative
	// to the home).
	Dir string
	// Env is layered over the login environment (identity.User.Env), or
	// over Base when it is set.
	Env  map[string]string
	Base []string
	// Term is TERM when Env does not set it ("" for none).
	Term string
	// Terminal, when set, is the size of a new PTY given to the command
	// as its stdin, stdout and stderr (and Group is NewSession).
	Terminal *Size
	Group    Group
}

// Command is a ready command: Cmd gets its stdio from the caller (unless
// it has a terminal) and is started with Start (the reaper waits for it).
type Command struct {
	Cmd *exec.Cmd
	// Master is the terminal's master side (non-blocking, served by the
	// runtime poller), nil without a terminal.
	Master *os.File
	// TTY is the terminal's slave name (SSH_TTY), "" without a terminal.
	TTY   string
	slave *os.File
	user  *identity.User
}

// Error is a refusal: what (a command, a folder, a variable) and why, in
// words a shell user knows ("x: command not found").
type Error struct {
	Kind   error // one of the sentinels
	What   string
	Reason string
	Err    error // the underlying cause, if any
}

func (e *Error) Error() string {
	switch e.Kind {
	case ErrNotFound:
		if e.Reason != "" {
			return e.What + ": command not found (" + e.Reason + ")"
		}
		return e.What + ": command not found"
	case ErrBadDir:
		return "working directory " + e.What + ": " + e.Reason
	case ErrBadEnv:
		return fmt.Sprintf("environment variable %q: %s", e.What, e.Reason)
	case ErrResourcesExhausted:
		return "start " + e.What + ": the sandbox is out of resources for now (" + e.Reason + "); retry later"
	}
	return e.What + ": " + e.Reason
}

// Unwrap gives the sentinel and the cause (so httpx.IsExhausted still
// sees the errno).
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

// Build validates s and returns the ready command, or an error wrapping
// one sentinel. A command that cannot start is refused here, before a
// terminal or a session exists.
func Build(s Spec) (*Command, error) {
	if s.User == nil {
		return nil, &Error{Kind: ErrUnknownUser, What: "user", Reason: "none given"}
	}
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return nil, &Error{Kind: ErrNotFound, What: `""`}
	}
	cmd, err := resolve(s)
	if err != nil {
		return nil, err
	}
	c := &Command{Cmd: cmd, user: s.User}
	attr := &syscall.SysProcAttr{Credential: s.User.Credential()}
	cmd.SysProcAttr = attr
	if s.Terminal == nil {
		attr.Setpgid = s.Group == NewGroup
		attr.Setsid = s.Group == NewSession
		return c, nil
	}
	master, slave, err := OpenPTY(*s.Terminal, s.User)
	if err != nil {
		return nil, Classify(s.Argv[0], "", s.User, err)
	}
	c.Master, c.slave, c.TTY = master, slave, slave.Name()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
	return c, nil
}

// resolve does Build's file checks: environment, directory, executable.
func resolve(s Spec) (*exec.Cmd, error) {
	// Stats block: bounded like every request's file syscalls
	// (internal/threads).
	threads.Blocking.Enter()
	defer threads.Blocking.Leave()
	for k, v := range s.Env {
		switch {
		case k == "" || strings.ContainsAny(k, "=\x00"):
			return nil, &Error{Kind: ErrBadEnv, What: k, Reason: "a name must be non-empty, without '=' or NUL"}
		case strings.ContainsRune(v, 0):
			return nil, &Error{Kind: ErrBadEnv, What: k, Reason: "the value holds a NUL byte"}
		}
	}
	env := environ(s)
	dir, err := workDir(s.User, s.Dir)
	if err != nil {
		return nil, err
	}
	path := s.Exe
	if path == "" {
		if path, err = lookPath(s.Argv[0], dir, envValue(env, "PATH")); err != nil {
			return nil, err
		}
	}
	return &exec.Cmd{Path: path, Args: append([]string{}, s.Argv...), Env: env, Dir: dir}, nil
}

// LoginVar reports the variables that decide who a program runs as or
// what it loads: a door whose clients should not choose those (SSH, as
// OpenSSH's AcceptEnv defaults) refuses them.
func LoginVar(k string) bool {
	switch k {
	case "HOME", "USER", "LOGNAME", "SHELL", "PATH", "MAIL", "SSH_AUTH_SOCK", "IFS", "BASH_ENV", "ENV":
		return true
	}
	return strings.HasPrefix(k, "LD_")
}

// sandboxEnv is the platform's environment for every new process
// (SetSandboxEnv), below each request's own variables.
var sandboxEnv atomic.Pointer[map[string]string]

// SetSandboxEnv sets variables every process started from now on gets (a
// resume's env, docs/lifecycle.md), under the request's own Env. Running
// processes keep theirs: an environment is fixed at exec. Login
// variables (LoginVar) are the caller's to refuse.
func SetSandboxEnv(env map[string]string) {
	m := make(map[string]string, len(env))
	for k, v := range env {
		m[k] = v
	}
	sandboxEnv.Store(&m)
}

// SandboxEnv is a copy of what SetSandboxEnv set (nil: nothing), for a
// live upgrade to hand over.
func SandboxEnv() map[string]string {
	p := sandboxEnv.Load()
	if p == nil {
		return nil
	}
	m := make(map[string]string, len(*p))
	for k, v := range *p {
		m[k] = v
	}
	return m
}

// withSandboxEnv is s.Env over the sandbox's environment.
func withSandboxEnv(s Spec) Spec {
	p := sandboxEnv.Load()
	if p == nil || len(*p) == 0 {
		return s
	}
	env := make(map[string]string, len(*p)+len(s.Env))
	for k, v := range *p {
		env[k] = v
	}
	for k, v := range s.Env {
		env[k] = v
	}
	s.Env = env
	return s
}

func environ(s Spec) []string {
	s = withSandboxEnv(s)
	if s.Base == nil {
		term := s.Term
		if t, ok := s.Env["TERM"]; ok {
			term = t
		}
		return s.User.Env(term, s.Env)
	}
	env := make([]string, 0, len(s.Base)+len(s.Env)+1)
	for _, kv := range s.Base {
		k, _, _ := strings.Cut(kv, "=")
		if _, over := s.Env[k]; !over && !(k == "TERM" && s.Term != "") {
			env = append(env, kv)
		}
	}
	if _, ok := s.Env["TERM"]; !ok && s.Term != "" {
		env = append(env, "TERM="+s.Term)
	}
	for k, v := range s.Env {
		env = append(env, k+"="+v)
	}
	return env
}

// workDir applies the working-directory rule (package doc).
func workDir(u *identity.User, asked string) (string, error) {
	if asked == "" {
		if fi, err := os.Stat(u.Home); err == nil && fi.IsDir() {
			return u.Home, nil
		}
		return "/", nil
	}
	dir := asked
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(u.Home, dir)
	}
	fi, err := os.Stat(dir)
	switch {
	case err != nil:
		return "", &Error{Kind: ErrBadDir, What: dir, Reason: reason(err), Err: err}
	case !fi.IsDir():
		return "", &Error{Kind: ErrBadDir, What: dir, Reason: "not a directory"}
	}
	return dir, nil
}

// reason is the errno's words without the "stat /x:" prefix.
func reason(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// lookPath applies the PATH rule (package doc).
func lookPath(name, dir, path string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return p, checkExecutable(p, name)
	}
	for _, d := range filepath.SplitList(path) {
		if !filepath.IsAbs(d) {
			continue
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &Error{Kind: ErrNotFound, What: name}
}

func checkExecutable(p, name string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return &Error{Kind: ErrNotFound, What: name, Err: err}
	case err != nil:
		return &Error{Kind: ErrNotExecutable, What: name, Reason: reason(err), Err: err}
	case fi.IsDir():
		return &Error{Kind: ErrNotExecutable, What: name, Reason: "Is a directory"}
	case !fi.Mode().IsRegular():
		return &Error{Kind: ErrNotExecutable, What: name, Reason: "not a regular file"}
	case fi.Mode()&0o111 == 0:
		return &Error{Kind: ErrNotExecutable, What: name, Reason: "Permission denied"}
	}
	return nil
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// Start starts c through the incubator with start (the reaper's Start;
// see StartCmd) and returns its process, or the refusal classified (see
// Classify). It then closes the agent's copy of the terminal's slave
// (which would keep the terminal open after every process of the session
// has exited) and, when the start failed, the master.
func Start[P Started](c *Command, start func(*exec.Cmd) (P, error)) (P, error) {
	p, err := StartCmd(c.Cmd, start)
	return p, c.started(err)
}

func (c *Command) started(err error) error {
	if c.slave != nil {
		c.slave.Close()
		c.slave = nil
	}
	if err == nil {
		return nil
	}
	if c.Master != nil {
		c.Master.Close()
	}
	return Classify(c.Cmd.Args[0], c.Cmd.Dir, c.user, err)
}

// Close releases a command that will not be started.
func (c *Command) Close() {
	if c.slave != nil {
		c.slave.Close()
		c.slave = nil
	}
	if c.Master != nil {
		c.Master.Close()
	}
}

// programGone reports whether the program of a failed exec (the path of
// its *fs.PathError) no longer exists.
func programGone(err error) bool {
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path == "" {
		return false
	}
	threads.Blocking.Enter()
	defer threads.Blocking.Leave()
	_, serr := os.Stat(pe.Path)
	return errors.Is(serr, fs.ErrNotExist)
}

// Classify maps a failed fork/exec (or PTY open) of name in dir to a
// sentinel when one applies; other errors are returned as they are.
func Classify(name, dir string, u *identity.User, err error) error {
	switch {
	case err == nil:
		return nil
	case httpx.IsExhausted(err): // fork's EAGAIN past the pids limit, ENOMEM, no fd or PTY left
		return &Error{Kind: ErrResourcesExhausted, What: name, Reason: err.Error(), Err: err}
	case errors.Is(err, fs.ErrPermission) && dir != "" && !canEnter(dir, u):
		// The child's chdir and exec fail alike (EACCES); tell which.
		return &Error{Kind: ErrBadDir, What: dir, Reason: "permission denied for user " + u.Name, Err: err}
	case errors.Is(err, syscall.ENOEXEC):
		return &Error{Kind: ErrNotExecutable, What: name, Reason: "cannot execute binary file: Exec format error (no #! line?)", Err: err}
	case errors.Is(err, fs.ErrPermission):
		return &Error{Kind: ErrNotExecutable, What: name, Reason: "Permission denied for user " + u.Name, Err: err}
	case errors.Is(err, fs.ErrNotExist) && programGone(err):
		// Found before the fork, gone since (a restart after it was
		// removed).
		return &Error{Kind: ErrNotFound, What: name, Err: err}
	case errors.Is(err, fs.ErrNotExist):
		// Found before the fork and still there: its #! interpreter is
		// what is missing.
		return &Error{Kind: ErrNotFound, What: name, Reason: "its #! interpreter is missing", Err: err}
	}
	return err
}
