package launch

import (
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// PipeSize is the stdin and stdout pipe size NewPipes asks for: bigger
// than the kernel's 64 KiB default, so bulk transfers (scp, sftp, a tar
// over ssh) run a few packets ahead of the program.
const PipeSize = 512 << 10

// Pipes are a command's stdio on three pipes. The command gets InR, OutW
// and ErrW (Attach); the caller keeps the far ends: it writes the
// program's input to InW and reads its output from OutR and ErrR.
type Pipes struct {
	InR, InW, OutR, OutW, ErrR, ErrW *os.File
}

// NewPipes makes the three pipes, with stdin and stdout of PipeSize when
// the kernel allows it (a smaller pipe only costs speed).
func NewPipes() (*Pipes, error) {
	var p Pipes
	var made []*os.File
	for _, pair := range []struct{ r, w **os.File }{{&p.InR, &p.InW}, {&p.OutR, &p.OutW}, {&p.ErrR, &p.ErrW}} {
		r, w, err := os.Pipe()
		if err != nil {
			for _, f := range made {
				f.Close()
			}
			return nil, err
		}
		*pair.r, *pair.w = r, w
		made = append(made, r, w)
	}
	for _, f := range []*os.File{p.InW, p.OutW} {
		if rc, err := f.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, PipeSize) })
		}
	}
	return &p, nil
}

// Attach makes the pipes cmd's stdin, stdout and stderr.
func (p *Pipes) Attach(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.InR, p.OutW, p.ErrW
}

// CloseChild closes the command's ends in our process once it has them
// (after its start), so its exit is our EOF.
func (p *Pipes) CloseChild() {
	p.InR.Close()
	p.OutW.Close()
	p.ErrW.Close()
}

// Close closes all six ends (a command that did not start).
func (p *Pipes) Close() {
	p.CloseChild()
	p.InW.Close()
	p.OutR.Close()
	p.ErrR.Close()
}
