package process

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/internal/pause/pausetest"
	"github.com/tensorlake/tl-agent/supervisor"
)

// TestPauseFailsNoHealthCheckAndIsNoBackoff stops the whole table (this
// test process, with the service the health check probes) for 4 s: the
// probe in flight must not time out at thaw, and a restart back-off must
// not count the stopped time. Before the running clock, the health check
// failed (and the instance was killed) at thaw, and the back-off ended
// at thaw.
func TestPauseFailsNoHealthCheckAndIsNoBackoff(t *testing.T) {
	det := pause.New(50*time.Millisecond, 250*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go det.Run(ctx)
	r := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	tb, err := New(Config{ExitGrace: 200 * time.Millisecond, Pause: det}, zerolog.Nop(), r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close(); close(stop) })

	// The "service": answers after 10 x 50 ms of sleeping, so after a thaw
	// it still needs most of its time, like a service frozen with us.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var answered atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for range 10 {
			time.Sleep(50 * time.Millisecond)
		}
		answered.Add(1)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	healthy := "healthy"
	hp, err := tb.Start(&StartRequest{Command: "sleep", Args: []string{"300"}, User: self(), WorkingDir: "/", Name: &healthy,
		HealthCheck: &HealthCheck{Type: "http", Port: port, InitialDelayMs: 1, IntervalMs: 1, TimeoutMs: 5000, FailureThreshold: 1}})
	if err != nil {
		t.Fatal(err)
	}
	crashing := "crashing"
	cp, err := tb.Start(&StartRequest{Command: "false", User: self(), WorkingDir: "/", Name: &crashing,
		Restart: &RestartPolicy{Policy: PolicyAlways, InitialBackoffMs: 3000, MaxBackoffMs: 3000}})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); hp.managed.info().HealthStatus != hHealthy || cp.managed.info().Status != mBackingOff; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not ready to pause: %+v %+v", hp.managed.info(), cp.managed.info())
		}
	}
	// Longer than the probe's 5 s timeout (which leaves a loaded machine
	// room for the 0.5 s answer): a probe in flight across it would fail
	// on wall time.
	pausetest.StopSelf(t, 6*time.Second)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, n := det.Paused(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the detector did not see a 6 s SIGSTOP")
		}
	}
	// The back-off had ~3 s of running time left; it must not end at thaw.
	time.Sleep(300 * time.Millisecond)
	if mi := cp.managed.info(); mi.RestartCount != 0 {
		t.Fatalf("restarted right after the pause: the back-off counted paused time: %+v", mi)
	}
	// The probe in flight at the pause, and the next one, succeed.
	seen := answered.Load()
	for deadline := time.Now().Add(20 * time.Second); answered.Load() < seen+2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no health probes after the pause")
		}
	}
	mi := hp.managed.info()
	if mi.RestartCount != 0 || mi.HealthStatus != hHealthy || mi.LastError != nil || !hp.running() {
		t.Fatalf("a pause failed the health check: %+v (last error %v)", mi, strconv.Quote(deref(mi.LastError)))
	}
	for deadline := time.Now().Add(20 * time.Second); cp.managed.info().RestartCount == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the back-off never ended")
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
