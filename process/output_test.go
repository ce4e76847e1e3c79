package process

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestOutputLogBoundsLines(t *testing.T) {
	l := newOutputLog(3, 1<<20, nil)
	for _, s := range []string{"a", "b", "c", "d", "e"} {
		l.append(Stdout, s, time.Now())
	}
	lines, dropped := l.snapshot("")
	if got := texts(lines); got != "c d e" || dropped != 2 {
		t.Fatalf("kept %q, dropped %d", got, dropped)
	}
}

func TestOutputLogBoundsBytes(t *testing.T) {
	l := newOutputLog(100, 10, nil)
	for _, s := range []string{"1234", "5678", "abcd"} {
		l.append(Stdout, s, time.Now())
	}
	lines, dropped := l.snapshot("")
	if got := texts(lines); got != "5678 abcd" || dropped != 1 || l.size() != 8 {
		t.Fatalf("kept %q, dropped %d, size %d", got, dropped, l.size())
	}
	// A line bigger than the whole budget is still kept, alone.
	l.append(Stderr, strings.Repeat("x", 20), time.Now())
	if lines, _ := l.snapshot(""); len(lines) != 1 {
		t.Fatalf("kept %d lines", len(lines))
	}
}

func TestOutputLogFilterAndCursor(t *testing.T) {
	l := newOutputLog(4, 1<<20, nil)
	l.append(Stdout, "o1", time.Now())
	l.append(Stderr, "e1", time.Now())
	l.append(Stdout, "o2", time.Now())
	if got := texts(first(l.snapshot(Stderr))); got != "e1" {
		t.Fatalf("stderr %q", got)
	}
	lines, next, wake, eof := l.since(0, 2)
	if texts(lines) != "o1 e1" || next != 2 || eof {
		t.Fatalf("since(0,2) = %q %d %v", texts(lines), next, eof)
	}
	// A follower that fell behind the ring skips what was dropped.
	for i := 0; i < 5; i++ {
		l.append(Stdout, "x", time.Now())
	}
	select {
	case <-wake:
	default:
		t.Fatal("append did not wake the follower")
	}
	lines, next, _, _ = l.since(next, 100)
	if len(lines) != 4 || lines[0].Seq != 4 || next != 8 {
		t.Fatalf("after falling behind: %d lines from seq %d, next %d", len(lines), lines[0].Seq, next)
	}
	l.close()
	if _, _, _, eof := l.since(next, 100); !eof {
		t.Fatal("closed and read: want eof")
	}
	l.append(Stdout, "late", time.Now())
	if _, n, _, _ := l.since(0, 100); n != 8 {
		t.Fatal("append after close was kept")
	}
}

func TestCaptureSplitsLongLines(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	l := newOutputLog(100, 1<<20, nil)
	done := make(chan struct{})
	go func() { capture(r, l, Stdout, 16); close(done) }()
	_, _ = w.WriteString("short\r\n" + strings.Repeat("y", 20) + "\nlast-without-newline")
	w.Close()
	<-done
	lines, _ := l.snapshot("")
	if got := texts(lines); got != "short yyyyyyyyyyyyyyyy yyyy last-without-new line" {
		t.Fatalf("captured %q", got)
	}
}

func texts(lines []Line) string {
	var s []string
	for _, l := range lines {
		s = append(s, l.Text)
	}
	return strings.Join(s, " ")
}

func first(lines []Line, _ uint64) []Line { return lines }

func TestOOMCounter(t *testing.T) {
	p := t.TempDir() + "/memory.events"
	_ = os.WriteFile(p, []byte("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n"), 0o644)
	if n := (oomCounter{path: p}).count(); n != 2 {
		t.Fatalf("oom_kill = %d", n)
	}
	if n := (oomCounter{}).count(); n != -1 {
		t.Fatalf("unknown counter = %d", n)
	}
}

func TestStatOf(t *testing.T) {
	ppid, state := statOf(os.Getpid())
	if ppid != os.Getppid() || state == 0 {
		t.Fatalf("statOf(self) = %d %c", ppid, state)
	}
	if ppid, _ := statOf(1 << 30); ppid != -1 {
		t.Fatal("statOf(absent) found a process")
	}
}

func TestOutputBudgetIsShared(t *testing.T) {
	b := &budget{max: 10, floor: 4}
	quiet := newOutputLog(100, 100, b)
	chatty := newOutputLog(100, 100, b)
	quiet.append(Stdout, "qqqq", time.Now())
	for i := 0; i < 10; i++ {
		chatty.append(Stdout, "cc", time.Now())
	}
	// The chatty log pays: it keeps what fits beside the quiet one's 4.
	if quiet.size() != 4 || chatty.size() != 6 || b.held.Load() != 10 {
		t.Fatalf("quiet %d, chatty %d, held %d", quiet.size(), chatty.size(), b.held.Load())
	}
	// A log at its floor still appends (the bound is max + floor each).
	quiet.append(Stdout, "q", time.Now())
	if quiet.size() != 5 {
		t.Fatalf("quiet %d", quiet.size())
	}
	chatty.release()
	if b.held.Load() != 5 {
		t.Fatalf("held after release %d", b.held.Load())
	}
}

func TestOOMCounterFindsOwnCgroup(t *testing.T) {
	// Whatever this machine has (v1, v2 or none), the counter reads or
	// says unknown; it never fails.
	c := newOOMCounter()
	if n := c.count(); c.path != "" && n < 0 {
		t.Fatalf("found %s but cannot read oom_kill", c.path)
	}
	t.Logf("cgroup oom counter: %q", c.path)
}
