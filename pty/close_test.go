package pty

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestCloseRunsNoGraceTimer: Close ends a session that ignores SIGHUP and
// SIGTERM at once, with its background job, instead of waiting out the
// kill grace (an hour here): at shutdown the supervisor's sweep has had
// the grace already.
func TestCloseRunsNoGraceTimer(t *testing.T) {
	r := newRig(t, Config{KillGrace: time.Hour})
	id, tok := r.create(map[string]any{"command": "sh", "args": []string{"-c", `trap "" HUP TERM; sleep 1000 & echo up; wait`}})
	c := r.dial(id, tok)
	_ = c.Write(context.Background(), websocket.MessageBinary, []byte{opReady})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for seen := ""; !strings.Contains(seen, "up"); {
		_, msg, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v (seen %q)", err, seen)
		}
		seen += string(msg[1:])
	}
	s, err := r.m.get(id)
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	start := time.Now()
	go func() { r.m.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waits for the kill grace")
	}
	t.Logf("Close took %v (2 s of it: the client, which reads nothing, gets its close frame bound)", time.Since(start))
	if in := s.info(); in.IsAlive || in.ExitCode == nil || *in.ExitCode != 137 {
		t.Fatalf("after Close: %+v, want ended by SIGKILL", in)
	}
	if st := r.m.Stats(); st.Ended[EndShutdown] != 1 {
		t.Fatalf("stats %+v: want the session ended by the shutdown", st)
	}
}
