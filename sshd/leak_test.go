package sshd

import (
	"context"
	"net"
	"testing"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/leakcheck"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/supervisor"
)

// TestCloseLeaksNothing: once Close has returned, the goroutines and fds
// of connections, sessions (a running program, its input copy), remote
// forwards and relays are gone, even a relay whose target never speaks
// nor closes (it would hold the relay forever if the connection's end did
// not close it).
func TestCloseLeaksNothing(t *testing.T) {
	u := me(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	base := leakcheck.Take(t)

	s, reaper, c, b := serveUncleaned(t, u)

	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("sleep 100"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatalf("remote forward: %v", err)
	}
	fc, err := c.Dial("tcp", silent.Addr().String())
	if err != nil {
		t.Fatalf("direct-tcpip: %v", err)
	}
	defer fc.Close()
	target, err := silent.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close() // held open and silent across the check
	_, _ = fc.Write([]byte("hello"))
	_ = fc.(interface{ CloseWrite() error }).CloseWrite()

	c.Close()
	s.Close()
	reaper.Close()
	b.Close()
	base.Allow(1, 0).Check(t)
}

// tcpPairNoCleanup is tcpPair whose ends the caller closes.
func tcpPairNoCleanup(t *testing.T) (net.Conn, net.Conn) {
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
	return a, b
}

// serveUncleaned is a server (with its own reaper) and a client over one
// TCP pair, none of it closed by t.Cleanup: leak tests close it
// themselves, then count what is left.
func serveUncleaned(t *testing.T, u *identity.User) (*Server, *supervisor.Reaper, *gossh.Client, net.Conn) {
	t.Helper()
	reaper := supervisor.NewReaper(zerolog.Nop(), false)
	go reaper.Run(nil)
	s, err := New(Config{User: u}, zerolog.Nop(), reaper)
	if err != nil {
		t.Fatal(err)
	}
	a, b := tcpPairNoCleanup(t)
	go s.ServeConn(context.Background(), a, streams.Peer{User: "test"})
	conn, chans, reqs, err := gossh.NewClientConn(b, "pipe", &gossh.ClientConfig{User: "x", HostKeyCallback: gossh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return s, reaper, gossh.NewClient(conn, chans, reqs), b
}
