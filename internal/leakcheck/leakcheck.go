// Package leakcheck is the tests' check that a Close ended everything it
// owned: take a Snapshot before building the thing under test, Close it,
// then Check that the file descriptors and goroutines are back to what
// the snapshot saw (containerd's fd counts, goleak's idea, without the
// dependency).
package leakcheck

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Wait bounds how long Check waits for goroutines and fds to go: the
// other ends of test connections and the runtime's own clean-up take a
// moment on a loaded machine, a leak never ends.
const Wait = 10 * time.Second

// Snapshot is the fds and goroutines of the test process at one moment.
type Snapshot struct {
	fds        int
	goroutines int
	wait       time.Duration // 0: Wait
}

// Take records the process's fds and goroutines. It first makes the fds
// the runtime keeps once made (the network poller's) exist, and drops the
// default HTTP client's idle connections, so they do not count as leaks.
func Take(t testing.TB) Snapshot {
	t.Helper()
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close() // the runtime's poller fds exist from here on
	}
	http.DefaultClient.CloseIdleConnections()
	return Snapshot{fds: countFDs(), goroutines: len(goroutines())}
}

// Allow returns the snapshot plus fds and goroutines the test itself
// keeps across the check (such as its end of a connection it holds open
// to prove that Close ends the other end).
func (s Snapshot) Allow(fds, goroutines int) Snapshot {
	s.fds += fds
	s.goroutines += goroutines
	return s
}

// Check fails t unless, within Wait, there are no more fds and goroutines
// than at the snapshot; the failure lists the open fds and every stack.
func (s Snapshot) Check(t testing.TB) {
	t.Helper()
	wait := s.wait
	if wait == 0 {
		wait = Wait
	}
	deadline := time.Now().Add(wait)
	for {
		http.DefaultClient.CloseIdleConnections()
		f, g := countFDs(), goroutines()
		if f <= s.fds && len(g) <= s.goroutines {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leak: fds %d (were %d): %s\ngoroutines %d (were %d):\n\n%s",
				f, s.fds, strings.Join(fdLinks(), " "), len(g), s.goroutines, strings.Join(g, "\n\n"))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Running returns the stacks of live goroutines that mention s, such as
// a package path ("tl-agent/proxy."): right after a Close returns, a
// thing that waits for its own goroutines has none left blocked. One
// that has called its WaitGroup's Done may still be on its way out of
// its deferred calls for a moment, so Running looks again for up to a
// second before it reports: a leaked goroutine is still there then.
func Running(s string) []string {
	var out []string
	for range 50 {
		out = out[:0]
		for _, g := range goroutines() {
			if strings.Contains(g, s) {
				out = append(out, g)
			}
		}
		if len(out) == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func fdLinks() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+"->"+l)
	}
	return out
}

// ignored are goroutines the runtime or the standard library start once
// and keep for the life of the process: not anyone's leak.
var ignored = []string{
	"os/signal.signal_recv", // started by the first signal.Notify
	"os/signal.loop",
}

// goroutines returns the stacks of the live goroutines, minus ignored ones
// and the caller's own.
func goroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 {
			continue // this goroutine: runtime.Stack lists the caller first
		}
		st := string(g)
		if !ignore(st) {
			out = append(out, st)
		}
	}
	return out
}

func ignore(stack string) bool {
	for _, s := range ignored {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

// String describes the snapshot, for logs.
func (s Snapshot) String() string {
	return fmt.Sprintf("%d fds, %d goroutines", s.fds, s.goroutines)
}
