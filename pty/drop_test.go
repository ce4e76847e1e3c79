package pty

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestSlowClientGetsCloseFrame: a client that stops reading is dropped
// with close 1008 and the reason, which it reads once it reads again (the
// frame queues behind the output it had not read). Before, the connection
// was cut with no close frame.
func TestSlowClientGetsCloseFrame(t *testing.T) {
	// No pings: under load they could drop the client first, for another reason.
	r := newRig(t, Config{StallTimeout: 300 * time.Millisecond, KeepOutput: 64 << 10, PingInterval: time.Hour})
	// More than the socket buffers (4 MiB of send buffer at most here)
	// and the kept output together, so the writer blocks and the PTY waits.
	id, tok := r.create(map[string]any{"command": "sh", "args": []string{"-c", "head -c 8000000 /dev/zero; sleep 100"}})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			// A fixed window (no autotuning up to 32 MiB) that the output
			// overfills. Not a tiny one: a 4 KiB window drains the
			// megabytes queued ahead of the close frame at tens of KB/s
			// (zero-window probes), so the close would come after the cut.
			_ = c.(*net.TCPConn).SetReadBuffer(256 << 10)
		}
		return c, err
	}}
	url := strings.Replace(r.srv.URL, "http", "ws", 1) + "/api/v1/pty/" + id + "/ws?token=" + tok
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageBinary, []byte{opReady}); err != nil {
		t.Fatal(err)
	}
	// Read nothing until the agent has given up on us.
	for r.m.dropped.Load() == 0 {
		if ctx.Err() != nil {
			t.Fatal("a client that reads nothing was not dropped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.SetReadLimit(1 << 20)
	var got int
	for {
		_, msg, err := c.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("dropped after %d bytes with no close frame: %v", got, err)
			}
			if ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, "too slow") {
				t.Fatalf("close %d %q, want 1008 with the reason", ce.Code, ce.Reason)
			}
			t.Logf("close %d %q after %d queued bytes", ce.Code, ce.Reason, got)
			break
		}
		got += len(msg)
	}
	s, _ := r.m.get(id)
	if !s.info().IsAlive {
		t.Fatal("the session ended with its slow client")
	}
}
