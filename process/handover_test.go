package process

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/supervisor"
)

// oldAgent is the table of the agent being upgraded, with its own reaper.
type oldAgent struct {
	t    *Table
	stop chan struct{}
	ran  chan struct{}
}

var upgradeCfg = Config{ExitGrace: 200 * time.Millisecond}

func newOldAgent(t *testing.T) *oldAgent { return newOldAgentWith(t, upgradeCfg) }

func newOldAgentWith(t *testing.T, cfg Config) *oldAgent {
	t.Helper()
	r := supervisor.NewReaper(zerolog.Nop(), false)
	o := &oldAgent{stop: make(chan struct{}), ran: make(chan struct{})}
	go func() { r.Run(o.stop); close(o.ran) }()
	tb, err := New(cfg, zerolog.Nop(), r)
	if err != nil {
		t.Fatal(err)
	}
	o.t = tb
	// Whatever a failed test leaves running: the new table's Close kills
	// it too, this covers a test that fails before the hand-over.
	t.Cleanup(func() {
		for _, p := range tb.list() {
			killTree(p.pid, p.handle)
		}
	})
	return o
}

// snapshot is what the old agent hands over: Freeze, its reaper stopped,
// Save, the State encoded.
func (o *oldAgent) snapshot(t *testing.T) []byte {
	t.Helper()
	o.t.Freeze()
	close(o.stop)
	<-o.ran
	w := handover.NewWriter("old")
	if err := o.t.Save(w); err != nil {
		t.Fatal(err)
	}
	b, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// execve stands in for the exec within one test process: every kept fd
// moves to a new number (a dup; the state names it there) and the old
// table's files are closed, as the exec closes the old runtime's poller
// (two os.Files of one fd cannot share it).
func (o *oldAgent) execve(t *testing.T, b []byte) *handover.Reader {
	t.Helper()
	var st handover.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	for i := range st.Files {
		fd, err := unix.Dup(st.Files[i].FD)
		if err != nil {
			t.Fatal(err)
		}
		st.Files[i].FD = fd
	}
	for _, p := range o.t.list() {
		for _, c := range p.caps {
			c.f.Close()
		}
		if p.stdinPipe != nil {
			p.stdinPipe.Close()
		}
	}
	b, _ = json.Marshal(&st)
	r, err := handover.Decode(b, false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newAgent is the upgraded agent: a fresh reaper adopts the state's pids,
// a fresh table restores the section.
func newAgent(t *testing.T, r *handover.Reader) *Table {
	t.Helper()
	return newAgentWith(t, r, upgradeCfg, nil)
}

// newAgentWith adopts every pid but those of notAdopted.
func newAgentWith(t *testing.T, r *handover.Reader, cfg Config, notAdopted map[int]bool) *Table {
	t.Helper()
	nr := supervisor.NewReaper(zerolog.Nop(), false)
	for _, pid := range r.Pids() {
		if notAdopted[pid] {
			continue
		}
		if _, err := nr.Adopt(pid); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	go nr.Run(stop)
	nt, err := New(cfg, zerolog.Nop(), nr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nt.Close(); close(stop) })
	if err := nt.Restore(r, nr); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if left := r.Unclaimed(); len(left) != 0 {
		t.Fatalf("kept fds nobody took: %+v", left)
	}
	return nt
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func mustStart(t *testing.T, tb *Table, req *StartRequest) *Process {
	t.Helper()
	req.User, req.WorkingDir = self(), "/"
	p, err := tb.Start(req)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func byHandle(t *testing.T, tb *Table, handle int) *Process {
	t.Helper()
	for _, p := range tb.list() {
		if p.handle == handle {
			return p
		}
	}
	t.Fatalf("no entry with handle %d after the upgrade", handle)
	return nil
}

// checkCounted: the printer's lines are n0-end, n1-end, ... with seq
// numbers from 0: nothing lost or doubled across the hand-over.
func checkCounted(t *testing.T, p *Process) int {
	t.Helper()
	lines, dropped := p.out.snapshot("")
	if dropped != 0 {
		t.Fatalf("%d lines dropped", dropped)
	}
	for i, l := range lines {
		if want := fmt.Sprintf("n%d-end", i); l.Text != want || l.Seq != uint64(i) {
			t.Fatalf("line %d: seq %d %q, want %q (around: %q)", i, l.Seq, l.Text, want, texts(lines[max(0, i-3):min(len(lines), i+3)]))
		}
	}
	return len(lines)
}

// TestHandoverRoundTrip: a table handed over to a new one (Save, Encode,
// Decode, Restore, real children and pipes) goes on as if nothing had
// happened: a printer's output has no gap or duplicate, a partial line is
// completed, stdin reaches its process and the true exit code arrives
// later, an ended entry keeps its output and exit, a supervisor keeps its
// restart count and restarts a later crash with the same spec, a health
// loop keeps its counter and runs on.
func TestHandoverRoundTrip(t *testing.T) {
	old := newOldAgent(t)
	printer := mustStart(t, old.t, &StartRequest{Command: "sh", Args: []string{"-c",
		`i=0; while [ $i -lt 20000 ]; do printf "n$i-"; sleep 0.002; echo end; i=$((i+1)); done`}})
	half := mustStart(t, old.t, &StartRequest{Command: "sh", StdinMode: "pipe", Args: []string{"-c",
		`printf half-; read x; echo "$x"; exit 7`}})
	ended := mustStart(t, old.t, &StartRequest{Command: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 5"}})
	count := filepath.Join(t.TempDir(), "count")
	name := "flaky"
	flakyArgs := []string{"-c", `n=$(cat ` + count + ` 2>/dev/null || echo 0); n=$((n+1)); echo $n > ` + count + `; echo run $n; [ $n -le 2 ] && exit 3; exec sleep 300`}
	flaky := mustStart(t, old.t, &StartRequest{Command: "sh", Args: flakyArgs, Name: &name,
		Restart: &RestartPolicy{Policy: PolicyOnFailure, InitialBackoffMs: 1, MaxBackoffMs: 2}})
	watched := "watched"
	mustStart(t, old.t, &StartRequest{Command: "sleep", Args: []string{"300"}, Name: &watched,
		Restart:     &RestartPolicy{Policy: PolicyNever},
		HealthCheck: &HealthCheck{Type: "exec", Command: "false", InitialDelayMs: 1, IntervalMs: 20, FailureThreshold: 1 << 30}})

	waitDone(t, ended)
	until(t, "flaky's third run", func() bool {
		mi, _ := old.t.Managed(name)
		cur := flaky.managed.current()
		return mi.RestartCount == 2 && cur != nil && texts(first(cur.out.snapshot(""))) == "run 3"
	})
	until(t, "failed health checks", func() bool { mi, _ := old.t.Managed(watched); return mi.ConsecutiveHealthFailures >= 3 })
	until(t, "the half line read", func() bool { return half.caps[0].got.Load() == 5 })
	until(t, "printed lines", func() bool { n, _ := printer.out.snapshot(""); return len(n) >= 20 })

	state := old.snapshot(t)
	oldHealth, _ := old.t.Managed(watched)
	oldFails := oldHealth.ConsecutiveHealthFailures
	if half.caps[0].partial == nil {
		t.Fatal("the capturer holds no partial line at the freeze")
	}
	nt := newAgent(t, old.execve(t, state))

	np := byHandle(t, nt, printer.handle)
	until(t, "lines after the upgrade", func() bool { n, _ := np.out.snapshot(""); return len(n) >= checkCounted(t, printer)+50 })
	checkCounted(t, np)

	nh := byHandle(t, nt, half.handle)
	if _, err := nh.stdinFile().Write([]byte("line\n")); err != nil {
		t.Fatal(err)
	}
	waitDone(t, nh)
	if got := texts(first(nh.out.snapshot(""))); got != "half-line" {
		t.Fatalf("the partial line came out as %q", got)
	}
	if in := nh.info(); in.Status != "exited" || *in.ExitCode != 7 {
		t.Fatalf("after the upgrade: %+v, want exit 7", in)
	}

	ne := byHandle(t, nt, ended.handle)
	// Two pipes read at once may interleave either way: each on its own.
	if in := ne.info(); in.Status != "exited" || *in.ExitCode != 5 || texts(first(ne.out.snapshot(Stdout))) != "out" || texts(first(ne.out.snapshot(Stderr))) != "err" {
		t.Fatalf("ended entry: %+v %q", in, texts(first(ne.out.snapshot(""))))
	}

	mi, ok := nt.Managed(name)
	if !ok || mi.RestartCount != 2 || mi.Status != mRunning || mi.LastExit == nil || *mi.LastExit.ExitCode != 3 {
		t.Fatalf("flaky after the upgrade: %+v", mi)
	}
	cur, m, err := nt.lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	cur.kill()
	until(t, "flaky restarted after the upgrade", func() bool {
		c := m.current()
		return c != nil && c != cur && texts(first(c.out.snapshot(""))) == "run 4"
	})
	if mi, _ := nt.Managed(name); mi.RestartCount != 3 || strings.Join(m.current().spec.args, " ") != strings.Join(flakyArgs, " ") {
		t.Fatalf("restart after the upgrade: %+v, args %q", mi, m.current().spec.args)
	}

	if mi, _ := nt.Managed(watched); mi.ConsecutiveHealthFailures < oldFails || mi.HealthStatus != oldHealth.HealthStatus {
		t.Fatalf("health after the upgrade: %+v, had %d failures", mi, oldFails)
	}
	until(t, "health checks after the upgrade", func() bool { mi, _ := nt.Managed(watched); return mi.ConsecutiveHealthFailures > oldFails+2 })

	np.kill()
	waitDone(t, np)
	if in := np.info(); in.Signal == nil || *in.Signal != int(unix.SIGKILL) {
		t.Fatalf("printer's end: %+v", in)
	}
}

// TestFreezeThaw: while frozen no output is read, no restart happens and
// no start is taken; after Thaw everything runs on, the printer's output
// without a gap.
func TestFreezeThaw(t *testing.T) {
	tb := newTestTable(t)
	printer := mustStart(t, tb, &StartRequest{Command: "sh", Args: []string{"-c",
		`i=0; while [ $i -lt 20000 ]; do printf "n$i-"; sleep 0.002; echo end; i=$((i+1)); done`}})
	name := "crashy"
	mustStart(t, tb, &StartRequest{Command: "false", Name: &name,
		Restart: &RestartPolicy{Policy: PolicyAlways, InitialBackoffMs: 20, MaxBackoffMs: 20}})
	until(t, "printed lines and restarts", func() bool {
		n, _ := printer.out.snapshot("")
		mi, _ := tb.Managed(name)
		return len(n) >= 20 && mi.RestartCount >= 2
	})
	tb.Freeze()
	lines := checkCounted(t, printer)
	restarts := func() int { mi, _ := tb.Managed(name); return mi.RestartCount }
	frozenAt := restarts()
	if _, err := tb.Start(&StartRequest{Command: "true", User: self(), WorkingDir: "/"}); err != ErrFrozen {
		t.Fatalf("a start while frozen: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // the printer prints on into its pipe meanwhile
	if n := checkCounted(t, printer); n != lines || restarts() != frozenAt {
		t.Fatalf("while frozen: %d lines (had %d), %d restarts (had %d)", n, lines, restarts(), frozenAt)
	}
	tb.Thaw()
	until(t, "lines and restarts after the thaw", func() bool {
		n, _ := printer.out.snapshot("")
		return len(n) > lines+50 && restarts() > frozenAt+2
	})
	checkCounted(t, printer)
	if p, err := tb.Start(&StartRequest{Command: "true", User: self(), WorkingDir: "/"}); err != nil {
		t.Fatalf("a start after the thaw: %v", err)
	} else {
		waitDone(t, p)
	}
}

// mutate decodes the process section of state b, lets f change it and
// encodes it again.
func mutate(t *testing.T, b []byte, f func(sec map[string]any)) []byte {
	t.Helper()
	var st handover.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	var sec map[string]any
	if err := json.Unmarshal(st.Sections[Section], &sec); err != nil {
		t.Fatal(err)
	}
	f(sec)
	st.Sections[Section], _ = json.Marshal(sec)
	out, _ := json.Marshal(&st)
	return out
}

func entry(sec map[string]any, i int) map[string]any {
	return sec["procs"].([]any)[i].(map[string]any)
}

// TestRestoreRefusesCorrupt: the pre-flight's dry run takes a good state
// (saved without a freeze) and changes nothing; it refuses each corrupted
// entry, and so does a real restore, with nothing applied and no fd taken.
func TestRestoreRefusesCorrupt(t *testing.T) {
	old := newTestTable(t)
	p := mustStart(t, old, &StartRequest{Command: "sh", StdinMode: "pipe", Args: []string{"-c", "echo one; echo two; exec cat"}})
	name := "svc"
	mustStart(t, old, &StartRequest{Command: "sleep", Args: []string{"300"}, Name: &name})
	until(t, "output", func() bool { n, _ := p.out.snapshot(""); return len(n) == 2 })
	w := handover.NewWriter("old")
	if err := old.Save(w); err != nil {
		t.Fatal(err)
	}
	good, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	fresh := func() *Table {
		nt, err := New(upgradeCfg, zerolog.Nop(), supervisor.NewReaper(zerolog.Nop(), false))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nt.Close)
		return nt
	}
	var st handover.State
	_ = json.Unmarshal(good, &st)
	if len(st.Files) != 5 {
		t.Fatalf("the state keeps %d fds, want 5 (cat's stdin, stdout, stderr; sleep's stdout, stderr)", len(st.Files))
	}
	dry, _ := handover.Decode(good, true)
	if nt := fresh(); nt.Restore(dry, nil) != nil {
		t.Fatalf("dry run refused a good state: %v", nt.Restore(dry, nil))
	} else if running, total := nt.Counts(); running != 0 || total != 0 {
		t.Fatalf("a dry run entered %d entries", total)
	}
	for what, f := range map[string]func(map[string]any){
		"version": func(s map[string]any) { s["version"] = 2 },
		"seq gap": func(s map[string]any) {
			entry(s, 0)["output"].(map[string]any)["lines"].([]any)[1].(map[string]any)["seq"] = 5
		},
		"two states":    func(s map[string]any) { entry(s, 0)["ended"] = map[string]any{} },
		"relative path": func(s map[string]any) { entry(s, 0)["spec"].(map[string]any)["path"] = "sh" },
		"status":        func(s map[string]any) { s["managed"].([]any)[0].(map[string]any)["status"] = "zombie" },
		"file reused": func(s map[string]any) {
			entry(s, 0)["stdin"] = entry(s, 0)["pipes"].([]any)[0].(map[string]any)["file"]
		},
		"pid not kept":    func(s map[string]any) { entry(s, 0)["pid"] = 1 },
		"foreign current": func(s map[string]any) { s["managed"].([]any)[0].(map[string]any)["current"] = p.handle },
	} {
		bad := mutate(t, good, f)
		for _, dryRun := range []bool{true, false} {
			r, err := handover.Decode(bad, dryRun)
			if err != nil {
				t.Fatal(err)
			}
			nt := fresh()
			err = nt.Restore(r, nil)
			if err == nil {
				t.Fatalf("%s (dry run %v): taken", what, dryRun)
			}
			if _, total := nt.Counts(); total != 0 || len(nt.byName) != 0 || len(r.Unclaimed()) != len(st.Files) {
				t.Fatalf("%s (dry run %v): a refused state changed the table (%d entries) or took fds", what, dryRun, total)
			}
		}
	}
}

// TestRunDroppedByUpgradeGoesOn: a run whose client the upgrade drops is
// not killed (a dropped run client kills the tree otherwise): it goes on
// as an entry of the new table with its output, its timeout and, later,
// its exit.
func TestRunDroppedByUpgradeGoesOn(t *testing.T) {
	old := newOldAgent(t)
	mux := http.NewServeMux()
	old.t.Routes(mux)
	handled := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handled)
		mux.ServeHTTP(w, r)
	}))
	defer srv.Close()
	body, _ := json.Marshal(map[string]any{"command": "sh", "args": []string{"-c", "echo started; exec sleep 300"},
		"user": self().Name, "working_dir": "/", "timeout": 600})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/api/v1/processes/run", bytes.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var handle int
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() && !strings.Contains(sc.Text(), `"line":"started"`) {
		var ev struct{ Handle int }
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok && handle == 0 {
			_ = json.Unmarshal([]byte(data), &ev)
			handle = ev.Handle
		}
	}
	p := byHandle(t, old.t, handle)
	state := func() []byte {
		old.t.Freeze()
		cancel() // the upgrade drops the client
		resp.Body.Close()
		<-handled
		if !p.running() {
			t.Fatal("the run's process was killed when the upgrade dropped its client")
		}
		return old.snapshot(t)
	}()
	nt := newAgent(t, old.execve(t, state))
	np := byHandle(t, nt, handle)
	if !np.running() || !np.run || np.runDeadline.IsZero() || np.deadline == nil || texts(first(np.out.snapshot(""))) != "started" {
		t.Fatalf("the run after the upgrade: running %v, deadline %v, output %q", np.running(), np.runDeadline, texts(first(np.out.snapshot(""))))
	}
	np.kill()
	waitDone(t, np)
	if in := np.info(); in.Signal == nil || *in.Signal != int(unix.SIGKILL) {
		t.Fatalf("the run's end: %+v", in)
	}
}

// TestHandoverReapedLeaderAndLostPid: an entry whose leader the old agent
// had reaped while a descendant still held its pipe goes on reading and
// ends with the leader's true exit; a pid the new agent could not adopt
// ends with an unknown exit (null code and signal), and its supervisor
// restarts it as after a failure.
func TestHandoverReapedLeaderAndLostPid(t *testing.T) {
	long := Config{ExitGrace: time.Hour} // the drain ends at the pipe's EOF, not by a timer
	old := newOldAgentWith(t, long)
	flag := filepath.Join(t.TempDir(), "go")
	drain := mustStart(t, old.t, &StartRequest{Command: "sh", Args: []string{"-c",
		`sh -c 'echo $$; while [ ! -e ` + flag + ` ]; do sleep 0.01; done; echo child-late; exec sleep 300' & echo leader-done; exit 3`}})
	name := "orphaned"
	svc := mustStart(t, old.t, &StartRequest{Command: "sh", Args: []string{"-c", "echo run; exec sleep 300"}, Name: &name})
	until(t, "the leader reaped, its child's pid printed", func() bool {
		_, reaped := drain.proc.Exited()
		n, _ := drain.out.snapshot("")
		return reaped && len(n) == 2
	})
	child := 0
	for _, l := range first(drain.out.snapshot("")) {
		fmt.Sscan(l.Text, &child)
	}
	t.Cleanup(func() { _ = unix.Kill(child, unix.SIGKILL) })
	nt := newAgentWith(t, old.execve(t, old.snapshot(t)), long, map[int]bool{svc.pid: true})
	_ = unix.Kill(svc.pid, unix.SIGKILL) // gone, as a pid that cannot be adopted is

	nd := byHandle(t, nt, drain.handle)
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	until(t, "the child's late line", func() bool { return strings.Contains(texts(first(nd.out.snapshot(""))), "child-late") })
	_ = unix.Kill(child, unix.SIGKILL)
	waitDone(t, nd)
	if in := nd.info(); in.Status != "exited" || in.ExitCode == nil || *in.ExitCode != 3 {
		t.Fatalf("the drained entry: %+v, want the leader's exit 3", in)
	}

	lost := byHandle(t, nt, svc.handle)
	waitDone(t, lost)
	if in := lost.info(); in.Status != "exited" || in.ExitCode != nil || in.Signal != nil {
		t.Fatalf("the entry not adopted: %+v, want exited with null exit code and signal", in)
	}
	until(t, "the supervisor's restart", func() bool {
		mi, _ := nt.Managed(name)
		_, m, _ := nt.lookup(name)
		return mi.RestartCount == 1 && m != nil && m.current() != lost && m.current().running()
	})
}
