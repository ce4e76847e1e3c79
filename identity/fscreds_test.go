package identity

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// nobody is a user with no rights here; uid and gid 65534 need no passwd
// entry.
var nobody = &User{Name: "nobody", UID: 65534, GID: 65534, Home: "/"}

// AsUser makes files as the user, is refused what the user may not do,
// and leaves every other goroutine (and this one, after) root.
func TestAsUserCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	// Not t.TempDir: its parent is root's 0700, closed to nobody.
	dir, err := os.MkdirTemp("", "fscreds-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	made := filepath.Join(dir, "made")
	if err := nobody.AsUser(func() error { return os.WriteFile(made, nil, 0o600) }); err != nil {
		t.Fatalf("create as nobody: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(made, &st); err != nil || st.Uid != 65534 || st.Gid != 65534 {
		t.Fatalf("file made as nobody: uid %d gid %d (%v)", st.Uid, st.Gid, err)
	}
	err = nobody.AsUser(func() error { _, err := os.ReadFile(secret); return err })
	if !errors.Is(err, os.ErrPermission) {
		t.Fatalf("read a 0600 root file as nobody: %v, want permission denied", err)
	}
	// Root again, on every thread: a root-only folder is still writable.
	private := filepath.Join(t.TempDir(), "p")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(private, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i := 0; i < 200; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := nobody.AsUser(func() error { _, err := os.ReadFile(secret); return err }); err == nil {
				errs <- errors.New("nobody read the secret")
			}
		}()
		go func(i int) {
			defer wg.Done()
			// Needs CAP_DAC_OVERRIDE: fails on a thread left as nobody.
			p := filepath.Join(private, "f")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("%v", err)
	}
}
