package forward

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"testing"
	"time"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/leakcheck"
)

// TestSSHForwardsCloseLeaksNothing: once the SSH server's connections are
// gone and SSHForwards.Close has returned, no forwarding goroutine or fd
// is left, not even relays whose far end stays open and silent (an -L
// target, a client of an -R listener): the connection's end closes them.
// After Close, a new connection is refused.
func TestSSHForwardsCloseLeaksNothing(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	base := leakcheck.Take(t)

	f := NewSSHForwards(zerolog.Nop())
	srv := newForwardServer(t, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	client, err := gossh.Dial("tcp", ln.Addr().String(), &gossh.ClientConfig{User: "x", HostKeyCallback: gossh.InsecureIgnoreHostKey()})
	if err != nil {
		t.Fatal(err)
	}

	// -L to a target that never speaks nor closes.
	lc, err := client.Dial("tcp", silent.Addr().String())
	if err != nil {
		t.Fatalf("direct-tcpip: %v", err)
	}
	target, err := silent.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	_ = lc.(interface{ CloseWrite() error }).CloseWrite()

	// -R whose connecting peer stays open and silent.
	rl, err := client.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("remote forward: %v", err)
	}
	peer, err := net.Dial("tcp", rl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	rc, err := rl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	_ = rc.(interface{ CloseWrite() error }).CloseWrite()

	client.Close()
	srv.Close()
	f.Close()
	f.Close() // safe twice

	// Refused once closed: the handshake never happens.
	a, b := net.Pipe()
	go srv.HandleConn(a)
	_ = b.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Error("a connection was served after Close")
	}
	b.Close()
	base.Allow(2, 0).Check(t) // target and peer: the test's own ends
}

// newForwardServer is an SSH server with only forwarding, as sshd wires it.
func newForwardServer(t *testing.T, f *SSHForwards) *ssh.Server {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	u := currentUser(t)
	return &ssh.Server{
		HostSigners:     []ssh.Signer{signer},
		ChannelHandlers: map[string]ssh.ChannelHandler{"direct-tcpip": DirectTCPIP},
		RequestHandlers: RequestHandlers(),
		ConnCallback: func(ctx ssh.Context, c net.Conn) net.Conn {
			if !f.Attach(ctx, u) {
				return nil
			}
			return c
		},
	}
}
