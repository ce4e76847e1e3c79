package pty

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/threads"
)

// Why a command could not start; the API maps each to a 400 with its code.
var (
	ErrCommandNotFound = errors.New("command not found")
	ErrNotExecutable   = errors.New("command is not executable")
	ErrBadWorkingDir   = errors.New("bad working directory")
	ErrBadEnv          = errors.New("bad environment")
)

// startSpec is a validated request to start a command on a new PTY.
type startSpec struct {
	command    string
	args       []string
	env        map[string]string
	workingDir string
	user       *identity.User
	rows, cols uint16
}

// defaultTerm is TERM when the request does not set one.
const defaultTerm = "xterm-256color"

// prepare resolves the environment, directory and executable of sp, so that
// a command that cannot start is refused before a session exists.
func prepare(sp startSpec) (*exec.Cmd, error) {
	// Stats block: bounded like every request's file syscalls
	// (internal/threads).
	threads.Blocking.Enter()
	defer threads.Blocking.Leave()
	for k, v := range sp.env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("%w: variable %q", ErrBadEnv, k)
		}
	}
	term := sp.env["TERM"]
	if term == "" {
		term = defaultTerm
	}
	env := sp.user.Env(term, sp.env)
	dir, err := sp.user.Dir(sp.workingDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadWorkingDir, err)
	}
	path, err := lookPath(sp.command, envValue(env, "PATH"), dir)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path: path,
		Args: append([]string{sp.command}, sp.args...),
		Env:  env,
		Dir:  dir,
	}
	return cmd, nil
}

// lookPath finds command as the session's shell would: names with a slash
// are taken relative to dir, others are searched in the session's PATH (not
// the agent's, which exec.LookPath would use).
func lookPath(command, pathEnv, dir string) (string, error) {
	if command == "" {
		return "", fmt.Errorf("%w: empty command", ErrCommandNotFound)
	}
	if strings.Contains(command, "/") {
		p := command
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		return p, checkExecutable(p, command)
	}
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, command)
		if err := checkExecutable(p, command); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s (PATH=%s)", ErrCommandNotFound, command, pathEnv)
}

func checkExecutable(p, name string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s", ErrCommandNotFound, name)
	case err != nil:
		return fmt.Errorf("%w: %s: %v", ErrNotExecutable, name, err)
	case fi.IsDir():
		return fmt.Errorf("%w: %s is a directory", ErrNotExecutable, name)
	case fi.Mode()&0o111 == 0:
		return fmt.Errorf("%w: %s has no execute permission", ErrNotExecutable, name)
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

// openPTY opens a PTY pair with the master switched to non-blocking mode
// and wrapped so the runtime poller serves it. creack/pty's Open leaves the
// master blocking (its ioctls go through File.Fd, creack/pty 162): a
// blocking Read then pins a thread, ignores deadlines and is not woken by
// Close. With the poller, the reader needs no buffer while idle, the exit
// drain can use a deadline, and Close unblocks it.
// The slave is given to u, as OpenSSH does, so u can open its own
// terminal again (`echo hi > $(tty)`).
func openPTY(rows, cols uint16, u *identity.User) (master, slave *os.File, err error) {
	m, s, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	if err := u.OwnTerminal(s); err != nil {
		m.Close()
		s.Close()
		return nil, nil, err
	}
	if err := pty.Setsize(m, &pty.Winsize{Rows: rows, Cols: cols}); err != nil {
		m.Close()
		s.Close()
		return nil, nil, fmt.Errorf("set pty size: %w", err)
	}
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	m.Close()
	if err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		s.Close()
		return nil, nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), s, nil
}

// sysProcAttr puts the child in its own session with the PTY as its
// controlling terminal (so job control and SIGHUP on hang-up work) and
// drops to the session's user.
func sysProcAttr(u *identity.User) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: u.Credential()}
}

// setWinsize resizes the terminal through the poller-safe RawConn, never
// File.Fd (which would put the master back in blocking mode).
func setWinsize(f *os.File, rows, cols uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
	if err != nil {
		return err
	}
	return ierr
}
