package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
)

// Forwards act as the sandbox user, never as the agent (root): every unix
// socket a forward connects to, binds or removes is touched with the
// user's filesystem credentials (identity.AsUser), so the kernel applies
// the user's permissions (the root-only control socket is refused, no
// socket appears in a folder the user cannot write) and the user owns
// what is made. TCP needs no credentials to connect; a TCP bind below the
// kernel's unprivileged port start is refused, as it would be for the user.

// errNoUser refuses a forward when the sandbox user is unknown: acting as
// root instead would be the hole this file closes.
var errNoUser = errors.New("sandbox user unknown")

// DialUnixAs connects to the unix socket at path as the sandbox user u
// (the proxy's shortcut for `ssh -L local:/remote.sock`); a nil u is
// refused.
func DialUnixAs(_ context.Context, u *identity.User, path string) (net.Conn, error) {
	c, err := dialUnixAs(u, path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, path, err)
	}
	return c, nil
}

func unixSocket() (int, error) {
	return unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
}

// dialUnixAs connects as u. A unix connect never waits (it succeeds, is
// refused, or fails with EAGAIN on a full backlog), so only the connect
// itself runs with u's credentials.
func dialUnixAs(u *identity.User, path string) (net.Conn, error) {
	if u == nil {
		return nil, errNoUser
	}
	fd, err := unixSocket()
	if err != nil {
		return nil, err
	}
	err = u.AsUser(func() error { return unix.Connect(fd, &unix.SockaddrUnix{Name: path}) })
	if err != nil {
		unix.Close(fd)
		return nil, &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: os.NewSyscallError("connect", err)}
	}
	f := os.NewFile(uintptr(fd), "unix:"+path)
	defer f.Close()
	return net.FileConn(f)
}

// listenBacklog is the queue of a forward's listening unix socket.
const listenBacklog = 128

// listenUnixAs listens on path as u, first removing a stale socket left
// by a connection that dropped (never a live socket, never a file of
// another kind). The socket is u's; closing the listener removes it.
func listenUnixAs(u *identity.User, path string) (net.Listener, error) {
	if u == nil {
		return nil, errNoUser
	}
	if strings.HasPrefix(path, "@") {
		// Abstract sockets have no owner or folder; any user may bind them.
		return nil, fmt.Errorf("%s: abstract sockets are not forwarded", path)
	}
	fd, err := unixSocket()
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	err = u.AsUser(func() error {
		if err := removeStale(path); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			return err
		}
		return unix.Lstat(path, &st)
	})
	if err == nil {
		err = unix.Listen(fd, listenBacklog)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), "unix:"+path)
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		(&userListener{u: u, path: path, ino: st.Ino}).unlink()
		return nil, err
	}
	return &userListener{Listener: ln, u: u, path: path, ino: st.Ino}, nil
}

// removeStale runs with the user's credentials.
func removeStale(path string) error {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return nil
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	probe, err := unixSocket()
	if err != nil {
		return err
	}
	err = unix.Connect(probe, &unix.SockaddrUnix{Name: path})
	unix.Close(probe)
	if err == nil || errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("%s: a live socket", path)
	}
	return unix.Unlink(path)
}

// userListener removes its socket file as the user when closed, as
// net.UnixListener does for sockets it made, unless the file is no longer
// the one it bound.
type userListener struct {
	net.Listener
	u    *identity.User
	path string
	ino  uint64
	once sync.Once
}

func (l *userListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(l.unlink)
	return err
}

func (l *userListener) unlink() {
	_ = l.u.AsUser(func() error {
		var st unix.Stat_t
		if unix.Lstat(l.path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK && st.Ino == l.ino {
			return unix.Unlink(l.path)
		}
		return nil
	})
}

// unprivilegedPortStart is the lowest port a user without
// CAP_NET_BIND_SERVICE may bind (net.ipv4.ip_unprivileged_port_start,
// 1024 unless changed; it covers IPv6 too).
func unprivilegedPortStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 1024
	}
	return n
}

// checkBindPort refuses what the user could not bind.
func checkBindPort(port uint32) error {
	if port == 0 {
		return nil
	}
	if start := unprivilegedPortStart(); int(port) < start {
		return fmt.Errorf("port %d is privileged (below %d): the sandbox user cannot bind it", port, start)
	}
	return nil
}
