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
