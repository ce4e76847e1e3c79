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

// capture reads f line by line into log until EOF or a read error (the
// read end closed or its deadline passed), counting the bytes taken from
// the pipe in got. Lines longer than maxLine are split at maxLine bytes; a
// trailing partial line is kept at EOF.
func capture(f *os.File, log *outputLog, stream string, maxLine int, got *atomic.Int64) {
	br := bufio.NewReaderSize(countingReader{f, got}, maxLine)
	for {
		b, err := br.ReadSlice('\n')
		if len(b) > 0 {
			b = bytes.TrimSuffix(b, []byte{'\n'})
			if err == nil {
				b = bytes.TrimSuffix(b, []byte{'\r'})
			}
			log.append(stream, string(b), time.Now())
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return // EOF, or the read end was closed after the exit grace
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	f *os.File
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	c.n.Add(int64(n))
	return n, err
}
