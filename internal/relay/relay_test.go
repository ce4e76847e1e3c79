package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
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

// countingSink is a yamux stream whose SinkTo counts what the receive
// loop handed straight to the socket.
type countingSink struct {
	*yamux.Stream
	direct atomic.Int64
}

func (c *countingSink) SinkTo(w io.Writer, try func([]byte) int, buf []byte) (int64, error) {
	return c.Stream.SinkTo(w, func(p []byte) int {
		n := try(p)
		c.direct.Add(int64(n))
		return n
	}, buf)
}

// TestRelaySinksUplinkStream: relaying a yamux stream to a TCP socket,
// small frames go straight from the receive loop to the socket (SinkTo
// and tryWriter), and the echo comes back whole and in order, small
// messages and bulk alike.
func TestRelaySinksUplinkStream(t *testing.T) {
	echo := listen(t, func(c net.Conn) { _, _ = io.Copy(c, c); c.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conf := yamux.DefaultConfig()
	conf.LogOutput = io.Discard
	client, err := yamux.Client(cc, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := yamux.Server(<-acc, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	sink := make(chan *countingSink, 1)
	go func() {
		st, err := server.AcceptStream()
		if err != nil {
			return
		}
		back, err := net.Dial("tcp", echo)
		if err != nil {
			st.Close()
			return
		}
		cs := &countingSink{Stream: st}
		sink <- cs
		Relay(cs, back)
	}()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 300<<10)
	for i := 0; i < 500; i++ {
		msg := []byte(fmt.Sprintf("keystroke %d;", i))
		if i%100 == 99 {
			msg = bytes.Repeat([]byte{byte(i)}, 200<<10)
		}
		if _, err := st.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatalf("echo %d: %v, got %q...", i, err, buf[:min(len(msg), 20)])
		}
	}
	if n := (<-sink).direct.Load(); n == 0 {
		t.Fatal("no byte went straight from the receive loop to the socket")
	}
}
