package pty

import (
	"context"
	"testing"
	"time"

	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/internal/pause/pausetest"
)

// TestPauseIsNotIdle: a session whose idle timeout passes while the agent
// is stopped survives the thaw, and is killed once the timeout has passed
// in running time. Before the running clock, the idle timer fired on thaw.
func TestPauseIsNotIdle(t *testing.T) {
	det := pause.New(50*time.Millisecond, 250*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go det.Run(ctx)
	const idle = 2 * time.Second
	r := newRig(t, Config{IdleTimeout: idle, KillGrace: time.Second, Pause: det})
	id, _ := r.create(map[string]any{"command": "sleep", "args": []string{"100"}})
	s, err := r.m.get(id)
	if err != nil {
		t.Fatal(err)
	}
	pausetest.StopSelf(t, 2*idle)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, n := det.Paused(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the detector did not see a 4 s SIGSTOP")
		}
	}
	thawed := det.Now()
	time.Sleep(300 * time.Millisecond) // the old timer fired within milliseconds of thaw
	killed := func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.killed }
	if killed() {
		p, _ := det.Paused()
		t.Fatalf("session killed as idle right after a %v pause: paused time counted as idle", p)
	}
	for deadline := time.Now().Add(20 * time.Second); !killed(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("session not killed after %v of running time", idle)
		}
	}
	t.Logf("killed %v of running time after thaw", det.Now()-thawed)
	if !waitDone(s, 10*time.Second) {
		t.Fatal("killed session did not end")
	}
}

func waitDone(s *Session, d time.Duration) bool {
	select {
	case <-s.done:
		return true
	case <-time.After(d):
		return false
	}
}
