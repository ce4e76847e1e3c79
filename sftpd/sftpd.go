// Package sftpd runs the SFTP subsystem of the agent's SSH server.
//
// pkg/sftp's Server acts on the filesystem as the calling process, and the
// agent is root. So, as OpenSSH runs a separate sftp-server and Tailscale's
// tailssh re-executes itself, the SSH server starts the agent's own binary
// again as `tl-agent sftp-server` with the user's credentials; that process
// speaks SFTP on its stdin and stdout and nothing else. Start does the
// starting (through the reaper, the one owner of waiting); Serve is the
// child's whole life.
package sftpd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/pkg/sftp"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Subcommand is the hidden tl-agent subcommand that runs Serve.
const Subcommand = "sftp-server"

// maxTxPacket lets clients that ask for larger reads get them (pkg/sftp
// caps replies at 32 KiB otherwise); ext.go reports the same limit to
// OpenSSH's client through limits@openssh.com.
const maxTxPacket = maxData

// gcPercent is the sftp-server's GOGC (see Serve).
const gcPercent = 400

// Serve speaks SFTP on stdin/stdout in dir until the client ends the
// session. A clean end (EOF) is exit code 0: scp reports failure otherwise
// (Coder 11786).
func Serve(dir string) int {
	// The process's own working directory is the start folder, rather than
	// WithServerWorkingDirectory: that option also rewrites a relative
	// symlink target into an absolute path under the start folder.
	if dir != "" {
		if err := os.Chdir(dir); err != nil {
			fmt.Fprintln(os.Stderr, "sftp-server:", err)
		}
	}
	// WithAllocator reuses packet buffers (marked experimental by pkg/sftp;
	// it took sftp get from about 0.8x to 0.95x of OpenSSH's sftp-server
	// under the same sshd, docs/benchmarks.md). Even so pkg/sftp
	// allocates per packet while the live heap stays a
	// few MB, so the default GOGC collects hundreds of times a second in
	// a bulk transfer; this process does nothing else, so trade a few MB
	// for CPU.
	debug.SetGCPercent(gcPercent)
	srv, err := sftp.NewServer(newExtLayer(os.Stdin, os.Stdout), sftp.WithMaxTxPacket(maxTxPacket), sftp.WithAllocator())
	if err != nil {
		fmt.Fprintln(os.Stderr, "sftp-server:", err)
		return 1
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "sftp-server:", err)
		return 1
	}
	return 0
}

// Start starts an sftp-server child as u in its home (or /, the
// launcher's rule), on pipes (the caller keeps the far ends and closes the
// child's once Start returns). exe is the agent's own binary; env is the
// child's whole environment.
func Start(r *supervisor.Reaper, exe string, u *identity.User, env []string, pipes *launch.Pipes) (*supervisor.Proc, error) {
	if env == nil {
		env = []string{}
	}
	c, err := launch.Build(launch.Spec{User: u, Exe: exe, Argv: []string{"tl-agent", Subcommand}, Base: env, Group: launch.NewGroup})
	if err != nil {
		return nil, fmt.Errorf("start sftp-server: %w", err)
	}
	cmd := c.Cmd
	cmd.Args = append(cmd.Args, cmd.Dir)
	pipes.Attach(cmd)
	p, err := launch.Start(c, r.Start)
	if err != nil {
		return nil, fmt.Errorf("start sftp-server: %w", err)
	}
	return p, nil
}
