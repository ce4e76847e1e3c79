package agent

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// An fd the agent inherited without close-on-exec gets it, and stays
// open for the agent itself.
func TestCloexecInherited(t *testing.T) {
	fd, err := unix.Open(filepath.Join(t.TempDir(), "f"), unix.O_CREAT|unix.O_RDWR, 0o600) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := cloexecInherited(); err != nil {
		t.Fatalf("cloexecInherited: %v", err)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("the inherited fd was closed: %v", err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("fd %d not close-on-exec after cloexecInherited", fd)
	}
}
