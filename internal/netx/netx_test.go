package netx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
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
