package forward

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/leakcheck"
)

func tunnelServer(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	NewTunnels(zerolog.Nop()).Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func wsURL(srv *httptest.Server, port string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/api/v1/tunnels/tcp?port=" + port
}

// TestTunnelHalfClose: the client's zero-length message reaches the target
// as EOF, and the target's answer and EOF still come back.
func TestTunnelHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		data, _ := io.ReadAll(c) // until the client's half-close
		_, _ = c.Write([]byte(strings.ToUpper(string(data))))
	}()
	srv := tunnelServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL(srv, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"hello ", "tunnel"} {
		if err := ws.Write(ctx, websocket.MessageBinary, []byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ws.Write(ctx, websocket.MessageBinary, nil); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				t.Fatalf("end: %v", err)
			}
			break
		}
		if typ != websocket.MessageBinary {
			t.Fatalf("message type %v", typ)
		}
		got = append(got, data...)
	}
	if string(got) != "HELLO TUNNEL" {
		t.Fatalf("got %q", got)
	}
}

func TestTunnelRefusals(t *testing.T) {
	srv := tunnelServer(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	for port, want := range map[string]int{"": 400, "0": 400, "65536": 400, "x": 400, closed: 502} {
		_, resp, err := websocket.Dial(context.Background(), wsURL(srv, port), nil)
		if err == nil || resp == nil || resp.StatusCode != want {
			t.Errorf("port %q: %v %v, want %d", port, resp, err, want)
		}
	}

	// A text message is refused with 1003 and the target is closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ended := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
		close(ended)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL(srv, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = ws.Write(ctx, websocket.MessageText, []byte("hi"))
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
		t.Fatalf("after text: %v", err)
	}
	select {
	case <-ended:
	case <-ctx.Done():
		t.Fatal("target not closed")
	}
}

// TestTunnelsCloseLeaksNothing: Close ends an open tunnel whose target is
// silent (the HTTP server's Shutdown would not: the WebSocket is
// hijacked) and returns once it has ended; later tunnels are refused with
// 503 SHUTTING_DOWN; no fd or goroutine is left.
func TestTunnelsCloseLeaksNothing(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	port := strconv.Itoa(silent.Addr().(*net.TCPAddr).Port)
	base := leakcheck.Take(t)

	tunnels := NewTunnels(zerolog.Nop())
	mux := http.NewServeMux()
	tunnels.Routes(mux)
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL(srv, port), nil)
	if err != nil {
		t.Fatal(err)
	}
	target, err := silent.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close() // silent and open across the check
	// The client answers the close handshake while it reads.
	read := make(chan error, 1)
	go func() { _, _, err := ws.Read(ctx); read <- err }()

	tunnels.Close()
	tunnels.Close() // safe twice
	if err := <-read; websocket.CloseStatus(err) == -1 {
		t.Errorf("the client saw no close: %v", err)
	}
	resp, err := srv.Client().Get(srv.URL + "/api/v1/tunnels/tcp?port=" + port)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("tunnel after Close: %s, want 503", resp.Status)
	}
	_ = silent.(*net.TCPListener).SetDeadline(time.Now().Add(time.Second))
	if late, err := silent.Accept(); err == nil {
		late.Close() // the refused tunnel's dial
	}
	ws.CloseNow()
	srv.Close()
	srv.Client().CloseIdleConnections()
	base.Allow(1, 0).Check(t)
}
