package forward

import (
	"net"
	"os"
	"os/user"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
)

func TestBindHost(t *testing.T) {
	for in, want := range map[string]string{"": "127.0.0.1", "localhost": "127.0.0.1", "*": "", "0.0.0.0": "0.0.0.0", "::1": "::1"} {
		if got := bindHost(in); got != want {
			t.Errorf("bindHost(%q) = %q, want %q", in, got, want)
		}
	}
}

// A stale socket left by a dropped connection is replaced; a live socket
// or a file of another kind is not touched.
func TestListenUnixReplacesOnlyStaleSockets(t *testing.T) {
	u := currentUser(t)
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: stale
	ln, err = listenUnixAs(u, stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	if _, err := listenUnixAs(u, stale); err == nil {
		t.Errorf("a live socket was replaced")
	}
	ln.Close()

	regular := filepath.Join(dir, "file")
	if err := os.WriteFile(regular, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnixAs(u, regular); err == nil {
		t.Errorf("a regular file was replaced")
	}
	if data, _ := os.ReadFile(regular); string(data) != "keep" {
		t.Errorf("regular file changed")
	}
}

// The registry refuses duplicates and work after close, and close ends
// every listener.
func TestConnRegistry(t *testing.T) {
	c := &sshConn{log: zerolog.Nop(), listeners: map[string]net.Listener{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.add("tcp:a", ln); err != nil {
		t.Fatal(err)
	}
	if err := c.add("tcp:a", ln); err == nil {
		t.Errorf("duplicate key accepted")
	}
	c.close()
	if _, err := ln.Accept(); err == nil {
		t.Errorf("listener still open after close")
	}
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln2.Close()
	if err := c.add("tcp:b", ln2); err == nil {
		t.Errorf("add after close accepted")
	}
	if c.remove("tcp:a") {
		t.Errorf("remove found a listener after close")
	}
}

func currentUser(t *testing.T) *identity.User {
	t.Helper()
	me, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	u, err := identity.Lookup(me.Username)
	if err != nil {
		t.Skip(err)
	}
	return u
}
