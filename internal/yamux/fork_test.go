package yamux

// Tests of the tl-agent fork's two changes (FORK.md): reads lent to the
// receive loop, bodies written from the caller's slice.

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestForkLentReadKeepsOrder: frames larger and smaller than the reader's
// slice, arriving while it waits and while it does not, come out whole
// and in order.
func TestForkLentReadKeepsOrder(t *testing.T) {
	client, server := testClientServer(t)
	want := make([]byte, 3<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go func() {
		s, err := client.OpenStream()
		if err != nil {
			return
		}
		defer s.Close()
		for off, i := 0, 0; off < len(want); i++ {
			n := []int{100, 64 << 10, 300 << 10, 5000}[i%4]
			if n > len(want)-off {
				n = len(want) - off
			}
			if _, err := s.Write(want[off : off+n]); err != nil {
				return
			}
			off += n
		}
	}()
	s, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 256<<10)
	for i := 0; got.Len() < len(want) && i < 1<<20; i++ {
		if i%3 == 0 {
			time.Sleep(time.Millisecond) // let frames queue in recvBuf
		}
		n, err := s.Read(buf[:[]int{256 << 10, 8 << 10, 1, 100 << 10}[i%4]])
		got.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("got %d bytes, want %d, equal prefix %d", got.Len(), len(want), commonPrefix(got.Bytes(), want))
	}
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// TestForkLentReadDeadline: a read that times out with its slice lent
// takes it back: data arriving later is read by the next Read, never
// written into the old slice.
func TestForkLentReadDeadline(t *testing.T) {
	client, server := testClientServer(t)
	c, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	s, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(s, one); err != nil {
		t.Fatal(err)
	}
	old := make([]byte, 64<<10)
	_ = s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := s.Read(old); !errors.Is(err, ErrTimeout) || n != 0 {
		t.Fatalf("read: %d, %v; want a timeout", n, err)
	}
	_ = s.SetReadDeadline(time.Time{})
	msg := bytes.Repeat([]byte("abc"), 10000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read after the timeout: %v, equal %v", err, bytes.Equal(got, msg))
	}
	if !bytes.Equal(old, make([]byte, len(old))) {
		t.Fatal("data was written into the slice of a read that had returned")
	}
}

// TestForkWriteTimeoutMidBody: a data frame written from the caller's
// goroutine that is stuck on the connection (the peer reads nothing) past
// ConnectionWriteTimeout returns ErrConnectionWriteTimeout and ends the
// session (the frame may be half written).
func TestForkWriteTimeoutMidBody(t *testing.T) {
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 200 * time.Millisecond
	a, b := testConnTCP(t) // b never reads
	_ = a.(*net.TCPConn).SetWriteBuffer(4 << 10)
	_ = b.(*net.TCPConn).SetReadBuffer(4 << 10)
	client, err := Client(a, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(make([]byte, initialStreamWindow))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrConnectionWriteTimeout) {
			t.Fatalf("write: %v, want ErrConnectionWriteTimeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write stuck past its timeout")
	}
	if !client.IsClosed() {
		t.Fatal("session still open after a write timed out mid-frame")
	}
}
