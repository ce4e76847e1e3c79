package process

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Stream names as the API spells them.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// Line is one captured line of output.
type Line struct {
	Seq    uint64 // position in the process's output, from 0
	N      uint64 // position in its own stream's output, from 0
	Stream string // Stdout or Stderr
	Text   string
	At     time.Time
}

// streamIndex maps Stdout and Stderr to 0 and 1.
func streamIndex(stream string) int {
	if stream == Stderr {
		return 1
	}
	return 0
}

// outputLog is the captured output of one process: a ring of lines bounded
// in count and bytes, shared by stdout and stderr so the combined view keeps
// their order. Followers hold a cursor (a sequence number) instead of a
// queue, so a slow follower costs no memory and never stalls the process:
// when it falls behind the ring, it skips what was dropped (and is told,
// from the lines' numbers). The run client is the log's owner instead:
// while the log is pinned, a line the owner has not read is never dropped;
// the capture waits, so the pipe is read only as fast as the owner reads.
type outputLog struct {
	maxLines int
	maxBytes int
	budget   *budget // shared by every log of the table; nil: none

	mu         sync.Mutex
	lines      []Line        // ring; guarded by mu
	start      int           // index of the oldest line in lines
	n          int           // lines held
	bytes      int           // text bytes held
	next       uint64        // Seq of the next line
	dropped    uint64        // lines pushed out of the ring
	streamNext [2]uint64     // N of the next line of each stream
	closed     bool          // no more lines will come
	wake       chan struct{} // closed and replaced on every append or close
	pinned     bool          // the owner reads everything: appends wait for it
	owner      uint64        // the owner's cursor (Seq of its next line)
	space      chan struct{} // closed and replaced when the owner reads or unpins
}

func newOutputLog(maxLines, maxBytes int, b *budget) *outputLog {
	return &outputLog{maxLines: maxLines, maxBytes: maxBytes, budget: b, wake: make(chan struct{}), space: make(chan struct{})}
}

// pin makes the log keep every line until the owner has read it; call it
// before any line is appended.
func (l *outputLog) pin() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pinned = true
}

// unpin ends the owner's hold: appends drop the oldest lines again.
func (l *outputLog) unpin() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pinned {
		l.pinned = false
		l.signalSpace()
	}
}

// signalSpace wakes an append waiting for the owner. Called with mu held.
func (l *outputLog) signalSpace() {
	close(l.space)
	l.space = make(chan struct{})
}

// budget bounds the output held by all processes together. Over it, a log
// that appends drops its own oldest lines down to a floor, so the chatty
// process pays and a quiet one keeps its little: the table holds at most
// max plus floor per process.
type budget struct {
	max   int64
	floor int
	held  atomic.Int64
}

// over reports whether adding n bytes to a log holding own bytes should
// first drop one of its lines.
func (b *budget) over(own, n int) bool {
	return b != nil && own > b.floor && b.held.Load()+int64(n) > b.max
}

func (b *budget) add(n int) {
	if b != nil {
		b.held.Add(int64(n))
	}
}

// append adds a line, dropping the oldest over the bounds; while pinned it
// first waits for the owner to read a line it would drop.
func (l *outputLog) append(stream, text string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.closed {
			return
		}
		if l.n == 0 || !(l.n >= l.maxLines || l.bytes+len(text) > l.maxBytes || l.budget.over(l.bytes, len(text))) {
			break
		}
		old := &l.lines[l.start]
		if l.pinned && old.Seq >= l.owner {
			space := l.space
			l.mu.Unlock()
			<-space
			l.mu.Lock()
			continue
		}
		l.bytes -= len(old.Text)
		l.budget.add(-len(old.Text))
		*old = Line{}
		l.start = (l.start + 1) % len(l.lines)
		l.n--
		l.dropped++
	}
	if l.n == len(l.lines) {
		l.grow()
	}
	si := streamIndex(stream)
	l.lines[(l.start+l.n)%len(l.lines)] = Line{Seq: l.next, N: l.streamNext[si], Stream: stream, Text: text, At: at}
	l.streamNext[si]++
	l.n++
	l.bytes += len(text)
	l.budget.add(len(text))
	l.next++
	close(l.wake)
	l.wake = make(chan struct{})
}

// grow doubles the ring up to maxLines, so a quiet process holds little.
func (l *outputLog) grow() {
	size := min(max(2*len(l.lines), 64), l.maxLines)
	nl := make([]Line, size)
	for i := 0; i < l.n; i++ {
		nl[i] = l.lines[(l.start+i)%len(l.lines)]
	}
	l.lines, l.start = nl, 0
}

// close marks the end of output; followers see EOF once they catch up.
func (l *outputLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.wake)
		l.signalSpace()
	}
}

// release gives the log's bytes back to the budget when the table forgets
// its process; a follower still reading sees what it already had.
func (l *outputLog) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.budget.add(-l.bytes)
	l.budget = nil
}

// size is the text bytes held.
func (l *outputLog) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bytes
}

// snapshot returns the kept lines of stream ("" for both) and how many
// lines were dropped from the ring so far.
func (l *outputLog) snapshot(stream string) ([]Line, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Line, 0, l.n)
	for i := 0; i < l.n; i++ {
		ln := l.lines[(l.start+i)%len(l.lines)]
		if stream == "" || ln.Stream == stream {
			out = append(out, ln)
		}
	}
	return out, l.dropped
}

