package launch

import (
	"errors"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/tensorlake/tl-agent/identity"
)

func self(t *testing.T) *identity.User {
	t.Helper()
	me, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	u, err := identity.Lookup(me.Username)
	if err != nil {
		t.Skip(err)
	}
	return u
}

// The PATH rule and the one meaning of "not executable".
func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	plain := filepath.Join(dir, "data")
	_ = os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	_ = os.WriteFile(plain, []byte("x"), 0o644)
	cases := []struct {
		cmd, path, want string
		kind            error
	}{
		{"tool", "/nonexistent:" + dir, exe, nil},
		{"./tool", "", exe, nil},
		{exe, "", exe, nil},
		{"data", dir, "", ErrNotFound}, // not executable: not a PATH match
		{"./data", "", "", ErrNotExecutable},
		{dir, "", "", ErrNotExecutable},
		{"nope", dir, "", ErrNotFound},
		{"./nope", "", "", ErrNotFound},
		{exe + "/x", "", "", ErrNotFound},
		// Only absolute entries count: never the working directory.
		{"tool", ":.:" + filepath.Base(dir), "", ErrNotFound},
	}
	for _, c := range cases {
		got, err := lookPath(c.cmd, dir, c.path)
		if (c.kind == nil) != (err == nil) || (c.kind != nil && !errors.Is(err, c.kind)) || (c.kind == nil && got != c.want) {
			t.Errorf("lookPath(%q, PATH=%q) = %q, %v; want %q %v", c.cmd, c.path, got, err, c.want, c.kind)
		}
	}
}

// One wording per refusal, as a shell user reads it.
func TestWording(t *testing.T) {
	u := self(t)
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "data"), []byte("x"), 0o644)
	cases := []struct {
		spec Spec
		kind error
		msg  string
	}{
		{Spec{User: u, Argv: []string{"tl-no-such-cmd"}}, ErrNotFound, "tl-no-such-cmd: command not found"},
		{Spec{User: u, Argv: []string{"/no/such/x"}}, ErrNotFound, "/no/such/x: command not found"},
		{Spec{User: u, Argv: []string{"./data"}, Dir: dir}, ErrNotExecutable, "./data: Permission denied"},
		{Spec{User: u, Argv: []string{"/"}}, ErrNotExecutable, "/: Is a directory"},
		{Spec{User: u, Argv: []string{"true"}, Dir: "/no/such/dir"}, ErrBadDir, "working directory /no/such/dir: no such file or directory"},
		{Spec{User: u, Argv: []string{"true"}, Dir: filepath.Join(dir, "data")}, ErrBadDir, "working directory " + filepath.Join(dir, "data") + ": not a directory"},
		{Spec{User: u, Argv: []string{"true"}, Env: map[string]string{"A=B": "x"}}, ErrBadEnv, `environment variable "A=B": a name must be non-empty, without '=' or NUL`},
		{Spec{User: u, Argv: []string{"true"}, Env: map[string]string{"A": "x\x00"}}, ErrBadEnv, `environment variable "A": the value holds a NUL byte`},
		{Spec{Argv: []string{"true"}}, ErrUnknownUser, ""},
	}
	for _, c := range cases {
		_, err := Build(c.spec)
		if !errors.Is(err, c.kind) || (c.msg != "" && err.Error() != c.msg) {
			t.Errorf("Build(%v): %v; want %v %q", c.spec.Argv, err, c.kind, c.msg)
		}
	}
}

// No working dir asked: the home, or / when the home does not exist.
func TestWorkDirWithoutHome(t *testing.T) {
	u := *self(t)
	u.Home = filepath.Join(t.TempDir(), "nonexistent")
	c, err := Build(Spec{User: &u, Argv: []string{"true"}})
	if err != nil || c.Cmd.Dir != "/" {
		t.Fatalf("home missing: %v, dir %v; want /", err, c)
	}
	u.Home = t.TempDir()
	if c, err = Build(Spec{User: &u, Argv: []string{"true"}}); err != nil || c.Cmd.Dir != u.Home {
		t.Fatalf("home present: %v %v", c, err)
	}
	// An asked dir is relative to the home and must exist.
	_ = os.Mkdir(filepath.Join(u.Home, "sub"), 0o755)
	if c, err = Build(Spec{User: &u, Argv: []string{"true"}, Dir: "sub"}); err != nil || c.Cmd.Dir != filepath.Join(u.Home, "sub") {
		t.Fatalf("relative dir: %v %v", c, err)
	}
}

