package sftpd

import (
	"context"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/supervisor"
)

// TestMain lets the test binary stand in for the agent's: Start runs it
// as `tl-agent sftp-server <dir>`.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == Subcommand {
		os.Exit(Serve(os.Args[2]))
	}
	os.Exit(m.Run())
}

// newTestServer serves sessions as the current user, re-executing the
// test binary.
func newTestServer(t *testing.T, maxSessions int) *Server {
	t.Helper()
	cur, err := user.Current()
	if err != nil {
		t.Skip("no current user")
	}
	me, err := identity.Lookup(cur.Username)
	if err != nil {
		t.Skip("current user not in passwd")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	reaper := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go reaper.Run(stop)
	s, err := New(Config{User: me, Exe: exe, MaxSessions: maxSessions}, zerolog.Nop(), reaper)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); close(stop) })
	return s
}

// fdCount counts this process's fds, less the incubator stub's memfd:
// the launcher makes that once per process at its first start
// (launch/stub.go), so it is no session's leak.
func fdCount() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); !strings.HasPrefix(l, "/memfd:tl-agent-incubator") {
			n++
		}
	}
	return n
}

// TestServeConnRoundTrip: a stream is a working SFTP session as the user,
// in its home; at the client's end ServeConn returns, and Close leaves no
// goroutine or fd behind.
func TestServeConnRoundTrip(t *testing.T) {
	s := newTestServer(t, 0)
	baseFD, baseG := fdCount(), runtime.NumGoroutine()
	dir := t.TempDir()
	for i := range 3 {
		a, b := net.Pipe()
		done := make(chan error, 1)
		go func() { done <- s.ServeConn(context.Background(), a, streams.Peer{User: "test"}) }()
		cl, err := sftp.NewClientPipe(b, b)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if wd, err := cl.Getwd(); err != nil || wd == "" {
			t.Fatalf("getwd: %q %v", wd, err)
		}
		p := filepath.Join(dir, "f.txt")
		f, err := cl.Create(p)
		if err == nil {
			_, err = f.Write([]byte("hello"))
			f.Close()
		}
		if got, _ := os.ReadFile(p); err != nil || string(got) != "hello" {
			t.Fatalf("write through sftp: %q %v", got, err)
		}
		cl.Close()
		b.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("ServeConn: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("ServeConn still running after the client left")
		}
	}
	if st := s.Stats(); st.SessionsTotal != 3 || st.Sessions != 0 {
		t.Fatalf("stats %v, want 3 sessions served, none open", st)
	}
	s.Close()
	var fd, g int
	for range 100 {
		if fd, g = fdCount(), runtime.NumGoroutine(); fd <= baseFD && g <= baseG+1 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("after Close: fds %d (was %d), goroutines %d (was %d)", fd, baseFD, g, baseG)
}

// TestServeExitsZeroAtEOF: the client's EOF is the clean end, exit 0 (scp
// reports failure otherwise).
func TestServeExitsZeroAtEOF(t *testing.T) {
	s := newTestServer(t, 0)
	exit, err := s.Serve(context.Background(), Session{In: strings.NewReader(""), Out: io.Discard})
	if err != nil || exit.Code != 0 || exit.Signal != 0 {
		t.Fatalf("exit %v, err %v; want exit 0", exit, err)
	}
}

// TestServeConnRefusedOverCap: past MaxSessions a stream is refused with
// the reason before it is touched (so the agent can still answer the
// proxy with it), and Close hangs the running session up.
func TestServeConnRefusedOverCap(t *testing.T) {
	s := newTestServer(t, 1)
	inR, inW := io.Pipe()
	defer inW.Close()
	first := make(chan error, 1)
	go func() {
		_, err := s.Serve(context.Background(), Session{In: inR, Out: io.Discard})
		first <- err
	}()
	for i := 0; s.Stats().SessionsTotal == 0; i++ {
		if i > 400 {
			t.Fatal("the first session did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	untouched := &touchConn{}
	err := s.ServeConn(context.Background(), untouched, streams.Peer{})
	if err == nil || err.Error() != "too many SFTP sessions (max 1)" || untouched.touched {
		t.Fatalf("second session: %v (touched %v), want refused untouched with the cap named", err, untouched.touched)
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case err := <-first:
		if err != nil {
			t.Fatalf("first session: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not hang the running session up")
	}
	inW.Close() // what the caller does after Serve: ends the input copy
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, err := s.Serve(context.Background(), Session{In: strings.NewReader(""), Out: io.Discard}); err != ErrClosed {
		t.Fatalf("Serve after Close: %v, want ErrClosed", err)
	}
}

// touchConn records any read or write.
type touchConn struct {
	net.Conn
	touched bool
}

func (c *touchConn) Read([]byte) (int, error)  { c.touched = true; return 0, io.EOF }
func (c *touchConn) Write([]byte) (int, error) { c.touched = true; return 0, io.ErrClosedPipe }
func (c *touchConn) Close() error              { return nil }
