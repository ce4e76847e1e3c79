package process

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/supervisor"
)

// newTestTable runs processes as the test's own user, reaped by a reaper
// that waits only for its own children (we are not PID 1 here).
func newTestTable(t *testing.T) *Table {
	t.Helper()
	r := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	tb, err := New(Config{ExitGrace: 200 * time.Millisecond}, zerolog.Nop(), r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close(); close(stop) })
	return tb
}

func self() *UserSpec {
	var u UserSpec
	u.Name = strconv.Itoa(os.Getuid())
	return &u
}

func waitDone(t *testing.T, p *Process) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("process %d did not end", p.pid)
	}
}

func TestStartCapturesAndExits(t *testing.T) {
	tb := newTestTable(t)
	p, err := tb.Start(&StartRequest{Command: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}, User: self(), WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, p)
	in := p.info()
	if in.Status != "exited" || *in.ExitCode != 3 || in.Signal != nil || in.EndedAt == nil || in.Managed != nil {
		t.Fatalf("info %+v", in)
	}
	if got := texts(first(p.out.snapshot(Stdout))); got != "out" {
		t.Fatalf("stdout %q", got)
	}
	if running, total := tb.Counts(); running != 0 || total != 1 {
		t.Fatalf("counts %d %d", running, total)
	}
	if st := tb.Stats(); st.Started != 1 || st.Exited[OutcomeError] != 1 || st.Exited[OutcomeSuccess] != 0 {
		t.Fatalf("stats %+v: want one started, one ended in error", st)
	}
}

func TestKillTreeReachesSetsid(t *testing.T) {
	tb := newTestTable(t)
	// The child leaves the group with setsid and prints its pid.
	p, err := tb.Start(&StartRequest{Command: "sh", Args: []string{"-c", "setsid sh -c 'echo $$; exec sleep 300' & wait"}, User: self(), WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for deadline := time.Now().Add(10 * time.Second); child == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if lines, _ := p.out.snapshot(Stdout); len(lines) > 0 {
			child, _ = strconv.Atoi(strings.TrimSpace(lines[0].Text))
		}
	}
	if child == 0 {
		t.Fatal("no child pid printed")
	}
	p.kill()
	waitDone(t, p)
	// The orphan is not ours to reap (the reaper only waits for its own):
	// it is gone or a zombie of init.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st, ok := supervisor.ReadStat(child)
		state := st.State
		if !ok || !st.Alive() {
			break
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(child, syscall.SIGKILL)
			t.Fatalf("setsid child %d survived the kill (state %c)", child, state)
		}
	}
}

