package launch

import (
	"os/exec"
	"os/user"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tensorlake/tl-agent/identity"
)

// TestTerminalFdsNotInherited opens PTYs while other goroutines fork
// children that list their own fds: no child may hold a PTY it was not
// given. A master dup'ed and marked close-on-exec in two steps leaked into
// concurrent forks (issue 10 item 5); OpenPTY must never leave that
// window. (The one opener serves PTY sessions and SSH alike.)
func TestTerminalFdsNotInherited(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	u, err := identity.Lookup(me.Username)
	if err != nil {
		t.Skip(err)
	}
	const forks, forkers, openers = 400, 2, 2
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i := 0; i < openers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load() && n < 1_000_000; n++ {
				master, tty, err := OpenPTY(Size{Rows: 24, Cols: 80}, u)
				if err != nil {
					t.Errorf("open terminal: %v", err)
					return
				}
				tty.Close()
				master.Close()
			}
		}()
	}
	var leaks atomic.Int32
	var fwg sync.WaitGroup
	for i := 0; i < forkers; i++ {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			for n := 0; n < forks/forkers; n++ {
				out, err := exec.Command("ls", "-l", "/proc/self/fd/").Output()
				if err != nil {
					t.Errorf("ls: %v", err)
					return
				}
				for _, line := range strings.Split(string(out), "\n") {
					if strings.Contains(line, "/dev/ptmx") || strings.Contains(line, "/dev/pts/") {
						leaks.Add(1)
						t.Errorf("child inherited a terminal: %s", line)
					}
				}
			}
		}()
	}
	fwg.Wait()
	stop.Store(true)
	wg.Wait()
	if n := leaks.Load(); n > 0 {
		t.Fatalf("%d of %d children saw a foreign terminal", n, forks)
	}
}
