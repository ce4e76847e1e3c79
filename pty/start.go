package pty

import (
	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/launch"
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

// build makes sp's command with the launcher (the one owner of the PATH,
// directory and exec rules, and of the PTY opener): in its own session on
// a new terminal. A command that cannot start is refused here, before a
// session exists.
func build(sp startSpec) (*launch.Command, error) {
	return launch.Build(launch.Spec{
		User: sp.user, Argv: append([]string{sp.command}, sp.args...),
		Dir: sp.workingDir, Env: sp.env, Term: defaultTerm,
		Terminal: &launch.Size{Rows: sp.rows, Cols: sp.cols}, Group: launch.NewSession,
	})
}
