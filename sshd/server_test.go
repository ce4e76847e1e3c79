package sshd

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/supervisor"
)

func newTestServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.User == nil {
		cfg.User = me(t)
	}
	s, err := New(cfg, zerolog.Nop(), supervisor.NewReaper(zerolog.Nop(), false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// A client that connects and says nothing is dropped at the handshake
// deadline instead of holding a goroutine and the stream forever.
func TestHandshakeTimeout(t *testing.T) {
	s := newTestServer(t, Config{HandshakeTimeout: 50 * time.Millisecond})
	a, b := net.Pipe()
	defer b.Close()
	done := make(chan struct{})
	go func() {
		s.ServeConn(context.Background(), a, streams.Peer{User: "test"})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn still running long after the handshake deadline")
	}
}

// Over the uplink no client authentication is asked for, and a session
// that starts no program can still be opened and closed; Close then
// returns with no connection left.
func TestUplinkNoAuthAndClose(t *testing.T) {
	s := newTestServer(t, Config{})
	a, b := tcpPair(t)
	go s.ServeConn(context.Background(), a, streams.Peer{})
	conn, chans, reqs, err := gossh.NewClientConn(b, "pipe", &gossh.ClientConfig{User: "x", HostKeyCallback: gossh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	client := gossh.NewClient(conn, chans, reqs)
	sess, err := client.NewSession()
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	if err := sess.Setenv("LANG", "C.UTF-8"); err != nil {
		t.Errorf("env LANG refused: %v", err)
	}
	if err := sess.Setenv("LD_PRELOAD", "/x.so"); err == nil {
		t.Errorf("env LD_PRELOAD accepted")
	}
	// A keepalive gets an answer (any answer keeps OpenSSH happy).
	if _, _, err := client.SendRequest("keepalive@openssh.com", true, nil); err != nil {
		t.Errorf("keepalive: %v", err)
	}
	sess.Close()
	s.Close()
	if err := client.Wait(); err == nil {
		t.Log("connection ended cleanly")
	}
}

// tcpPair is a connected loopback pair: SSH needs buffered conns (both
// sides send their version at once, which deadlocks net.Pipe).
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// Past MaxConns a connection is closed at once; Close ends the others.
func TestMaxConns(t *testing.T) {
	s := newTestServer(t, Config{MaxConns: 1})
	a1, _ := tcpPair(t)
	go s.ServeConn(context.Background(), a1, streams.Peer{})
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	a2, b2 := tcpPair(t)
	s.ServeConn(context.Background(), a2, streams.Peer{}) // returns at once
	_ = b2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := b2.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("second connection was served")
	}
	s.Close()
}
