package relay

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestRelayHalfClose: a client that sends a request and half-closes still
// gets the whole answer back through the relay (EOF passed on as FIN).
func TestRelayHalfClose(t *testing.T) {
	echo := listen(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		_, _ = c.Write(b)
		c.Close()
	})
	front := listen(t, func(c net.Conn) {
		back, err := net.Dial("tcp", echo)
		if err != nil {
			c.Close()
			return
		}
		Relay(c, back)
	})
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "ping" {
		t.Fatalf("half-close rule broken: got %q, %v; want the echo after our FIN", got, err)
	}
}

func listen(t *testing.T, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}
