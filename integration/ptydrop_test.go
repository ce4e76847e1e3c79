package integration

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

// TestPTYSlowClientClose: a client that stops reading is dropped with a
// close frame (1008, the reason) queued behind the output it had not read;
// when it reads again it sees the code. The agent logs the reason and
// counts the drop in its status. Before, the connection was cut with no
// close frame.
func TestPTYSlowClientClose(t *testing.T) {
	s := ptySystem(t, Options{})
	// Far more than every buffer on the way (agent, uplink, proxy, TCP):
	// the agent's writer blocks, the PTY waits, the stall timeout (5 s)
	// drops the client.
	p := ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c", "head -c 40000000 /dev/zero; sleep 1000"}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err == nil {
			// Fixed, not autotuned up to tens of MB; not tiny either: a
			// 4 KiB window drains what is queued ahead of the close at
			// tens of KB/s (zero-window probes), after the agent's cut.
			_ = c.(*net.TCPConn).SetReadBuffer(256 << 10)
		}
		return c, err
	}}
	c, _, err := websocket.Dial(ctx, s.WSURL()+"/api/v1/pty/"+p.SessionID+"/ws", &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr}, Host: s.SandboxID + ".local",
		HTTPHeader: http.Header{"Authorization": {"Bearer " + s.APIKey}, "X-PTY-Token": {p.Token}},
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	if err := c.Write(ctx, websocket.MessageBinary, []byte{0x02}); err != nil {
		t.Fatal(err)
	}
	// Read nothing until the agent has given up on us: its status counts
	// the drop.
	for dropped := 0; dropped == 0; time.Sleep(10 * time.Millisecond) {
		if ctx.Err() != nil {
			t.Fatal("a client that reads nothing was not dropped (status clients_dropped stayed 0)")
		}
		if pty := agentState(t, s).PTYSessions; pty != nil {
			dropped = pty.ClientsDropped
		}
	}
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
			t.Logf("close %d %q after %d bytes queued ahead of it", ce.Code, ce.Reason, got)
			break
		}
		got += len(msg)
	}
	if !strings.Contains(s.AgentLog(), `"reason":"client too slow`) {
		t.Fatalf("the agent did not log the reason:\n%s", tail(s.AgentLog(), 20))
	}
	if pty := agentState(t, s).PTYSessions; pty == nil || pty.ClientsDropped != 1 || pty.Live != 1 {
		t.Fatalf("status after the drop: %+v, want one client dropped and the session still live", pty)
	}
}
