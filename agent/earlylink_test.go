package agent

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// fakeProxy accepts uplinks on loopback and runs the proxy's side of the
// v2 handshake with token; each authenticated link's session is sent on
// links.
type fakeProxy struct {
	ln    net.Listener
	links chan *yamux.Session
	conns chan struct{} // one value per accepted connection
}

func newFakeProxy(t *testing.T, addr, id, token string) *fakeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("listen %s: %v", addr, err) // a port taken meanwhile
	}
	p := &fakeProxy{ln: ln, links: make(chan *yamux.Session, 4), conns: make(chan struct{}, 16)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns <- struct{}{}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			h, err := uplink.ReadHello(c)
			if err != nil || h.SandboxID != id {
				c.Close()
				continue
			}
			if _, _, err := uplink.ProxyChallenge(c, h, []byte(token)); err != nil {
				c.Close()
				continue
			}
			if uplink.WriteWelcome(c, uplink.Welcome{OK: true}) != nil {
				c.Close()
				continue
			}
			_ = c.SetDeadline(time.Time{})
			sess, err := yamux.Client(c, uplink.MuxConfig(zerolog.Nop()))
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { sess.Close() })
			p.links <- sess
		}
	}()
	return p
}

// The first uplink is dialed and authenticated by DialEarly alone, before
// the agent exists (the start's provisioning and capabilities run
// meanwhile); Run then serves that same connection: no second dial, and a
// request sent on it before Run started is answered.
func TestEarlyUplinkServedByRun(t *testing.T) {
	const id, token = "sbx-early", "0123456789abcdef0123456789abcdef"
	proxy := newFakeProxy(t, "127.0.0.1:0", id, token)
	cfg := Defaults()
	cfg.ProxyAddr, cfg.SandboxID, cfg.Token, cfg.ControlSocket = proxy.ln.Addr().String(), id, token, ""

	early := DialEarly(cfg, "test")
	if early == nil {
		t.Fatal("DialEarly returned nil for a dialing agent")
	}
	var sess *yamux.Session
	select {
	case sess = <-proxy.links:
	case <-time.After(10 * time.Second):
		t.Fatal("the early uplink did not authenticate without Run")
	}
	// A request before the agent serves: it waits for the agent's reply.
	answer := make(chan string, 1)
	go func() {
		c, err := sess.OpenStream()
		if err != nil {
			answer <- err.Error()
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := uplink.WriteHeader(c, uplink.Header{Kind: uplink.KindAPI}); err != nil {
			answer <- err.Error()
			return
		}
		if err := uplink.ReadReply(c); err != nil {
			answer <- err.Error()
			return
		}
		_, _ = io.WriteString(c, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			answer <- err.Error()
			return
		}
		resp.Body.Close()
		answer <- resp.Status
	}()
	time.Sleep(50 * time.Millisecond) // the request is in flight before Run

	a := New(cfg, zerolog.Nop(), "test", Parts{Uplink: early})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-ran
	}()
	select {
	case got := <-answer:
		if got != "200 OK" {
			t.Fatalf("health on the early uplink: %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer on the early uplink")
	}
	if n := len(proxy.conns); n != 1 {
		t.Fatalf("the proxy saw %d connections, want the early one only", n)
	}
}

// An early dial that fails is the first attempt's failure: Run dials
// again (after the back-off) and serves that link.
func TestEarlyUplinkFailureRedials(t *testing.T) {
	const id, token = "sbx-early", "0123456789abcdef0123456789abcdef"
	// Nothing listens yet: the early dial is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := Defaults()
	cfg.ProxyAddr, cfg.SandboxID, cfg.Token, cfg.ControlSocket = addr, id, token, ""
	early := DialEarly(cfg, "test")
	a := New(cfg, zerolog.Nop(), "test", Parts{Uplink: early})
	<-early.done // refused before the proxy is up
	if early.err == nil {
		t.Fatal("the early dial to a closed port succeeded")
	}
	proxy := newFakeProxy(t, addr, id, token)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-ran
	}()
	select {
	case <-proxy.links:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not redial after the early dial failed")
	}
}
