package sshd

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/supervisor"
)

// failingListener fails n accepts with err, then reports itself closed.
type failingListener struct {
	n   int
	err error
}

func (f *failingListener) Accept() (net.Conn, error) {
	if f.n > 0 {
		f.n--
		return nil, f.err
	}
	return nil, net.ErrClosed
}
func (f *failingListener) Close() error   { return nil }
func (f *failingListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22} }

// The in-sandbox listener survives accept errors (EMFILE) with the one
// back-off, 5 ms doubling to 1 s, in synctest's fake clock; only a closed
// listener ends the loop.
func TestAcceptLoopBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, err := New(Config{User: me(t)}, zerolog.Nop(), supervisor.NewReaper(zerolog.Nop(), false))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		emfile := &net.OpError{Op: "accept", Net: "tcp", Err: fmt.Errorf("accept4: %w", syscall.EMFILE)}
		start := time.Now()
		// 5+10+...+640 ms, then two waits at the 1 s cap.
		s.acceptLoop(&failingListener{n: 10, err: emfile})
		if got, want := time.Since(start), 1275*time.Millisecond+2*time.Second; got != want {
			t.Fatalf("rule broken: accept errors are retried after 5 ms doubling to 1 s: the loop waited %v, want %v", got, want)
		}
	})
}