// batch is what one read of the log returns.
type batch struct {
	lines []Line
	next  uint64          // the cursor to continue from
	full  bool            // the bounds cut it: read again at once
	wake  <-chan struct{} // closed when more may be available
	eof   bool            // the log is closed and fully read
	ends  [2]uint64       // at eof: how many lines each stream had in all
}

// read returns the lines at or after seq (from the oldest kept one when
// seq fell behind the ring), at most maxLines and about maxBytes (at least
// one line). owner reads move the owner's cursor, letting waiting appends
// drop what was read.
func (l *outputLog) read(seq uint64, maxLines, maxBytes int, owner bool) batch {
	l.mu.Lock()
	defer l.mu.Unlock()
	oldest := l.next - uint64(l.n)
	seq = max(seq, oldest)
	var b batch
	size := 0
	for seq < l.next && len(b.lines) < maxLines && (size < maxBytes || len(b.lines) == 0) {
		ln := l.lines[(l.start+int(seq-oldest))%len(l.lines)]
		b.lines = append(b.lines, ln)
		size += len(ln.Text)
		seq++
	}
	if owner && l.pinned && seq > l.owner {
		l.owner = seq
		l.signalSpace()
	}
	b.next, b.full, b.wake = seq, seq < l.next, l.wake
	b.eof = l.closed && seq == l.next
	b.ends = l.streamNext
	return b
}

// capturer reads one pipe of a process line by line into its log until
// EOF or a read error (the read end closed, or cut after the exit grace),
// counting the bytes taken from the pipe in got. Lines longer than maxLine
// are split at maxLine bytes; a trailing partial line is kept at EOF.
//
// At a live upgrade's freeze (Table.Freeze) the read deadline is moved to
// the past: the goroutine stops reading without closing the pipe, keeps
// the start of a line it holds (partial: the bytes after it stay in the
// kernel's pipe) and parks until Thaw, or the exec. Save hands partial
// over, so the new binary's capturer completes that line.
type capturer struct {
	f       *os.File
	log     *outputLog
	stream  string
	maxLine int
	fz      *freezer
	got     atomic.Int64
	// reading is the size of a read in progress (0: none): its bytes may
	// have left the pipe before got counts them (drainAfterExit).
	reading atomic.Int64
	cut     atomic.Bool // the exit grace ended the reads: a deadline ends, never parks

	mu      sync.Mutex
	partial []byte // owned by the goroutine; guarded by mu once parked
	parked  bool   // guarded by mu
	ended   bool   // guarded by mu
}

func (c *capturer) run() {
	defer c.setState(func() { c.ended = true })
	br := bufio.NewReaderSize(countingReader{c.f, &c.got, &c.reading}, c.maxLine)
	for {
		b, err := br.ReadSlice('\n')
		switch {
		case err == nil || errors.Is(err, bufio.ErrBufferFull):
			c.take(b, err == nil)
		case errors.Is(err, os.ErrDeadlineExceeded) && !c.cut.Load():
			c.partial = append(c.partial, b...)
			c.park()
		default:
			// EOF, or the read end was closed or cut after the exit grace.
			if len(c.partial)+len(b) > 0 {
				c.take(b, true)
			}
			return
		}
	}
}

// take appends the line that ends with b (eol: b ends the line, with its
// newline unless at EOF; else b is a full buffer) after the held partial, split at maxLine bytes. Without
// eol, what is left under maxLine stays held.
func (c *capturer) take(b []byte, eol bool) {
	if len(c.partial) > 0 {
		b = append(c.partial, b...)
		c.partial = nil
	}
	if eol && bytes.HasSuffix(b, []byte{'\n'}) {
		b = bytes.TrimSuffix(b[:len(b)-1], []byte{'\r'})
	}
	for len(b) >= c.maxLine && (len(b) > c.maxLine || !eol) {
		c.log.append(c.stream, string(b[:c.maxLine]), time.Now())
		b = b[c.maxLine:]
	}
	if !eol {
		if len(b) > 0 {
			c.partial = append([]byte(nil), b...) // b may be the reader's buffer
		}
		return
	}
	c.log.append(c.stream, string(b), time.Now())
}

// park waits out a freeze (none: it returns at once).
func (c *capturer) park() {
	thaw := c.fz.wait()
	if thaw == nil {
		return // thawed meanwhile: Thaw cleared the deadline
	}
	c.setState(func() { c.parked = true })
	<-thaw
	c.setState(func() { c.parked = false })
}

func (c *capturer) setState(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

// idle reports whether the goroutine no longer reads: parked or ended.
func (c *capturer) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.parked || c.ended
}

// stopReads makes the goroutine's read return (freeze or cut).
func (c *capturer) stopReads() { _ = c.f.SetReadDeadline(time.Now()) }

// endReads cuts the reads for good (the exit grace is over).
func (c *capturer) endReads() {
	c.cut.Store(true)
	c.stopReads()
}

// resume clears a freeze's deadline; a cut that came meanwhile stays.
func (c *capturer) resume() {
	_ = c.f.SetReadDeadline(time.Time{})
	if c.cut.Load() {
		c.stopReads()
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	f       *os.File
	n       *atomic.Int64
	reading *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	c.reading.Store(int64(len(p)))
	n, err := c.f.Read(p)
	c.n.Add(int64(n))
	c.reading.Store(0)
	return n, err
}
