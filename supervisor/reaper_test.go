package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// TestReaperOwnsAllWaiting runs the reaper as the agent does (reaping every
// child, as a child subreaper so orphans come to it too) while many
// commands with known exit codes run beside double-forking orphans: every
// command must get its own status, none stolen, none lost.
func TestReaperOwnsAllWaiting(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	r := NewReaper(zerolog.Nop(), true)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { r.Run(stop); close(done) }()
	defer func() { close(stop); <-done }()

	const n, workers = 300, 6
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += workers {
				// Every third command leaves an orphan behind; every
				// fifth is killed by a signal.
				script := fmt.Sprintf("exit %d", i%256)
				if i%3 == 0 {
					script = "(sleep 0.01 &); " + script
				}
				if i%5 == 0 {
					script = "kill -KILL $$"
				}
				p, err := r.Start(exec.Command("/bin/sh", "-c", script))
				if err != nil {
					errs <- err
					continue
				}
				select {
				case <-p.Done():
				case <-time.After(60 * time.Second):
					errs <- fmt.Errorf("command %d never reported its exit", i)
					continue
				}
				e := p.Wait()
				want := i % 256
				if i%5 == 0 {
					want = 128 + 9
				}
				if e.ExitCode() != want {
					errs <- fmt.Errorf("command %d: %v (code %d), want %d", i, e, e.ExitCode(), want)
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The orphans come back to us and are reaped.
	wantOrphans := int64(0)
	for i := 0; i < n; i++ {
		if i%3 == 0 && i%5 != 0 {
			wantOrphans++
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, started, orphans := r.Stats()
		if started != n {
			t.Fatalf("started %d, want %d", started, n)
		}
		if orphans >= wantOrphans {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reaped %d orphans, want >= %d", orphans, wantOrphans)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReaperStdio refuses stdio os/exec would need Wait to copy.
func TestReaperStdio(t *testing.T) {
	r := NewReaper(zerolog.Nop(), false)
	cmd := exec.Command("/bin/true")
	cmd.Stdout = &strings.Builder{}
	if _, err := r.Start(cmd); err != ErrStdio {
		t.Fatalf("err %v, want ErrStdio", err)
	}
}

// TestReaperClose: Close returns only once Run has returned, after
// reaping what already exited; it refuses later starts, and is safe twice
// and without Run.
func TestReaperClose(t *testing.T) {
	NewReaper(zerolog.Nop(), false).Close() // never ran: must not hang

	r := NewReaper(zerolog.Nop(), false)
	ran := make(chan struct{})
	go func() { r.Run(nil); close(ran) }()
	first, err := r.Start(exec.Command("/bin/true"))
	if err != nil {
		t.Fatal(err)
	}
	<-first.Done() // Run is running
	// A child that has exited but may not be reaped yet: Close's last
	// pass must have delivered its exit by the time Close returns.
	p, err := r.Start(exec.Command("/bin/true"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
		if err != nil || strings.Contains(string(b), ") Z ") {
			break // a zombie, or already reaped
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.Close()
	if _, exited := p.Exited(); !exited {
		t.Error("Close returned before the reaper's last pass delivered an exit")
	}
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running after Close")
	}
	if _, err := r.Start(exec.Command("/bin/true")); err != ErrShuttingDown {
		t.Errorf("Start after Close: %v, want ErrShuttingDown", err)
	}
	r.Close()
	r.Run(nil) // after Close: returns at once
}

func TestParseStat(t *testing.T) {
	cases := []struct {
		in   string
		want Stat
		ok   bool
	}{
		{"42 (sh) S 1 42 42 34816 -1 4194560 0 0", Stat{Pid: 42, PPid: 1, Pgrp: 42, Session: 42, TTY: 34816, State: 'S', Flags: 4194560}, true},
		{"7 (a) b) (c) Z 3 7 5 0 -1 4194560 1", Stat{Pid: 7, PPid: 3, Pgrp: 7, Session: 5, State: 'Z', Flags: 4194560}, true},
		{"2 (kthreadd) S 0 0 0 0 -1 2129984 0", Stat{Pid: 2, State: 'S', Flags: 2129984}, true},
		{"garbage", Stat{}, false},
		{"1 (x) S", Stat{}, false},
		{"1 (x) S 0 x 0 0 -1 0", Stat{}, false},
	}
	for _, c := range cases {
		got, ok := ParseStat([]byte(c.in))
		if ok != c.ok || got != c.want {
			t.Errorf("ParseStat(%q) = %+v %v, want %+v %v", c.in, got, ok, c.want, c.ok)
		}
	}
	if k, _ := ParseStat([]byte(cases[2].in)); !k.KernelThread() || !k.Alive() {
		t.Error("kthreadd: want a live kernel thread")
	}
	if z, _ := ParseStat([]byte(cases[1].in)); z.Alive() {
		t.Error("a zombie is not alive")
	}
}

func TestDescendants(t *testing.T) {
	procs := []Stat{{Pid: 1}, {Pid: 10, PPid: 1}, {Pid: 11, PPid: 10}, {Pid: 12, PPid: 11}, {Pid: 20, PPid: 1}, {Pid: 30, PPid: 10}}
	var got []int
	for _, p := range descendants(procs, 10) {
		got = append(got, p.Pid)
	}
	if fmt.Sprint(got) != "[11 30 12]" {
		t.Fatalf("descendants of 10: %v", got)
	}
}

// TestSweepDescendants sweeps as a non-PID-1 agent does: our descendants
// (one ignoring SIGTERM, one that left its group with setsid) end, and
// processes above us are never listed.
func TestSweepDescendants(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("cannot become a child subreaper: %v", err)
	}
	r := NewReaper(zerolog.Nop(), true)
	stop := make(chan struct{})
	go r.Run(stop)
	defer close(stop)
	stubborn := exec.Command("/bin/sh", "-c", `trap "" TERM; setsid sh -c 'trap "" TERM; sleep 100' & sleep 100`)
	stubborn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, err := r.Start(stubborn)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	listed := sandboxPids(false)
	if len(listed) < 3 {
		t.Fatalf("descendants %v, want the shell and its two children", listed)
	}
	for _, pid := range listed {
		if pid == os.Getpid() || pid == os.Getppid() || pid == 1 {
			t.Fatalf("sweep lists %d, which is not our descendant", pid)
		}
	}
	res := Sweep(r, 300*time.Millisecond, false, zerolog.Nop())
	if res.Left != 0 || res.Killed < 2 {
		t.Fatalf("sweep %+v: want the 2+ stubborn processes killed, none left", res)
	}
	if _, ok := p.Exited(); !ok {
		t.Fatal("our child was not reaped")
	}
	if _, err := r.Start(exec.Command("/bin/true")); err != ErrShuttingDown {
		t.Fatalf("start after the sweep: %v, want ErrShuttingDown", err)
	}
}

func TestParseMountInfo(t *testing.T) {
	in := `22 1 0:21 / /proc rw,nosuid - proc proc rw
23 1 0:5 / /dev rw - devtmpfs devtmpfs rw
30 23 0:27 / /dev/my\040pts rw - devpts devpts rw
`
	got, err := parseMountInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/proc", "/dev", "/dev/my pts"} {
		if !got[p] {
			t.Errorf("%s not found in %v", p, got)
		}
	}
	if got["/sys"] {
		t.Error("/sys found")
	}
}

// TestReaperAdopt: a child this process started without the reaper (as a
// live upgrade's predecessor did) is adopted, and its exit code delivered;
// a pid that is not our child is refused.
func TestReaperAdopt(t *testing.T) {
	r := NewReaper(zerolog.Nop(), false)
	cmd := exec.Command("sh", "-c", "read x; exit 7")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, err := r.Adopt(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Adopt(cmd.Process.Pid); err == nil {
		t.Fatal("a pid was adopted twice")
	}
	if _, err := r.Adopt(os.Getppid()); err == nil {
		t.Fatal("our parent was adopted")
	}
	if r.Adopted(cmd.Process.Pid) != p || r.Adopted(cmd.Process.Pid) != nil {
		t.Fatal("Adopted must hand the Proc out once")
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { r.Run(stop); close(done) }()
	defer func() { close(stop); <-done }()
	in.Close()
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the adopted child's exit was never delivered")
	}
	if e := p.Wait(); e.Code != 7 {
		t.Fatalf("adopted child's exit %v, want exit 7", e)
	}
}

// TestReaperPause: while paused, an exit stays a zombie (no pass waits for
// it: a live upgrade's next reaper must find it); Resume delivers it.
func TestReaperPause(t *testing.T) {
	r := NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { r.Run(stop); close(done) }()
	defer func() { close(stop); <-done }()
	r.Pause()
	p, err := r.Start(exec.Command("sh", "-c", "exit 5"))
	if err != nil {
		t.Fatal(err)
	}
	// Bounded wait until the child is a zombie, with passes kicked meanwhile.
	zombie := false
	for i := 0; i < 300 && !zombie; i++ {
		r.Kick()
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
		if j := strings.LastIndexByte(string(b), ')'); j > 0 && strings.HasPrefix(string(b[j+1:]), " Z") {
			zombie = true
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !zombie {
		t.Fatal("the child never became a zombie")
	}
	r.Kick()
	time.Sleep(50 * time.Millisecond)
	if _, ok := p.Exited(); ok {
		t.Fatal("a paused reaper reaped an exit")
	}
	r.Resume()
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("Resume did not deliver the exit")
	}
	if e := p.Wait(); e.Code != 5 {
		t.Fatalf("exit %v, want exit 5", e)
	}
}
