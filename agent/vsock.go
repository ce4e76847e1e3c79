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
	f       *os.File
	port    uint32
	closed  atomic.Bool
	refused atomic.Int64 // connections from other CIDs, closed
}

// Accept returns the next connection from the host. Connections from any
// other CID (another guest, this guest's own loopback) are closed at once:
// the uplink's peer is the VMM on the host, CID 2.
func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	for {
		var nfd int
		var sa unix.Sockaddr
		var aerr error
		err = rc.Read(func(fd uintptr) bool {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return aerr != unix.EAGAIN
		})
		if l.closed.Load() {
			if aerr == nil && err == nil {
				unix.Close(nfd)
			}
			return nil, net.ErrClosed // as any net.Listener says after Close
		}
		if err != nil {
			return nil, err
		}
		if aerr != nil {
			return nil, aerr
		}
		if !fromHost(sa) {
			l.refused.Add(1)
			unix.Close(nfd)
			continue
		}
		vm := sa.(*unix.SockaddrVM)
		return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock-conn"), remote: vsockPeer{vm.CID, vm.Port}}, nil
	}
}

// fromHost reports whether a vsock peer is the host (VMADDR_CID_HOST).
func fromHost(sa unix.Sockaddr) bool {
	vm, ok := sa.(*unix.SockaddrVM)
	return ok && vm.CID == unix.VMADDR_CID_HOST
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
type vsockConn struct {
	*os.File
	remote vsockPeer
}

func (c *vsockConn) LocalAddr() net.Addr  { return vsockAddr(0) }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

// vsockPeer is a connected peer's CID and port.
type vsockPeer struct{ cid, port uint32 }

func (vsockPeer) Network() string { return "vsock" }
func (p vsockPeer) String() string {
	return "vsock:" + strconv.Itoa(int(p.cid)) + ":" + strconv.Itoa(int(p.port))
}
