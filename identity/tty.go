package identity

import (
	"fmt"
	"os"
	"os/user"
	"strconv"

	"golang.org/x/sys/unix"
)

// OwnTerminal gives a PTY slave to u as OpenSSH's sshd does (pty_setowner):
// owner u, group tty with mode 0620 when a tty group exists (so write(1)
// and wall can reach it), else u's group with mode 0600. Without it the
// slave stays root:tty 0620 and `echo hi > $(tty)` fails for u. Nothing to
// do when the agent is not root: the slave is already the caller's.
func (u *User) OwnTerminal(slave *os.File) error {
	if os.Geteuid() != 0 {
		return nil
	}
	gid, mode := u.GID, uint32(0o600)
	if g, err := user.LookupGroup("tty"); err == nil {
		if n, err := strconv.ParseUint(g.Gid, 10, 32); err == nil {
			gid, mode = uint32(n), 0o620
		}
	}
	rc, err := slave.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.Fchown(int(fd), int(u.UID), int(gid)); serr == nil {
			serr = unix.Fchmod(int(fd), mode)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("give terminal to %s: %w", u.Name, err)
	}
	return nil
}
