package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/uplink"
)

// echoServer is a stream server that records who it served and echoes one
// line back.
type echoServer struct {
	name  string
	mu    sync.Mutex
	peers []streams.Peer
}

func (e *echoServer) ServeConn(_ context.Context, c net.Conn, p streams.Peer) error {
	defer c.Close()
	e.mu.Lock()
	e.peers = append(e.peers, p)
	e.mu.Unlock()
	line, _ := bufio.NewReader(c).ReadString('\n')
	_, _ = io.WriteString(c, e.name+":"+line)
	return nil
}

// refuser closes every stream without touching it, and says why.
type refuser struct{}

func (refuser) ServeConn(_ context.Context, c net.Conn, _ streams.Peer) error {
	c.Close()
	return errors.New("too many sessions (max 0)")
}

func (e *echoServer) served() []streams.Peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]streams.Peer(nil), e.peers...)
}

// pipeUplink serves a's streams over yamux on net.Pipe, in memory, and
// returns the proxy's end of the session.
func pipeUplink(t *testing.T, a *Agent) *yamux.Session {
	t.Helper()
	proxyEnd, agentEnd := net.Pipe()
	cfg := uplink.MuxConfig(zerolog.Nop())
	srv, err := yamux.Server(agentEnd, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := yamux.Client(proxyEnd, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.serveSession(ctx, srv) }()
	go func() { _ = a.api.Serve(a.apiLn) }()
	t.Cleanup(func() {
		cancel()
		cli.Close()
		srv.Close()
		<-done
		a.apiLn.Close()
		_ = a.api.Close()
		a.wg.Wait()
	})
	return cli
}

// open opens a stream to h the way the proxy does and returns the reply.
func open(t *testing.T, s *yamux.Session, h uplink.Header) (net.Conn, error) {
	t.Helper()
	c, err := s.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := uplink.WriteHeader(c, h); err != nil {
		t.Fatal(err)
	}
	if err := uplink.ReadReply(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// TestStreamDispatch: each stream kind reaches exactly its server, once,
// with the peer the proxy named; kinds without a server and unknown kinds
// are refused with a reason; a capability cannot take an agent kind.
func TestStreamDispatch(t *testing.T) {
	ssh, sftp, squatter := &echoServer{name: "ssh"}, &echoServer{name: "sftp"}, &echoServer{name: "squatter"}
	a := New(Config{}, zerolog.Nop(), "test", Parts{Streams: map[string]streams.Server{
		uplink.KindSSH: ssh, uplink.KindSFTP: sftp, uplink.KindAPI: squatter,
	}})
	up := pipeUplink(t, a)

	roundTrip := func(t *testing.T, h uplink.Header) string {
		t.Helper()
		c, err := open(t, up, h)
		if err != nil {
			t.Fatalf("%s stream refused: %v", h.Kind, err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "hi\n")
		got, _ := bufio.NewReader(c).ReadString('\n')
		return got
	}
	t.Run("each whole-connection kind reaches its own server with the peer", func(t *testing.T) {
		for _, kind := range []string{uplink.KindSSH, uplink.KindSFTP} {
			if got := roundTrip(t, uplink.Header{Kind: kind, User: "alice-" + kind, Remote: "192.0.2.1:22"}); got != kind+":hi\n" {
				t.Errorf("%s stream answered %q, want it from the %s server", kind, got, kind)
			}
		}
		for _, e := range []*echoServer{ssh, sftp} {
			p := e.served()
			if len(p) != 1 || p[0] != (streams.Peer{User: "alice-" + e.name, Remote: "192.0.2.1:22"}) {
				t.Errorf("%s server served %+v, want one stream from alice-%s at 192.0.2.1:22", e.name, p, e.name)
			}
		}
	})
	t.Run("a capability cannot take over the api kind", func(t *testing.T) {
		c, err := open(t, up, uplink.Header{Kind: uplink.KindAPI})
		if err != nil {
			t.Fatalf("api stream refused: %v", err)
		}
		defer c.Close()
		req, _ := http.NewRequest("GET", "http://agent/api/v1/health", nil)
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("api stream did not reach the API server: %v %v", resp, err)
		}
		resp.Body.Close()
		if n := len(squatter.served()); n != 0 {
			t.Errorf("the api kind reached a capability %d times", n)
		}
	})
	t.Run("tcp streams are relayed to the sandbox's loopback", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				line, _ := bufio.NewReader(c).ReadString('\n')
				_, _ = io.WriteString(c, "tcp:"+line)
				c.Close()
			}
		}()
		if got := roundTrip(t, uplink.Header{Kind: uplink.KindTCP, Port: ln.Addr().(*net.TCPAddr).Port}); got != "tcp:hi\n" {
			t.Errorf("tcp stream answered %q", got)
		}
	})
	t.Run("an unknown kind is a bad header", func(t *testing.T) {
		_, err := open(t, up, uplink.Header{Kind: "telnet"})
		var re *uplink.ReplyError
		if !errors.As(err, &re) || re.Status != uplink.StatusBadHeader || !strings.Contains(re.Msg, `unknown target kind "telnet"`) {
			t.Errorf("unknown kind: %v, want a bad-header reply naming it", err)
		}
	})
	t.Run("the agent never accepts a bye stream", func(t *testing.T) {
		_, err := open(t, up, uplink.Header{Kind: uplink.KindBye})
		var re *uplink.ReplyError
		if !errors.As(err, &re) || re.Status != uplink.StatusBadHeader {
			t.Errorf("bye: %v, want a bad-header reply", err)
		}
	})
}

// TestStreamKindNotEnabled: a kind whose capability is not built (the SSH
// server failed to start) is refused as unavailable, naming the kind, and
// the others still work.
func TestStreamKindNotEnabled(t *testing.T) {
	sftp := &echoServer{name: "sftp"}
	a := New(Config{}, zerolog.Nop(), "test", Parts{Streams: map[string]streams.Server{uplink.KindSFTP: sftp}})
	up := pipeUplink(t, a)
	_, err := open(t, up, uplink.Header{Kind: uplink.KindSSH})
	var re *uplink.ReplyError
	if !errors.As(err, &re) || re.Status != uplink.StatusUnavailable || re.Msg != "ssh server not enabled" {
		t.Fatalf("ssh without a server: %v, want unavailable: ssh server not enabled", err)
	}
	c, err := open(t, up, uplink.Header{Kind: uplink.KindSFTP})
	if err != nil {
		t.Fatalf("sftp refused beside a missing ssh server: %v", err)
	}
	c.Close()
}

// TestStreamRefusedByServer: a server that fails before it reads or
// writes the stream refuses it, and the proxy gets its reason (the agent
// answers the header only at the server's first use of the stream).
func TestStreamRefusedByServer(t *testing.T) {
	a := New(Config{}, zerolog.Nop(), "test", Parts{Streams: map[string]streams.Server{uplink.KindSFTP: refuser{}}})
	up := pipeUplink(t, a)
	_, err := open(t, up, uplink.Header{Kind: uplink.KindSFTP})
	var re *uplink.ReplyError
	if !errors.As(err, &re) || re.Status != uplink.StatusUnavailable || re.Msg != "too many sessions (max 0)" {
		t.Fatalf("refused sftp stream: %v, want unavailable with the server's reason", err)
	}
}
