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
	Stream string // Stdout or Stderr
	Text   string
	At     time.Time
}

// outputLog is the captured output of one process: a ring of lines bounded
// in count and bytes, shared by stdout and stderr so the combined view keeps
// their order. Followers hold a cursor (a sequence number) instead of a
// queue, so a slow follower costs no memory and never stalls the process:
// when it falls behind the ring, it skips what was dropped.
type outputLog struct {
	maxLines int
	maxBytes int
	budget   *budget // shared by every log of the table; nil: none

	mu      sync.Mutex
	lines   []Line        // ring; guarded by mu
	start   int           // index of the oldest line in lines
	n       int           // lines held
	bytes   int           // text bytes held
	next    uint64        // Seq of the next line
	dropped uint64        // lines pushed out of the ring
	closed  bool          // no more lines will come
	wake    chan struct{} // closed and replaced on every append or close
}

func newOutputLog(maxLines, maxBytes int, b *budget) *outputLog {
	return &outputLog{maxLines: maxLines, maxBytes: maxBytes, budget: b, wake: make(chan struct{})}
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

func (l *outputLog) append(stream, text string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	for l.n > 0 && (l.n >= l.maxLines || l.bytes+len(text) > l.maxBytes || l.budget.over(l.bytes, len(text))) {
		old := &l.lines[l.start]
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
	l.lines[(l.start+l.n)%len(l.lines)] = Line{Seq: l.next, Stream: stream, Text: text, At: at}
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

// since returns up to max lines at or after seq, the cursor to continue
// from, a channel that is closed when more may be available, and whether
// the log is closed and fully read.
func (l *outputLog) since(seq uint64, max int) (lines []Line, next uint64, wake <-chan struct{}, eof bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	oldest := l.next - uint64(l.n)
	if seq < oldest {
		seq = oldest // the follower fell behind: skip what was dropped
	}
	for seq < l.next && len(lines) < max {
		lines = append(lines, l.lines[(l.start+int(seq-oldest))%len(l.lines)])
		seq++
	}
	return lines, seq, l.wake, l.closed && seq == l.next
}

// capture reads f line by line into log until EOF or a read error (the
// read end closed or its deadline passed). Lines longer than maxLine are
// split at maxLine bytes; a trailing partial line is kept at EOF.
func capture(f *os.File, log *outputLog, stream string, maxLine int) {
	br := bufio.NewReaderSize(f, maxLine)
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
