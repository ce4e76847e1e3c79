package sshd

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/launch"
)

// ptyRequest is the pty-req payload (RFC 4254 §6.2).
type ptyRequest struct {
	Term                 string
	Cols, Rows, WPx, HPx uint32
	Modes                string
}

func parsePtyRequest(b []byte) (*ptyRequest, bool) {
	var p ptyRequest
	if gossh.Unmarshal(b, &p) != nil {
		return nil, false
	}
	return &p, true
}

// windowChange resizes the terminal, or remembers the size when the
// program has not started yet; it never blocks.
func (ss *session) windowChange(b []byte) bool {
	var w struct{ Cols, Rows, WPx, HPx uint32 }
	if gossh.Unmarshal(b, &w) != nil || ss.pty == nil {
		return false
	}
	ss.pty.Cols, ss.pty.Rows, ss.pty.WPx, ss.pty.HPx = w.Cols, w.Rows, w.WPx, w.HPx
	if ss.term != nil {
		ss.term.resize(ss.pty)
	}
	return true
}

// terminal is the PTY master of a session, opened by the launcher
// (non-blocking, so reads honour deadlines and Close).
type terminal struct {
	master *os.File
}

func (t *terminal) resize(p *ptyRequest) {
	_ = launch.Resize(t.master, termSize(p))
}

func (t *terminal) close() { _ = t.master.Close() }

func termSize(p *ptyRequest) launch.Size {
	return launch.Size{Rows: clamp16(p.Rows), Cols: clamp16(p.Cols), XPixel: clamp16(p.WPx), YPixel: clamp16(p.HPx)}
}

func clamp16(v uint32) uint16 {
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}

// start runs the program of a shell, exec or subsystem request as the
// sandbox user, through the reaper. The launcher builds it (working dir,
// environment, terminal); the client's variables were already sifted by
// envDenied.
func (ss *session) start(kind string, payload []byte) error {
	u := ss.srv.cfg.User
	env := make(map[string]string, len(ss.env)+1)
	for k, v := range ss.env {
		env[k] = v
	}
	env["SSH_CONNECTION"] = sshConnection(ss.ctx.RemoteAddr(), ss.ctx.LocalAddr())
	sp := launch.Spec{User: u, Exe: u.Shell, Env: env, Group: launch.NewGroup}
	if ss.pty != nil {
		size := termSize(ss.pty)
		sp.Term, sp.Terminal, sp.Group = ss.pty.Term, &size, launch.NewSession
	}
	switch kind {
	case "subsystem":
		var m struct{ Name string }
		if gossh.Unmarshal(payload, &m) != nil || m.Name != "sftp" {
			return fmt.Errorf("unknown subsystem %q", m.Name)
		}
		return ss.startSFTP(u.Env(sp.Term, env))
	case "exec":
		var m struct{ Command string }
		if gossh.Unmarshal(payload, &m) != nil {
			return fmt.Errorf("bad exec request")
		}
		sp.Argv = []string{filepath.Base(u.Shell), "-c", m.Command}
		ss.log.Info().Str("command", truncate(m.Command, 200)).Bool("pty", ss.pty != nil).Msg("ssh exec")
	default:
		// A login shell, as sshd starts it: argv[0] "-bash".
		sp.Argv = []string{"-" + filepath.Base(u.Shell)}
		ss.log.Info().Bool("pty", ss.pty != nil).Msg("ssh shell")
	}
	if ss.x11 != nil {
		env["DISPLAY"] = ss.x11.Display() // over a client's env request, as sshd
		ss.xauth(u, env)
	}
	c, err := launch.Build(sp)
	if err != nil {
		return err
	}
	if c.Master != nil {
		return ss.startPTY(c)
	}
	return ss.startPipes(c)
}

func (ss *session) startPTY(c *launch.Command) error {
	c.Cmd.Env = append(c.Cmd.Env, "SSH_TTY="+c.TTY)
	p, err := launch.Start(c, ss.srv.reaper.Start)
	if err != nil {
		return err
	}
	t := &terminal{master: c.Master}
	ss.proc, ss.term = p, t
	// Raw bytes both ways: PTY output is never rewritten here.
	ss.copyOut(ss.ch, t.master, true)
	ss.copyIn(t.master, ss.ch, false)
	return nil
}

func (ss *session) startPipes(c *launch.Command) error {
	p, err := launch.NewPipes()
	if err != nil {
		return fmt.Errorf("pipes: %w", err)
	}
	p.Attach(c.Cmd)
	proc, err := launch.Start(c, ss.srv.reaper.Start)
	if err != nil {
		p.Close()
		return err
	}
	p.CloseChild()
	ss.proc = proc
	ss.wirePipes(p)
	return nil
}

func (ss *session) wirePipes(p *launch.Pipes) {
	ss.copyOut(ss.ch, p.OutR, false)
	ss.copyOut(ss.ch.Stderr(), p.ErrR, false)
	ss.stdin = p.InW
	ss.copyIn(p.InW, ss.ch, true)
}

// sshConnection is the SSH_CONNECTION value: client ip and port, server
// ip and port. Over the uplink these are the stream's nominal addresses.
func sshConnection(remote, local net.Addr) string {
	hp := func(a net.Addr) string {
		if a == nil {
			return "0.0.0.0 0"
		}
		h, p, err := net.SplitHostPort(a.String())
		if err != nil {
			return "0.0.0.0 0"
		}
		return h + " " + p
	}
	return hp(remote) + " " + hp(local)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
