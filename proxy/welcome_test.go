package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// TestStreamOpenedAtRegistrationFollowsTheWelcome: the proxy registers a
// link before it writes the welcome (so a request sent as soon as the agent
// sees it connected finds the link), which wakes requests waiting for the
// sandbox. One that opens its stream in that window must not put yamux
// frames on the wire ahead of the welcome: the agent reads them as a
// broken welcome ("bad magic"), logs "uplink down" and redials (the start
// flake seen once in ~250 starts). The test holds the welcome until the
// stream's open has been written, or for up to 2 s when the proxy holds
// the frames back; the agent must then read the welcome and get the stream.
func TestStreamOpenedAtRegistrationFollowsTheWelcome(t *testing.T) {
	cfg := &Config{APIKeys: map[string]string{"key": "alice"}, Sandboxes: map[string]SandboxConfig{"s1": {Token: tok}}}
	p := mustNew(t, cfg)
	opened := make(chan error, 1)
	p.beforeWelcome = func(l *Link) {
		go func() {
			_, err := l.sess.OpenStream() // what Registry.Open does first
			opened <- err
		}()
		select {
		case err := <-opened: // written to the wire before the welcome
			opened <- err
		case <-time.After(2 * time.Second): // held back (the fix)
		}
	}
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx, Listeners{Uplink: upLn}) }()
	defer func() { cancel(); <-ran }()

	c, err := net.Dial("tcp", upLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := uplink.AgentHandshake(c, uplink.AgentAuth{SandboxID: "s1", Key: []byte(tok), AgentVersion: "test"}); err != nil {
		t.Fatalf("handshake: %v (a stream opened at registration reached the agent before the welcome)", err)
	}
	sess, err := yamux.Server(c, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	st, err := sess.AcceptStream()
	if err != nil {
		t.Fatalf("the stream opened at registration never arrived: %v", err)
	}
	st.Close()
	if err := <-opened; err != nil {
		t.Fatalf("open: %v", err)
	}
}
