package uplink

import (
	"bufio"
	"bytes"
	"io"
	"math/rand"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/netx"
)

// tcpPair is two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// pipeLink is a yamux session pair over net.Pipe: no socket to splice
// from, as a TLS link.
func pipeLink(t *testing.T) (send, recv *yamux.Session) {
	t.Helper()
	a, b := net.Pipe()
	send, _ = yamux.Server(a, MuxConfig(zerolog.Nop()))
	recv, _ = yamux.Client(b, MuxConfig(zerolog.Nop()))
	t.Cleanup(func() { send.Close(); recv.Close() })
	return send, recv
}

// spliceCase sends data over a stream in writes of the sizes write picks,
// reads pre bytes with Read (the transport reading a response's headers:
// the window grows, frames queue), then splices the rest to a socket
// whose peer collects it. It returns what the peer got and the spliced
// count.
func spliceCase(t *testing.T, send, recv *yamux.Session, data []byte, pre int, write func() int) ([]byte, int64) {
	t.Helper()
	go func() {
		st, err := send.Accept()
		if err != nil {
			return
		}
		w := Wrap(st).(*Stream)
		for b := data; len(b) > 0; {
			n := min(write(), len(b))
			if _, err := w.Write(b[:n]); err != nil {
				return
			}
			b = b[n:]
		}
	}()
	st, err := recv.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte{0}); err != nil { // the SYN: the peer's Accept
		t.Fatal(err)
	}
	s := Wrap(st).(*Stream)
	head := make([]byte, pre)
	if _, err := io.ReadFull(s, head); err != nil {
		t.Fatal(err)
	}
	out, peer := tcpPair(t)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, spliced, err := s.SpliceTo(out, int64(len(data)-pre), 0)
	if err != nil || n != int64(len(data)-pre) {
		t.Fatalf("SpliceTo: %d of %d bytes, %v", n, len(data)-pre, err)
	}
	out.Close()
	return append(head, <-got...), spliced
}

// SpliceTo moves a stream's bytes to a socket in order and whole: frames
// big and tiny (many to a read of the session's buffer), bytes queued
// before it started; by splice where both ends are sockets, by copy where
// the link is not one (TLS).
func TestSpliceToMovesStreamBytes(t *testing.T) {
	data := make([]byte, 24<<20+777)
	rand.New(rand.NewSource(2)).Read(data)
	rng := rand.New(rand.NewSource(3))
	for _, c := range []struct {
		name    string
		pre     int
		write   func() int
		link    func(*testing.T) (*yamux.Session, *yamux.Session)
		spliced func(int64) bool
	}{
		{"big frames", 100, func() int { return 1 << 20 }, func(t *testing.T) (*yamux.Session, *yamux.Session) { return tcpLink(t, true) },
			func(n int64) bool { return n >= int64(len(data))/2 }},
		{"tiny frames", 5000, func() int { return 1 + rng.Intn(3000) }, func(t *testing.T) (*yamux.Session, *yamux.Session) { return tcpLink(t, true) },
			func(n int64) bool { return n >= int64(len(data))/2 }},
		{"not a socket", 100, func() int { return 1 << 20 }, pipeLink, func(n int64) bool { return n == 0 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			send, recv := c.link(t)
			got, spliced := spliceCase(t, send, recv, data, c.pre, c.write)
			if !bytes.Equal(got, data) {
				t.Fatalf("got %d bytes, want %d (equal: %v)", len(got), len(data), bytes.Equal(got[:min(len(got), len(data))], data[:min(len(got), len(data))]))
			}
			if !c.spliced(spliced) {
				t.Fatalf("%d of %d bytes spliced", spliced, len(data))
			}
			t.Logf("%d of %d bytes spliced", spliced, len(data))
		})
	}
}

// A spliced stream whose destination stops reading holds only its own
// window: the session's receive loop never waits on its pipe, so another
// stream of the session still gets its bytes.
func TestSpliceToStalledLeavesOthersFlowing(t *testing.T) {
	send, recv := tcpLink(t, true)
	big := make([]byte, 64<<20)
	go func() {
		for i := 0; i < 2; i++ {
			st, err := send.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = Wrap(st).Write(big) }()
		}
	}()
	open := func() *Stream {
		st, err := recv.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if _, err := st.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
		return Wrap(st).(*Stream)
	}
	stalled := open()
	out, _ := tcpPair(t) // its peer never reads
	go func() { _, _, _ = stalled.SpliceTo(out, int64(len(big)), 0) }()
	other := open()
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, other, 32<<20)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the other stream got no bytes past the stalled splice: the receive loop waits on it")
	}
}

// take never waits on its pipe: with no free slot it takes nothing, with
// one it takes what fits, and the rest stays for the queue, in order.
func TestTakeStopsAtAFullPipe(t *testing.T) {
	a, b := tcpPair(t)
	p, err := newPipe(16 << 10)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	fill := bytes.Repeat([]byte{'x'}, p.size)
	if k, err := io.Copy(fdWriter(p.w), bytes.NewReader(fill)); err != nil || k != int64(p.size) {
		t.Fatalf("fill the pipe: %d, %v", k, err)
	}
	data := make([]byte, 20000)
	rand.New(rand.NewSource(4)).Read(data)
	if _, err := a.Write(data); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(b)
	if _, err := br.Peek(1000); err != nil { // some bytes buffered, as the frame header's read leaves them
		t.Fatal(err)
	}
	d := &diversion{p: p, src: netx.Socket(b)}
	took := make(chan int, 1)
	go func() {
		k, err := d.take(br, len(data))
		if err != nil {
			t.Error(err)
		}
		took <- k
	}()
	wait := func() int {
		select {
		case k := <-took:
			return k
		case <-time.After(30 * time.Second):
			t.Fatal("take waits on a full pipe")
			return 0
		}
	}
	if k := wait(); k != 0 {
		t.Fatalf("a full pipe took %d bytes", k)
	}
	if _, err := io.ReadFull(fdReader(p.r), make([]byte, 4096)); err != nil { // one slot free
		t.Fatal(err)
	}
	go func() {
		k, err := d.take(br, len(data))
		if err != nil {
			t.Error(err)
		}
		took <- k
	}()
	k := wait()
	if k <= 0 || k >= len(data) {
		t.Fatalf("one free slot took %d of %d bytes", k, len(data))
	}
	piped := make([]byte, p.size-4096+k)
	if _, err := io.ReadFull(fdReader(p.r), piped); err != nil {
		t.Fatal(err)
	}
	rest := make([]byte, len(data)-k)
	if _, err := io.ReadFull(br, rest); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(piped[p.size-4096:], data[:k]) || !bytes.Equal(rest, data[k:]) {
		t.Fatal("bytes out of order between the pipe and the queue")
	}
}

type fdWriter int

func (w fdWriter) Write(b []byte) (int, error) {
	n, err := unix.Write(int(w), b)
	return max(n, 0), err
}

type fdReader int

func (r fdReader) Read(b []byte) (int, error) { n, err := unix.Read(int(r), b); return max(n, 0), err }