func TestSupervisedGivesUpAfterMaxRestarts(t *testing.T) {
	tb := newTestTable(t)
	name, max := "flaky", 2
	p, err := tb.Start(&StartRequest{Command: "false", User: self(), WorkingDir: "/", Name: &name,
		Restart: &RestartPolicy{MaxRestarts: &max, InitialBackoffMs: 1, MaxBackoffMs: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if p.managed == nil {
		t.Fatal("named process is not supervised")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mi := p.managed.info()
		if mi.Status == mStopped {
			if mi.RestartCount != 2 || mi.LastExit == nil || *mi.LastExit.ExitCode != 1 || mi.LastError == nil {
				t.Fatalf("stopped: %+v", mi)
			}
			if st := tb.Stats(); st.Restarts != 2 || st.Started != 3 || st.Exited[OutcomeError] != 3 {
				t.Fatalf("stats %+v: want 2 restarts, 3 starts, 3 errors", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never stopped: %+v", mi)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, _, err := tb.lookup("flaky"); err != nil {
		t.Fatalf("lookup by name: %v", err)
	}
	if _, err := tb.Start(&StartRequest{Command: "true", User: self(), WorkingDir: "/", Name: &name}); err != nil {
		t.Fatalf("a stopped name is not reusable: %v", err)
	}
}

func TestNeverPolicyAndNameInUse(t *testing.T) {
	tb := newTestTable(t)
	name := "svc"
	p, err := tb.Start(&StartRequest{Command: "sleep", Args: []string{"300"}, User: self(), WorkingDir: "/", Name: &name,
		Restart: &RestartPolicy{Policy: PolicyNever}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Start(&StartRequest{Command: "true", User: self(), WorkingDir: "/", Name: &name}); codeOf(err) != codeNameInUse {
		t.Fatalf("duplicate name: %v", err)
	}
	p.kill()
	waitDone(t, p)
	for deadline := time.Now().Add(5 * time.Second); p.managed.info().Status != mStopped; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never policy: %+v", p.managed.info())
		}
	}
	if mi := p.managed.info(); mi.RestartCount != 0 || *mi.LastExit.Signal != int(syscall.SIGKILL) {
		t.Fatalf("never policy restarted: %+v", mi)
	}
}

func TestCloseEndsProcesses(t *testing.T) {
	tb := newTestTable(t)
	p, err := tb.Start(&StartRequest{Command: "sleep", Args: []string{"300"}, User: self(), WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	tb.Close()
	waitDone(t, p)
	if _, err := tb.Start(&StartRequest{Command: "true", User: self(), WorkingDir: "/"}); codeOf(err) != codeShuttingDown {
		t.Fatalf("start after close: %v", err)
	}
	tb.Close() // twice is fine
}

// TestConcurrentSupervisorOps shakes the table's locks: starts, restarts,
// kills, lookups and listings of a few names at once, with instances that
// crash and restart under them. It must end (no deadlock) and stay race-free.
func TestConcurrentSupervisorOps(t *testing.T) {
	tb := newTestTable(t)
	names := []string{"a", "b", "c"}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				name := names[(g+i)%len(names)]
				switch (g + i) % 5 {
				case 0:
					_, _ = tb.Start(&StartRequest{Command: "sh", Args: []string{"-c", "exit 1"}, User: self(), WorkingDir: "/", Name: &name,
						Restart: &RestartPolicy{InitialBackoffMs: 1, MaxBackoffMs: 2}})
				case 1:
					if _, m, err := tb.lookup(name); err == nil && m != nil {
						_, _ = m.restart()
					}
				case 2:
					if p, m, err := tb.lookup(name); err == nil && m != nil && m.current() == p {
						m.stopAndKill()
					}
				case 3:
					for _, p := range tb.list() {
						_ = p.info()
					}
				case 4:
					tb.prune()
				}
			}
		}(g)
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("concurrent operations did not finish: deadlock?")
	}
}

func TestHealthFailureWithNeverOnlyMarks(t *testing.T) {
	tb := newTestTable(t)
	name := "sick"
	p, err := tb.Start(&StartRequest{Command: "sleep", Args: []string{"300"}, User: self(), WorkingDir: "/", Name: &name,
		Restart:     &RestartPolicy{Policy: PolicyNever},
		HealthCheck: &HealthCheck{Type: "tcp", Port: 1, InitialDelayMs: 1, IntervalMs: 1, TimeoutMs: 100, FailureThreshold: 2}})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); p.managed.info().HealthStatus != hUnhealthy; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never unhealthy: %+v", p.managed.info())
		}
	}
	if !p.running() || p.managed.info().Status == mStopped {
		t.Fatalf("policy never: an unhealthy process was killed: %+v", p.managed.info())
	}
	if st := tb.Stats(); st.HealthFailures < 2 {
		t.Fatalf("stats %+v: want at least the 2 failed checks", st)
	}
	p.kill()
	waitDone(t, p)
	if st := tb.Stats(); st.Exited[OutcomeSignal] != 1 {
		t.Fatalf("stats %+v: the killed process ended by a signal", st)
	}
}

// An exec health check runs its command as the process's user in its
// folder and environment: healthy while it exits 0, unhealthy after it
// fails failure_threshold times; a probe that hangs is killed at its
// timeout and counts as a failure.
func TestExecHealthCheck(t *testing.T) {
	tb := newTestTable(t)
	flag := filepath.Join(t.TempDir(), "ok")
	name := "probed"
	p, err := tb.Start(&StartRequest{Command: "sleep", Args: []string{"300"}, User: self(), WorkingDir: "/", Name: &name,
		Env:         map[string]string{"FLAG": flag},
		Restart:     &RestartPolicy{Policy: PolicyNever},
		HealthCheck: &HealthCheck{Type: "exec", Command: "sh", Args: []string{"-c", `test -e "$FLAG" && exit 0; test -e "$FLAG.hang" && exec sleep 60; exit 1`}, InitialDelayMs: 1, IntervalMs: 10, TimeoutMs: 300, FailureThreshold: 2}})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); p.managed.info().HealthStatus != want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never %s: %+v", want, p.managed.info())
			}
		}
	}
	wait(hUnhealthy)
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wait(hHealthy)
	_ = os.Remove(flag)
	if err := os.WriteFile(flag+".hang", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wait(hUnhealthy)
	if le := p.managed.info().LastError; le == nil || !strings.Contains(*le, "no answer within") {
		t.Fatalf("a hung probe's error: %v", le)
	}
	p.kill()
	waitDone(t, p)
}
