package agent

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// listenVsock listens on AF_VSOCK, the host-guest socket of microVMs
// (Firecracker, Cloud Hypervisor). net has no vsock support, so the fds
// are driven through os.File, which still uses the runtime's poller.
func listenVsock(port string) (net.Listener, error) {
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("vsock port %q: %w", port, err)
	}
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket (kernel without vsock?): %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(p)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind: %w", err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen: %w", err)
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock"), port: uint32(p)}, nil
}

type vsockListener struct {
	f      *os.File
	port   uint32
	closed atomic.Bool
}

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return aerr != unix.EAGAIN
	})
	if l.closed.Load() {
		return nil, net.ErrClosed // as any net.Listener says after Close
	}
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock-conn")}, nil
}

func (l *vsockListener) Close() error {
	l.closed.Store(true)
	return l.f.Close()
}
func (l *vsockListener) Addr() net.Addr { return vsockAddr(l.port) }

type vsockAddr uint32

func (vsockAddr) Network() string  { return "vsock" }
func (a vsockAddr) String() string { return "vsock:" + strconv.Itoa(int(a)) }

// vsockConn is an accepted vsock connection; os.File gives it Read, Write,
// Close and deadlines.
type vsockConn struct{ *os.File }

func (c *vsockConn) LocalAddr() net.Addr  { return vsockAddr(0) }
func (c *vsockConn) RemoteAddr() net.Addr { return vsockAddr(0) }
