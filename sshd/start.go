package sshd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/creack/pty"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/sftpd"
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

// terminal is the PTY master of a session. It is reopened non-blocking so
// reads honour deadlines and Close (creack/pty leaves it blocking).
type terminal struct {
	master *os.File
}

// openTerminal opens a PTY whose slave belongs to u.
func openTerminal(p *ptyRequest, u *identity.User) (*terminal, *os.File, error) {
	m, tty, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	if err := u.OwnTerminal(tty); err != nil {
		m.Close()
		tty.Close()
		return nil, nil, err
	}
	// One step: a Dup then CloseOnExec leaves a window in which another
	// session's fork inherits this master (and can read and type into it).
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	m.Close()
	if err != nil {
		tty.Close()
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		tty.Close()
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	t := &terminal{master: os.NewFile(uintptr(fd), "ptmx")}
	t.resize(p)
	return t, tty, nil
}

func (t *terminal) resize(p *ptyRequest) {
	ws := &unix.Winsize{Row: clamp16(p.Rows), Col: clamp16(p.Cols), Xpixel: clamp16(p.WPx), Ypixel: clamp16(p.HPx)}
	if rc, err := t.master.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) })
	}
}

func (t *terminal) close() { _ = t.master.Close() }

func clamp16(v uint32) uint16 {
	if v > 0xffff {
		return 0xffff
	}
	return uint16(v)
}

// start runs the program of a shell, exec or subsystem request as the
// sandbox user, through the reaper.
func (ss *session) start(kind string, payload []byte) error {
	u, err := identity.Lookup(ss.srv.cfg.User)
	if err != nil {
		return err
	}
	dir, err := u.Dir("")
	if err != nil {
		dir = "/"
	}
	term := ""
	if ss.pty != nil {
		term = ss.pty.Term
	}
	env := u.Env(term, ss.env)
	env = append(env, "SSH_CONNECTION="+sshConnection(ss.ctx.RemoteAddr(), ss.ctx.LocalAddr()))

	var cmd *exec.Cmd
	switch kind {
	case "subsystem":
		var m struct{ Name string }
		if gossh.Unmarshal(payload, &m) != nil || m.Name != "sftp" {
			return fmt.Errorf("unknown subsystem %q", m.Name)
		}
		return ss.startSFTP(u, env)
	case "exec":
		var m struct{ Command string }
		if gossh.Unmarshal(payload, &m) != nil {
			return fmt.Errorf("bad exec request")
		}
		cmd = exec.Command(u.Shell, "-c", m.Command)
		cmd.Args[0] = filepath.Base(u.Shell)
		ss.log.Info().Str("command", truncate(m.Command, 200)).Bool("pty", ss.pty != nil).Msg("ssh exec")
	default:
		cmd = exec.Command(u.Shell)
		// A login shell, as sshd starts it: argv[0] "-bash".
		cmd.Args[0] = "-" + filepath.Base(u.Shell)
		ss.log.Info().Bool("pty", ss.pty != nil).Msg("ssh shell")
	}
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential()}
	if ss.pty != nil {
		return ss.startPTY(cmd, u)
	}
	cmd.SysProcAttr.Setpgid = true
	return ss.startPipes(cmd)
}

func (ss *session) startPTY(cmd *exec.Cmd, u *identity.User) error {
	t, tty, err := openTerminal(ss.pty, u)
	if err != nil {
		return err
	}
	defer tty.Close()
	cmd.Env = append(cmd.Env, "SSH_TTY="+tty.Name())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr.Setsid = true
	cmd.SysProcAttr.Setctty = true
	cmd.SysProcAttr.Ctty = 0
	p, err := ss.srv.reaper.Start(cmd)
	if err != nil {
		t.close()
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	ss.proc, ss.term = p, t
	// Raw bytes both ways: PTY output is never rewritten here.
	ss.copyOut(ss.ch, t.master)
	ss.copyIn(t.master, ss.ch, false)
	return nil
}

// pipeSize is the program's stdout pipe size (see newPipes).
const pipeSize = 512 << 10

// pipes are a program's stdio: ours are the far ends.
type pipes struct {
	inR, inW, outR, outW, errR, errW *os.File
}

func newPipes() (*pipes, error) {
	var p pipes
	var err error
	if p.inR, p.inW, err = os.Pipe(); err != nil {
		return nil, err
	}
	if p.outR, p.outW, err = os.Pipe(); err != nil {
		p.inR.Close()
		p.inW.Close()
		return nil, err
	}
	// Bigger stdin and stdout pipes than the 64 KiB default let bulk
	// transfers run a few packets ahead; failure is harmless.
	for _, f := range []*os.File{p.inW, p.outW} {
		if rc, err := f.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize) })
		}
	}
	if p.errR, p.errW, err = os.Pipe(); err != nil {
		for _, f := range []*os.File{p.inR, p.inW, p.outR, p.outW} {
			f.Close()
		}
		return nil, err
	}
	return &p, nil
}

// childEnds closes the program's ends in our process once it has them.
func (p *pipes) childEnds() {
	p.inR.Close()
	p.outW.Close()
	p.errW.Close()
}

func (p *pipes) closeAll() {
	p.childEnds()
	p.inW.Close()
	p.outR.Close()
	p.errR.Close()
}

func (ss *session) startPipes(cmd *exec.Cmd) error {
	p, err := newPipes()
	if err != nil {
		return fmt.Errorf("pipes: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.inR, p.outW, p.errW
	proc, err := ss.srv.reaper.Start(cmd)
	if err != nil {
		p.closeAll()
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p.childEnds()
	ss.proc = proc
	ss.wirePipes(p)
	return nil
}

func (ss *session) wirePipes(p *pipes) {
	ss.copyOut(ss.ch, p.outR)
	ss.copyOut(ss.ch.Stderr(), p.errR)
	ss.copyIn(p.inW, ss.ch, true)
}

func (ss *session) startSFTP(u *identity.User, env []string) error {
	p, err := newPipes()
	if err != nil {
		return fmt.Errorf("pipes: %w", err)
	}
	proc, err := sftpd.Start(ss.srv.reaper, ss.srv.cfg.Exe, u, env, p.inR, p.outW, p.errW)
	if err != nil {
		p.closeAll()
		return err
	}
	p.childEnds()
	ss.proc = proc
	ss.log.Info().Msg("ssh sftp")
	ss.wirePipes(p)
	return nil
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
