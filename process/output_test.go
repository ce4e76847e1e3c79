package process

import (
	"io"
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
	b := l.read(0, 2, 1<<20, false)
	if texts(b.lines) != "o1 e1" || b.next != 2 || b.eof || !b.full {
		t.Fatalf("read(0,2) = %q %d %v", texts(b.lines), b.next, b.eof)
	}
	// A follower that fell behind the ring gets the oldest kept line; the
	// numbers show the gap (Seq for both streams, N within stdout).
	for i := 0; i < 5; i++ {
		l.append(Stdout, "x", time.Now())
	}
	select {
	case <-b.wake:
	default:
		t.Fatal("append did not wake the follower")
	}
	b = l.read(b.next, 100, 1<<20, false)
	if len(b.lines) != 4 || b.lines[0].Seq != 4 || b.lines[0].N != 3 || b.next != 8 {
		t.Fatalf("after falling behind: %d lines from seq %d (n %d), next %d", len(b.lines), b.lines[0].Seq, b.lines[0].N, b.next)
	}
	l.close()
	if b := l.read(b.next, 100, 1<<20, false); !b.eof || b.ends != [2]uint64{7, 1} {
		t.Fatalf("closed and read: %+v", b)
	}
	l.append(Stdout, "late", time.Now())
	if b := l.read(0, 100, 1<<20, false); b.next != 8 {
		t.Fatal("append after close was kept")
	}
	// The byte bound cuts a batch, but never below one line.
	if b := l.read(0, 100, 1, false); len(b.lines) != 1 || !b.full {
		t.Fatalf("byte-bound read: %d lines", len(b.lines))
	}
}

// TestOutputLogPinned: while pinned, a line the owner has not read is
// never dropped: the append waits until the owner reads (or unpins).
func TestOutputLogPinned(t *testing.T) {
	l := newOutputLog(2, 1<<20, nil)
	l.pin()
	l.append(Stdout, "1", time.Now())
	l.append(Stdout, "2", time.Now())
	appended := make(chan struct{})
	go func() { l.append(Stdout, "3", time.Now()); close(appended) }()
	select {
	case <-appended:
		t.Fatal("append dropped a line the owner had not read")
	case <-time.After(50 * time.Millisecond):
	}
	if b := l.read(0, 1, 1<<20, false); len(b.lines) != 1 {
		t.Fatal("a follower's read")
	}
	select {
	case <-appended:
		t.Fatal("a follower's read released the owner's hold")
	case <-time.After(50 * time.Millisecond):
	}
	b := l.read(0, 1, 1<<20, true)
	<-appended
	b = l.read(b.next, 10, 1<<20, true)
	if texts(b.lines) != "2 3" {
		t.Fatalf("owner read %q", texts(b.lines))
	}
	for i := 0; i < 2; i++ {
		l.append(Stdout, "more", time.Now())
	}
	done := make(chan struct{})
	go func() { l.append(Stdout, "last", time.Now()); close(done) }()
	l.unpin()
	<-done
	if _, dropped := l.snapshot(""); dropped != 4 {
		t.Fatalf("dropped %d", dropped)
	}
}

func TestCaptureSplitsLongLines(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	l := newOutputLog(100, 1<<20, nil)
	done := make(chan struct{})
	c := &capturer{f: r, log: l, stream: Stdout, maxLine: 16, fz: &freezer{}}
	go func() { c.run(); close(done) }()
	_, _ = w.WriteString("short\r\n" + strings.Repeat("y", 20) + "\nlast-without-newline")
	w.Close()
	<-done
	lines, _ := l.snapshot("")
	if text := texts(lines); text != "short yyyyyyyyyyyyyyyy yyyy last-without-new line" || c.got.Load() != 48 {
		t.Fatalf("captured %q, %d bytes", text, c.got.Load())
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

// TestCapturerFreezeKeepsPartial: a freeze stops the reads mid-line; the
// bytes read so far are held (what follows waits in the pipe), and after
// the thaw the line comes out whole, split at maxLine as without a freeze.
func TestCapturerFreezeKeepsPartial(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l := newOutputLog(100, 1<<20, nil)
	fz := &freezer{}
	c := &capturer{f: r, log: l, stream: Stdout, maxLine: 8, fz: fz}
	done := make(chan struct{})
	go func() { c.run(); close(done) }()
	_, _ = w.WriteString("abcde")
	for i := 0; c.got.Load() < 5; i++ {
		if i > 4000 {
			t.Fatal("the capturer read nothing")
		}
		time.Sleep(5 * time.Millisecond)
	}
	fz.freeze()
	c.stopReads()
	for i := 0; !c.idle(); i++ {
		if i > 4000 {
			t.Fatal("the capturer did not park")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, _ = w.WriteString("fghij\n")
	if string(c.partial) != "abcde" || c.got.Load() != 5 {
		t.Fatalf("parked holding %q after %d bytes", c.partial, c.got.Load())
	}
	c.resume()
	fz.unfreeze()
	w.Close()
	<-done
	if lines, _ := l.snapshot(""); texts(lines) != "abcdefgh ij" {
		t.Fatalf("after the thaw: %q", texts(lines))
	}
}

// The exit's target counts a read caught between taking its bytes from
// the pipe and counting them: before, such a read made the target short,
// and the reads were cut with bytes of the exit still in the pipe (a line
// of TestRunSlowReaderAfterExit cut in two, now and then).
func TestExitTargetCountsReadInFlight(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := w.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	c := &capturer{f: r}
	c.got.Store(200) // taken before
	// A read of up to 700 bytes is in flight: the kernel has handed over
	// 600 of them, the count does not have them yet.
	c.reading.Store(700)
	if _, err := io.ReadFull(r, make([]byte, 600)); err != nil {
		t.Fatal(err)
	}
	if got := c.exitTarget(); got < 200+1000 {
		t.Fatalf("target %d, want at least %d (every byte written)", got, 1200)
	}
}
