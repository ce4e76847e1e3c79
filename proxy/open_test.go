package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/uplink"
)

// memAgent is the agent's end of an uplink, in memory: it reads each
// stream's header and answers it by the header's kind (tcp: OK then echo;
// unix: refused; ssh: closes without a reply; api: says nothing).
type memAgent struct {
	mu      sync.Mutex
	headers []uplink.Header
	wg      sync.WaitGroup
}

func (f *memAgent) serve(s *yamux.Session) {
	defer f.wg.Done()
	for {
		st, err := s.AcceptStream()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer st.Close()
			h, err := uplink.ReadHeader(st)
			if err != nil {
				return
			}
			f.mu.Lock()
			f.headers = append(f.headers, h)
			f.mu.Unlock()
			switch h.Kind {
			case uplink.KindTCP:
				_ = uplink.WriteReply(st, uplink.StatusOK, "")
				_, _ = io.Copy(st, st)
			case uplink.KindUnix:
				_ = uplink.WriteReply(st, uplink.StatusUnreachable, "connect "+h.Path+": no such file")
			case uplink.KindSSH:
				// closes without a reply
			case uplink.KindAPI:
				_, _ = io.Copy(io.Discard, st) // silent until the proxy gives up
			}
		}()
	}
}

func (f *memAgent) seen() []uplink.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uplink.Header(nil), f.headers...)
}

// openRig is a registry with sandbox "sbx" linked, over net.Pipe and
// yamux, to a memAgent ("idle" is configured and never linked).
func openRig(t *testing.T) (*Registry, *Link, *memAgent) {
	t.Helper()
	r := NewRegistry(&Config{Sandboxes: map[string]SandboxConfig{
		"sbx": {Token: "0123456789abcdef"}, "idle": {Token: "fedcba9876543210"}}})
	proxyEnd, agentEnd := net.Pipe()
	cs, err := yamux.Client(proxyEnd, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	ss, err := yamux.Server(agentEnd, uplink.MuxConfig(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	fa := &memAgent{}
	fa.wg.Add(1)
	go fa.serve(ss)
	t.Cleanup(func() { cs.Close(); ss.Close(); fa.wg.Wait() })
	l := &Link{ID: "sbx", sess: cs, Protocol: uplink.Version}
	if err := r.registerV2(l, false, true, []byte("0123456789abcdef"), []byte("secret")); err != nil {
		t.Fatalf("register: %v", err)
	}
	return r, l, fa
}

// TestRegistryOpen is the contract of Registry.Open, the one way every
// front door reaches a sandbox: which sandbox, which answer, which error.
func TestRegistryOpen(t *testing.T) {
	ctx := context.Background()
	t.Run("an unconfigured sandbox is ErrUnknownSandbox", func(t *testing.T) {
		r, _, _ := openRig(t)
		if _, err := r.Open(ctx, "nope", uplink.Header{Kind: uplink.KindAPI}); !errors.Is(err, ErrUnknownSandbox) {
			t.Fatalf("rule broken: unknown id must be ErrUnknownSandbox (404), got %v", err)
		}
	})
	t.Run("a configured sandbox without a link is ErrNotConnected", func(t *testing.T) {
		r, _, _ := openRig(t)
		if _, err := r.Open(ctx, "idle", uplink.Header{Kind: uplink.KindAPI}); !errors.Is(err, ErrNotConnected) {
			t.Fatalf("rule broken: no link must be ErrNotConnected (503), got %v", err)
		}
	})
	t.Run("the agent gets the header as sent and an OK stream carries bytes both ways", func(t *testing.T) {
		r, _, fa := openRig(t)
		h := uplink.Header{Kind: uplink.KindTCP, Port: 8080, User: "alice", Remote: "192.0.2.1:5000"}
		c, err := r.Open(ctx, "sbx", h)
		if err != nil {
			t.Fatalf("rule broken: an OK reply must give a stream, got %v", err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("rule broken: the stream must carry the target's bytes after the reply: %q, %v", buf, err)
		}
		if got := fa.seen(); len(got) != 1 || got[0] != h {
			t.Fatalf("rule broken: the agent must read the header as sent: %+v, want [%+v]", got, h)
		}
	})
	t.Run("an agent's refusal is a ReplyError with its status and message", func(t *testing.T) {
		r, _, _ := openRig(t)
		_, err := r.Open(ctx, "sbx", uplink.Header{Kind: uplink.KindUnix, Path: "/run/x.sock"})
		var re *uplink.ReplyError
		if !errors.As(err, &re) || re.Status != uplink.StatusUnreachable || re.Msg != "connect /run/x.sock: no such file" {
			t.Fatalf("rule broken: a refusal must come back as the agent's ReplyError (502), got %v", err)
		}
	})
	t.Run("a stream closed without a reply is ErrNotConnected", func(t *testing.T) {
		r, _, _ := openRig(t)
		if _, err := r.Open(ctx, "sbx", uplink.Header{Kind: uplink.KindSSH}); !errors.Is(err, ErrNotConnected) {
			t.Fatalf("rule broken: no reply must be ErrNotConnected, got %v", err)
		}
	})
	t.Run("a silent agent is given up on at the caller's deadline", func(t *testing.T) {
		r, _, _ := openRig(t)
		dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		done := make(chan error, 1)
		go func() { _, err := r.Open(dctx, "sbx", uplink.Header{Kind: uplink.KindAPI}); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotConnected) {
				t.Fatalf("rule broken: a silent agent must be ErrNotConnected, got %v", err)
			}
		case <-time.After(replyTimeout):
			t.Fatal("rule broken: Open outlived its caller's deadline (it waited for the reply timeout)")
		}
	})
	t.Run("a cancelled caller ends the wait", func(t *testing.T) {
		r, _, _ := openRig(t)
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { _, err := r.Open(cctx, "sbx", uplink.Header{Kind: uplink.KindAPI}); done <- err }()
		time.Sleep(20 * time.Millisecond) // let it reach the reply wait (either order passes)
		cancel()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("rule broken: a cancelled Open returned a stream")
			}
		case <-time.After(replyTimeout):
			t.Fatal("rule broken: a cancelled Open kept waiting for the agent")
		}
	})
	t.Run("a dead link is ErrNotConnected, not a hang", func(t *testing.T) {
		r, l, _ := openRig(t)
		l.sess.Close()
		if _, err := r.Open(ctx, "sbx", uplink.Header{Kind: uplink.KindAPI}); !errors.Is(err, ErrNotConnected) {
			t.Fatalf("rule broken: a closed session must be ErrNotConnected (503), got %v", err)
		}
	})
}
