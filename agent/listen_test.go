package agent

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestListenUnixPrivate: the socket is bound in a private folder and only
// then renamed into place, 0600, whatever the umask; a stale socket is
// replaced, no temporary folder is left, and Close removes the socket.
func TestListenUnixPrivate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "up.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	old := syscall.Umask(0) // the loosest umask: a bind in place would be 0777
	ln, err := listen("unix:" + path)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v", fi.Mode(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("folder holds %d entries, want the socket only", len(ents))
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the renamed socket: %v", err)
	}
	c.Close()
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
}
