package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

func testKey(t *testing.T) gossh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLoadKeys(t *testing.T) {
	all, some, star := testKey(t), testKey(t), testKey(t)
	line := func(opts string, k gossh.PublicKey, comment string) string {
		s := string(gossh.MarshalAuthorizedKey(k))
		s = s[:len(s)-1] + " " + comment
		if opts != "" {
			s = opts + " " + s
		}
		return s + "\n"
	}
	path := filepath.Join(t.TempDir(), "keys")
	data := "# users\n\n" + line("", all, "alice") + line(`sandboxes="sbx1, sbx2",no-pty`, some, "bob") + line(`sandboxes="*"`, star, "")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &keyRing{path: path}
	for _, c := range []struct {
		key       gossh.PublicKey
		name      string
		sbx       string
		reachable bool
	}{
		{all, "alice", "anything", true},
		{some, "bob", "sbx2", true},
		{some, "bob", "sbx3", false},
		{star, gossh.FingerprintSHA256(star), "x", true},
	} {
		k, err := r.lookup(c.key)
		if err != nil || k == nil {
			t.Fatalf("lookup %s: %v %v", c.name, k, err)
		}
		if k.name != c.name || k.allows(c.sbx) != c.reachable {
			t.Errorf("%s: name %q allows(%s)=%v, want %q %v", c.name, k.name, c.sbx, k.allows(c.sbx), c.name, c.reachable)
		}
	}
	if k, _ := r.lookup(testKey(t)); k != nil {
		t.Errorf("unknown key found")
	}
	if err := os.WriteFile(path, []byte("garbage line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadKeys(path); err == nil {
		t.Errorf("a bad line was accepted")
	}
}

func TestParseSSHUser(t *testing.T) {
	for _, c := range []struct {
		in   string
		want sshRoute
		ok   bool
	}{
		{"sbx", sshRoute{sandbox: "sbx"}, true},
		{"22-sbx", sshRoute{sandbox: "sbx", port: 22}, true},
		{"my-sbx", sshRoute{sandbox: "my-sbx"}, true},
		{"99999-sbx", sshRoute{}, false},
		{"", sshRoute{}, false},
	} {
		got, err := parseSSHUser(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseSSHUser(%q) = %+v, %v", c.in, got, err)
		}
	}
}

func TestHostKeyPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "host_key")
	a, err := loadHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.PublicKey().Marshal()) != string(b.PublicKey().Marshal()) {
		t.Fatal("host key changed across loads")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("host key mode %v, want 0600", fi.Mode().Perm())
	}
}
