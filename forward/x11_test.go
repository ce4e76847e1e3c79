package forward

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The setup packet is parsed in either byte order, and the cookie swap
// keeps everything else, padding included.
func TestX11SetupSwap(t *testing.T) {
	for _, order := range []binary.ByteOrder{binary.BigEndian, binary.LittleEndian} {
		pkt := func(cookie []byte) []byte {
			b := make([]byte, 12)
			b[0] = 'l'
			if order == binary.BigEndian {
				b[0] = 'B'
			}
			order.PutUint16(b[2:], 11)
			order.PutUint16(b[6:], 18)
			order.PutUint16(b[8:], uint16(len(cookie)))
			b = append(b, "MIT-MAGIC-COOKIE-1\x00\x00"...)
			b = append(b, cookie...)
			return append(b, make([]byte, pad4(len(cookie)))...)
		}
		fake, real := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16)
		s, err := readX11Setup(bytes.NewReader(append(pkt(fake), "rest"...)))
		if err != nil {
			t.Fatal(err)
		}
		if string(s.name) != "MIT-MAGIC-COOKIE-1" || !bytes.Equal(s.cookie, fake) {
			t.Fatalf("%v: parsed %q %x", order, s.name, s.cookie)
		}
		if got := s.withCookie(real); !bytes.Equal(got, pkt(real)) {
			t.Fatalf("%v: swapped %x, want %x", order, got, pkt(real))
		}
		f := x11Failed(order, "no")
		if f[0] != 0 || f[1] != 2 || order.Uint16(f[6:]) != 1 || len(f) != 12 || string(f[8:10]) != "no" {
			t.Fatalf("%v: Failed reply %x", order, f)
		}
	}
	if _, err := readX11Setup(strings.NewReader("GET / HTTP/1.1\r\n\r\n")); err == nil {
		t.Fatal("an HTTP request parsed as an X11 setup")
	}
	if _, err := readX11Setup(strings.NewReader("l\x00\x0b\x00\x00\x00\xff\xff\xff\xff\x00\x00short")); err == nil {
		t.Fatal("a truncated setup parsed")
	}
}

// When every display of the range is taken, the refusal names the range.
func TestX11AllDisplaysTaken(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	n := ln.Addr().(*net.TCPAddr).Port - 6000
	_, lns, err := listenX11(n, n+1)
	for _, l := range lns {
		l.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "is taken") {
		t.Fatalf("listenX11 on a taken port: %v, want every display taken", err)
	}
}

// A sandbox whose loopback is down (a network namespace nobody set up)
// is refused with the reason, although a listener would still bind.
func TestX11NoNetwork(t *testing.T) {
	errc := make(chan error, 1)
	skip := make(chan string, 1)
	go func() {
		// The thread stays in its new namespace and ends with this
		// goroutine (never unlocked).
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			skip <- "cannot make a network namespace: " + err.Error()
			return
		}
		_, lns, err := listenX11(X11DisplayOffset, X11MaxDisplay)
		for _, l := range lns {
			l.Close()
		}
		errc <- err
	}()
	select {
	case why := <-skip:
		t.Skip(why)
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "loopback network") {
			t.Fatalf("listenX11 without a loopback: %v, want a refusal naming the loopback network", err)
		}
	}
}
