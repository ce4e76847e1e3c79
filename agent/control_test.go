package agent

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// processUmask reads the umask from /proc: reading it with umask(2) would
// set it.
func processUmask(t *testing.T) string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Umask:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Skip("no Umask line in /proc/self/status")
	return ""
}

// The control socket is root-only from its first instant, and setting it
// up never changes the process-wide umask (a fork meanwhile, such as the
// main command's, would inherit the changed one). The umask is watched
// from another goroutine across many set-ups; the old code set 0177 for
// the length of a bind on every one.
func TestControlSocketLeavesUmask(t *testing.T) {
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	want := processUmask(t)
	stop, seen := make(chan struct{}), make(chan string, 1)
	go func() {
		defer close(seen)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if got := processUmask(t); got != want {
				seen <- got
				return
			}
		}
	}()
	dir := t.TempDir()
	for i := 0; i < 200; i++ {
		path := filepath.Join(dir, "agent.sock")
		a := New(Config{ControlSocket: path}, zerolog.Nop(), "test", Parts{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { a.serveControl(ctx); close(done) }()
		fi := waitSocket(t, path)
		cancel()
		<-done
		if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
			t.Fatalf("control socket mode %v, want a socket with 0600", fi.Mode())
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("left behind after stop: %v", ents)
		}
	}
	close(stop)
	if got, changed := <-seen; changed {
		t.Fatalf("the process umask became %s (want %s throughout) while the control socket was set up", got, want)
	}
}

func waitSocket(t *testing.T, path string) os.FileInfo {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Lstat(path); err == nil {
			return fi
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("control socket %s not created", path)
	return nil
}
