package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
	data := "# users\n\n" + line("", all, "alice") + line(`sandboxes="sbx1, sbx2"`, some, "bob") + line(`sandboxes="*"`, star, "")
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
	if _, _, err := loadKeys(path); err == nil {
		t.Errorf("a bad line was accepted")
	}
}

// An option the proxy does not implement must refuse the key, never widen
// it: a typo of sandboxes= would otherwise open every sandbox, and
// OpenSSH's restrictions would be silently dropped.
func TestLoadKeysRefusesUnknownOptions(t *testing.T) {
	good := testKey(t)
	line := func(opts string, k gossh.PublicKey) string {
		s := string(gossh.MarshalAuthorizedKey(k))
		if opts != "" {
			s = opts + " " + s
		}
		return s
	}
	for _, opts := range []string{`sandbox="sbx1"`, `no-pty`, `command="/bin/true"`, `from="10.0.0.1"`, `restrict`,
		`sandboxes="sbx1",no-port-forwarding`, `sandboxes`, `Sandboxes_="x"`} {
		t.Run(opts, func(t *testing.T) {
			bad := testKey(t)
			path := filepath.Join(t.TempDir(), "keys")
			data := line(opts, bad) + line("", good) + line(`sandboxes="*"`, bad)
			if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			keys, refused, err := loadKeys(path)
			if err != nil {
				t.Fatalf("the file failed as a whole: %v", err)
			}
			if keys[string(bad.Marshal())] != nil {
				t.Errorf("key with option %s was loaded (a later line must not revive it)", opts)
			}
			if len(refused) != 1 {
				t.Errorf("refused %v, want the one line", refused)
			}
			if keys[string(good.Marshal())] == nil {
				t.Errorf("the other keys must keep working")
			}
		})
	}
	t.Run("sandboxes option with an empty list reaches nothing", func(t *testing.T) {
		k, err := keyEntry(good, "", []string{`sandboxes=""`})
		if err != nil || k.all || k.allows("x") || k.allows("") {
			t.Errorf("got %+v, %v", k, err)
		}
	})
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
		{"99999999999999999999-sbx", sshRoute{}, false},
		{"0-sbx", sshRoute{}, false},
		{"22-", sshRoute{}, false},
		{"22-5-sbx", sshRoute{}, false},
		{"-sbx", sshRoute{sandbox: "-sbx"}, true},
		{"sbx/../x", sshRoute{}, false},
		{"", sshRoute{}, false},
	} {
		got, err := parseSSHUser(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseSSHUser(%q) = %+v, %v", c.in, got, err)
		}
	}
}

// FuzzParseSSHUser: no user name panics the front door, and an accepted
// name is exactly one route: a valid sandbox id, and a port in range that
// the name spells.
func FuzzParseSSHUser(f *testing.F) {
	for _, s := range []string{"sbx", "22-sbx", "my-sbx", "65535-a", "65536-a", "0-a", "007-a", "-a", "1-", "1--a", "", "9999999999999999999999-x", "a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		r, err := parseSSHUser(name)
		if err != nil {
			if r != (sshRoute{}) {
				t.Fatalf("%q: error %v with a route %+v", name, err, r)
			}
			return
		}
		if !ValidSandboxID(r.sandbox) {
			t.Fatalf("%q: sandbox %q is not a valid id", name, r.sandbox)
		}
		if r.port == 0 {
			if name != r.sandbox {
				t.Fatalf("%q: default route to %q", name, r.sandbox)
			}
			return
		}
		digits, id, _ := strings.Cut(name, "-")
		if n, err := strconv.Atoi(digits); err != nil || n != r.port || r.port < 1 || r.port > 65535 || id != r.sandbox {
			t.Fatalf("%q: port route %+v does not match the name", name, r)
		}
		if again, err := parseSSHUser(strconv.Itoa(r.port) + "-" + r.sandbox); err != nil || again != r {
			t.Fatalf("%q: route %+v does not round-trip: %+v %v", name, r, again, err)
		}
	})
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
