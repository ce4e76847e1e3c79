package netx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/rs/zerolog"
)

// flakyListener fails its first n accepts with err, then behaves.
type flakyListener struct {
	net.Listener
	n   int
	err error
}

func (f *flakyListener) Accept() (net.Conn, error) {
	if f.n > 0 {
		f.n--
		return nil, f.err
	}
	return f.Listener.Accept()
}

func TestAcceptRetriesTemporaryErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: fmt.Errorf("accept4: %w", syscall.EMFILE)}
	fl := &flakyListener{Listener: ln, n: 3, err: emfile}
	c, err := Accept(context.Background(), fl, zerolog.Nop())
	if err != nil {
		t.Fatalf("accept after EMFILE episodes: %v (a temporary error must not end the loop)", err)
	}
	c.Close()
}

func TestAcceptReturnsOnClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := Accept(context.Background(), ln, zerolog.Nop()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept on a closed listener: %v, want net.ErrClosed", err)
	}
}

func TestLimiterCaps(t *testing.T) {
	l := &Limiter{Total: 3, PerSource: 2}
	a := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	b := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 1}
	r1, ok1 := l.Acquire(a)
	_, ok2 := l.Acquire(a)
	_, ok3 := l.Acquire(a)
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("per-source cap 2: got %v %v %v", ok1, ok2, ok3)
	}
	_, okb := l.Acquire(b)
	_, okb2 := l.Acquire(b)
	if !okb || okb2 {
		t.Fatalf("total cap 3: got %v %v", okb, okb2)
	}
	r1()
	r1() // releasing twice frees one slot only
	if l.Live() != 2 {
		t.Fatalf("live after release: %d, want 2", l.Live())
	}
	if _, ok := l.Acquire(a); !ok {
		t.Fatal("a released slot must be reusable")
	}
}

func TestListenClosesOverCap(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim := &Limiter{PerSource: 1}
	ln := Listen(raw, lim, zerolog.Nop())
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	c1, _ := net.Dial("tcp", raw.Addr().String())
	defer c1.Close()
	first := <-accepted
	c2, _ := net.Dial("tcp", raw.Addr().String())
	defer c2.Close()
	_ = c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("second connection from one source must be closed at the cap")
	}
	first.Close()
	c3, _ := net.Dial("tcp", raw.Addr().String())
	defer c3.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("a slot freed by Close must admit the next connection")
	}
}

func TestLogRefusalIsThrottled(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	l := &Limiter{Total: 1}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	for i := 0; i < 100; i++ {
		l.LogRefusal(log, addr, "refused")
	}
	if n := bytes.Count(buf.Bytes(), []byte("\n")); n != 1 {
		t.Fatalf("%d log lines for 100 refusals in a burst, want 1", n)
	}
	l.mu.Lock()
	l.lastLog = time.Time{} // as if a second had passed
	l.mu.Unlock()
	l.LogRefusal(log, addr, "refused")
	if !bytes.Contains(buf.Bytes(), []byte(`"refused_unlogged":99`)) {
		t.Fatalf("the next line must count the 99 left out: %s", buf.String())
	}
}

// pipeListener fails its first n accepts with err, then returns one end of
// a net.Pipe: no sockets, so it runs inside a synctest bubble.
type pipeListener struct {
	n   int
	err error
}

func (p *pipeListener) Accept() (net.Conn, error) {
	if p.n > 0 {
		p.n--
		return nil, p.err
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}
func (p *pipeListener) Close() error   { return nil }
func (p *pipeListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "unix"} }

// The accept back-off in the fake clock: 5 ms doubling (5+10+20+40 ms
// before the fifth try), and a stop during a wait ends it at once.
func TestAcceptBackoffSchedule(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: fmt.Errorf("accept4: %w", syscall.EMFILE)}
	t.Run("temporary errors are retried after 5 ms doubling", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			c, err := Accept(t.Context(), &pipeListener{n: 4, err: emfile}, zerolog.Nop())
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			c.Close()
			if got, want := time.Since(start), 75*time.Millisecond; got != want {
				t.Fatalf("accepted after %v of back-off, want %v", got, want)
			}
		})
	})
	t.Run("the wait is capped at 1 s", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			// 5+10+...+640 ms, then three waits at the 1 s cap.
			c, err := Accept(t.Context(), &pipeListener{n: 11, err: emfile}, zerolog.Nop())
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			c.Close()
			if got, want := time.Since(start), 1275*time.Millisecond+3*time.Second; got != want {
				t.Fatalf("accepted after %v of back-off, want %v", got, want)
			}
		})
	})
	t.Run("a stop during the back-off returns the context's error", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 12*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := Accept(ctx, &pipeListener{n: 100, err: emfile}, zerolog.Nop())
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("accept: %v, want the context's error", err)
			}
			if got := time.Since(start); got != 12*time.Millisecond {
				t.Fatalf("returned after %v, want at the stop (12ms)", got)
			}
		})
	})
}
