package proxy

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/leakcheck"
	"github.com/tensorlake/tl-agent/uplink"
)

// TestRunLeaksNothing: when Run returns, every goroutine the proxy started
// has ended, including the dialer of a listen-mode agent (ConnectAgent),
// here stuck in the handshake with a peer that says nothing, and the
// drains of streams an agent opened; then no fd or goroutine is left once
// the test's own agent ends are gone.
func TestRunLeaksNothing(t *testing.T) {
	base := leakcheck.Take(t)
	cfg := &Config{APIKeys: map[string]string{"key": "alice"}, Sandboxes: map[string]SandboxConfig{"dialer": {Token: tok}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p := mustNew(t, cfg)
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	agentLn, err := net.Listen("tcp", "127.0.0.1:0") // a listen-mode agent
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p.ConnectAgent(ctx, "tcp", agentLn.Addr().String())
	ran := make(chan error, 1)
	go func() { ran <- p.Run(ctx, Listeners{Uplink: upLn}) }()

	c, err := net.Dial("tcp", upLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sess := fakeAgent(t, c, "dialer")
	defer sess.Close()
	silent, err := agentLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	agentLn.Close()
	if p.reg.WaitLink(ctx, "dialer", 10*time.Second) == nil {
		t.Fatal("the agent never linked")
	}
	// The agent opens a stream and says nothing on it: the proxy drains
	// it in a goroutine of the link's.
	if _, err := sess.OpenStream(); err != nil {
		t.Fatal(err)
	}

	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return")
	}
	if left := leakcheck.Running("tl-agent/proxy."); len(left) > 0 {
		t.Fatalf("Run returned with %d of its goroutines running:\n\n%s", len(left), strings.Join(left, "\n\n"))
	}
	sess.Close()
	silent.Close()
	base.Check(t)
}

// fakeAgent does a version 1 handshake as sandbox id on c and returns the
// agent's end of the link.
func fakeAgent(t *testing.T, c net.Conn, id string) *yamux.Session {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := uplink.WriteHelloV1(c, uplink.Hello{SandboxID: id, Token: tok, AgentVersion: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := uplink.ReadWelcome(c); err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	_ = c.SetDeadline(time.Time{})
	s, err := yamux.Server(c, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
