package agent

import (
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestVsockListener binds the vsock listener and checks that Close ends a
// pending Accept (the agent's shutdown relies on it). This kernel may have
// no vsock transport to connect through; binding is what can be checked.
func TestVsockListener(t *testing.T) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Skipf("kernel without AF_VSOCK: %v", err)
	}
	unix.Close(fd)
	ln, err := listen("vsock:45873")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	if got := ln.Addr().String(); got != "vsock:45873" {
		t.Errorf("Addr = %q", got)
	}
	errc := make(chan error, 1)
	go func() { _, err := ln.Accept(); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	ln.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
	if _, err := listen("vsock:notaport"); err == nil {
		t.Fatal("bad port accepted")
	}
}

// TestVsockFromHost: only the host's CID may be the uplink's peer (this
// kernel has no vsock loopback to connect through, so the filter itself
// is checked).
func TestVsockFromHost(t *testing.T) {
	for _, c := range []struct {
		sa   unix.Sockaddr
		want bool
	}{
		{&unix.SockaddrVM{CID: unix.VMADDR_CID_HOST, Port: 1}, true},
		{&unix.SockaddrVM{CID: 1, Port: 1}, false}, // this guest's loopback
		{&unix.SockaddrVM{CID: 3, Port: 1}, false}, // another guest
		{&unix.SockaddrVM{CID: unix.VMADDR_CID_ANY}, false},
		{&unix.SockaddrInet4{Port: 1}, false},
		{nil, false},
	} {
		if got := fromHost(c.sa); got != c.want {
			t.Errorf("fromHost(%+v) = %v", c.sa, got)
		}
	}
}
