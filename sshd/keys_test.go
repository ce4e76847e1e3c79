package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/identity"
)

func testKey(t *testing.T) (gossh.PublicKey, string) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pk, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pk)))
}

func me(t *testing.T) *identity.User {
	t.Helper()
	cur, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	u, err := identity.Lookup(cur.Username)
	if err != nil {
		t.Skip(err)
	}
	return u
}

// A key line with an option the server does not implement is refused,
// never taken as a plain key (which would ignore a command= or from=).
func TestAuthorizedKeysOptions(t *testing.T) {
	s := &Server{log: zerolog.Nop()}
	u := me(t)
	pk, line := testKey(t)
	path := filepath.Join(t.TempDir(), "authorized_keys")
	cases := []struct {
		file string
		want bool
	}{
		{line, true},
		{"# comment\n\n" + line + " alice@x", true},
		{`command="echo hi" ` + line, false},
		{`from="10.0.0.1" ` + line, false},
		{`restrict ` + line, false},
		{`no-pty ` + line, false},
		{`no-port-forwarding ` + line, false},
		{`environment="A=b" ` + line, false},
		{`expiry-time="20300101" ` + line, false},
		{`permitopen="x:1" ` + line, false},
		{`cert-authority ` + line, false},
		{`sandbox="typo" ` + line, false},
		{`COMMAND="x" ` + line, false},
		{`pty,no-user-rc,X11-forwarding ` + line, true},
		{`no-X11-forwarding ` + line, false},        // X11 is forwarded: a restriction not applied
		{`command="x" ` + line + "\n" + line, true}, // a later plain line for the key
	}
	for _, c := range cases {
		if err := os.WriteFile(path, []byte(c.file+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := s.authorizedIn(u, path, pk); got != c.want {
			t.Errorf("%q: authorized %v, want %v", c.file, got, c.want)
		}
	}
}

// Anything but a regular file is refused, and a FIFO does not block.
func TestAuthorizedKeysNotRegular(t *testing.T) {
	s := &Server{log: zerolog.Nop()}
	u := me(t)
	pk, _ := testKey(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, dir, "/dev/zero", filepath.Join(dir, "missing")} {
		done := make(chan bool, 1)
		go func() { done <- s.authorizedIn(u, p, pk) }()
		select {
		case got := <-done:
			if got {
				t.Errorf("%s: authorized", p)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: reading authorized_keys blocked", p)
		}
	}
}
