package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Session channels that ask for no program are capped per connection and
// closed at their deadline; all channels together are capped too, and a
// started session frees its unstarted slot.
func TestChannelLimits(t *testing.T) {
	c := dialWith(t, Config{MaxChannelsPerConn: 6, MaxUnstartedPerConn: 3, UnstartedTimeout: 300 * time.Millisecond})
	open := func() (gossh.Channel, error) {
		ch, reqs, err := c.OpenChannel("session", nil)
		if err == nil {
			go gossh.DiscardRequests(reqs)
		}
		return ch, err
	}
	var idle []gossh.Channel
	for i := 0; i < 3; i++ {
		ch, err := open()
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		idle = append(idle, ch)
	}
	var oce *gossh.OpenChannelError
	if _, err := open(); !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage {
		t.Fatalf("4th unstarted session: %v, want refused", err)
	}
	// Each idle channel is closed by the server at its deadline.
	for i, ch := range idle {
		done := make(chan error, 1)
		go func() { _, err := ch.Read(make([]byte, 1)); done <- err }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("idle session %d not closed", i)
		}
	}
	// Started sessions do not count as unstarted, but count as channels.
	var live []*gossh.Session
	for i := 0; i < 6; i++ {
		// The server frees a closed channel's slot just after closing it.
		sess, err := c.NewSession()
		for try := 0; err != nil && try < 100; try++ {
			time.Sleep(20 * time.Millisecond)
			sess, err = c.NewSession()
		}
		if err != nil {
			t.Fatalf("session %d after the idle ones closed: %v", i, err)
		}
		if err := sess.Start("sleep 30"); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		live = append(live, sess)
	}
	if _, err := open(); !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage {
		t.Fatalf("7th channel: %v, want refused", err)
	}
	for _, sess := range live {
		_ = sess.Signal(gossh.SIGKILL)
		sess.Close()
	}
}

// Authentication lifts the handshake deadline: an uplink connection
// outlives it.
func TestDeadlineLiftedAfterAuth(t *testing.T) {
	c := dialWith(t, Config{HandshakeTimeout: 200 * time.Millisecond})
	time.Sleep(600 * time.Millisecond)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatalf("session after the handshake deadline: %v", err)
	}
	if out, err := sess.Output("echo ok"); err != nil || string(out) != "ok\n" {
		t.Fatalf("exec: %v %q", err, out)
	}
}

// On the listener, a signed public-key login lifts the deadline; a
// connection that stops after the key query (no signature) keeps it.
func TestListenerDeadlineNeedsSignature(t *testing.T) {
	// 1 s: the second connection's key exchange must reach the key query
	// within it on a loaded machine under -race (300 ms once did not).
	const deadline = time.Second
	s := newTestServer(t, Config{Listen: "127.0.0.1:0", HandshakeTimeout: deadline})
	s.direct.PublicKeyHandler = func(ssh.Context, ssh.PublicKey) bool { return true }
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := gossh.NewSignerFromKey(priv)
	serve := func() net.Conn {
		a, b := tcpPair(t)
		go s.direct.HandleConn(a)
		return b
	}
	cfg := func(sig gossh.Signer) *gossh.ClientConfig {
		return &gossh.ClientConfig{User: "u", HostKeyCallback: gossh.InsecureIgnoreHostKey(), Auth: []gossh.AuthMethod{gossh.PublicKeys(sig)}}
	}
	conn, chans, reqs, err := gossh.NewClientConn(serve(), "x", cfg(signer))
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	c := gossh.NewClient(conn, chans, reqs)
	defer c.Close()
	time.Sleep(deadline + 500*time.Millisecond)
	if _, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err != nil {
		t.Fatalf("authenticated connection cut at the handshake deadline: %v", err)
	}

	queried, release := make(chan struct{}, 1), make(chan struct{})
	defer close(release)
	b := serve()
	closed := make(chan struct{})
	ended := make(chan error, 1)
	go func() {
		_, _, _, err := gossh.NewClientConn(readCloseSignal{b, closed}, "x", cfg(stall{signer, queried, release}))
		ended <- err
	}()
	select {
	case <-queried:
	case err := <-ended:
		t.Fatalf("the connection ended before its key query: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no key query within 20 s")
	}
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("query-only connection outlived the handshake deadline")
	}
}

type stall struct {
	gossh.Signer
	queried chan<- struct{}
	release <-chan struct{}
}

func (s stall) Sign(io.Reader, []byte) (*gossh.Signature, error) {
	s.queried <- struct{}{}
	<-s.release
	return nil, errors.New("released")
}

type readCloseSignal struct {
	net.Conn
	closed chan struct{}
}

func (c readCloseSignal) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		select {
		case <-c.closed:
		default:
			close(c.closed)
		}
	}
	return n, err
}