// Env layers over the login environment or over Base; TERM from Term
// unless Env sets it; PATH from the command's own environment.
func TestEnviron(t *testing.T) {
	u := self(t)
	c, err := Build(Spec{User: u, Argv: []string{"tool"}, Term: "xterm", Env: map[string]string{"PATH": t.TempDir()}})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("PATH from Env not used: %v %v", c, err)
	}
	c, err = Build(Spec{User: u, Argv: []string{"sh"}, Term: "xterm", Env: map[string]string{"TERM": "dumb"}})
	if err != nil || envValue(c.Cmd.Env, "TERM") != "dumb" || envValue(c.Cmd.Env, "HOME") != u.Home {
		t.Fatalf("login env: %v %q", err, c.Cmd.Env)
	}
	c, err = Build(Spec{User: u, Argv: []string{"sh"}, Base: []string{"PATH=/usr/bin:/bin", "A=1", "B=2"}, Env: map[string]string{"B": "3"}})
	if err != nil || envValue(c.Cmd.Env, "A") != "1" || envValue(c.Cmd.Env, "B") != "3" || len(c.Cmd.Env) != 3 {
		t.Fatalf("base env: %v %q", err, c.Cmd.Env)
	}
	if !c.Cmd.SysProcAttr.Setpgid || c.Cmd.SysProcAttr.Setsid {
		t.Fatalf("NewGroup: %+v", c.Cmd.SysProcAttr)
	}
}

// A resume's environment reaches every later start, under the request's.
func TestSandboxEnv(t *testing.T) {
	u := self(t)
	SetSandboxEnv(map[string]string{"CLONE": "b", "OVER": "platform"})
	defer SetSandboxEnv(nil)
	c, err := Build(Spec{User: u, Argv: []string{"sh"}, Env: map[string]string{"OVER": "request"}})
	if err != nil || envValue(c.Cmd.Env, "CLONE") != "b" || envValue(c.Cmd.Env, "OVER") != "request" || envValue(c.Cmd.Env, "HOME") != u.Home {
		t.Fatalf("sandbox env: %v %q", err, c.Cmd.Env)
	}
	SetSandboxEnv(nil)
	if c, _ = Build(Spec{User: u, Argv: []string{"sh"}}); envValue(c.Cmd.Env, "CLONE") != "" {
		t.Fatalf("cleared sandbox env still set: %q", c.Cmd.Env)
	}
}

// A failed fork/exec maps to the sentinel a user can act on.
func TestClassify(t *testing.T) {
	u := self(t)
	pe := func(e syscall.Errno) error { return &fs.PathError{Op: "fork/exec", Path: "/bin/x", Err: e} }
	cases := []struct {
		err  error
		kind error
		code string
		exit int
	}{
		{pe(syscall.EAGAIN), ErrResourcesExhausted, "RESOURCES_EXHAUSTED", 1},
		{pe(syscall.ENOMEM), ErrResourcesExhausted, "RESOURCES_EXHAUSTED", 1},
		{pe(syscall.EMFILE), ErrResourcesExhausted, "RESOURCES_EXHAUSTED", 1},
		{pe(syscall.ENOEXEC), ErrNotExecutable, "NOT_EXECUTABLE", 126},
		{pe(syscall.EACCES), ErrNotExecutable, "NOT_EXECUTABLE", 126},
		{pe(syscall.ENOENT), ErrNotFound, "COMMAND_NOT_FOUND", 127},
	}
	for _, c := range cases {
		err := Classify("x", "/", u, c.err)
		_, code, _ := APIError(err)
		if !errors.Is(err, c.kind) || code != c.code || ExitStatus(err) != c.exit {
			t.Errorf("%v: %v %s %d; want %v %s %d", c.err, err, code, ExitStatus(err), c.kind, c.code, c.exit)
		}
	}
	// ENOENT from exec: the program vanished since Build, or it is there
	// and its #! interpreter is not. Either way one wording.
	gone := Classify("x", "/", u, &fs.PathError{Op: "fork/exec", Path: "/no/such/x", Err: syscall.ENOENT})
	noInterp := Classify("x", "/", u, &fs.PathError{Op: "fork/exec", Path: "/bin/sh", Err: syscall.ENOENT})
	if gone.Error() != "x: command not found" || noInterp.Error() != "x: command not found (its #! interpreter is missing)" {
		t.Errorf("ENOENT: %q, %q", gone, noInterp)
	}
	if err := Classify("x", "/", u, pe(syscall.EINVAL)); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("EINVAL: %v, want it as it is", err)
	}
	if _, _, ok := APIError(pe(syscall.EINVAL)); ok {
		t.Error("EINVAL mapped to a launcher code")
	}
	if _, code, _ := APIError(&Error{Kind: ErrUnknownUser}); code != "UNKNOWN_USER" {
		t.Errorf("unknown user: %s", code)
	}
}
