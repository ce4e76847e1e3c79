package launch

import (
	"fmt"
	"os"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
)

// Size is a terminal's size in characters (and pixels, when a client
// gives them).
type Size struct {
	Rows, Cols     uint16
	XPixel, YPixel uint16
}

// OpenPTY is the one PTY opener: a pair whose slave belongs to u (as
// OpenSSH's sshd does, so u can open its own terminal again: `echo hi >
// $(tty)`) and whose master is non-blocking and served by the runtime
// poller. creack/pty's Open leaves the master blocking (its ioctls go
// through File.Fd, creack/pty 162): a blocking Read then pins a thread,
// ignores deadlines and is not woken by Close. With the poller, the reader
// needs no buffer while idle, the exit drain can use a deadline, and Close
// unblocks it.
func OpenPTY(size Size, u *identity.User) (master, slave *os.File, err error) {
	m, s, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	if err := u.OwnTerminal(s); err != nil {
		m.Close()
		s.Close()
		return nil, nil, err
	}
	// One step: a Dup then CloseOnExec leaves a window in which another
	// session's fork inherits this master (and can read and type into it).
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
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	if err := Resize(master, size); err != nil {
		master.Close()
		s.Close()
		return nil, nil, fmt.Errorf("set pty size: %w", err)
	}
	return master, s, nil
}

// Resize sets the terminal's size through the poller-safe RawConn, never
// File.Fd (which would put the master back in blocking mode). The kernel
// sends SIGWINCH to the foreground process group when it changes.
func Resize(master *os.File, size Size) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	ws := &unix.Winsize{Row: size.Rows, Col: size.Cols, Xpixel: size.XPixel, Ypixel: size.YPixel}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws)
	})
	if err != nil {
		return err
	}
	return ierr
}
