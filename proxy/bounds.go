package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// inflight counts proxied requests and streams per sandbox, so that one
// user (or a runaway client) cannot open unbounded API streams, SSE
// followers and WebSockets to one sandbox.
type inflight struct {
	max int // 0: no cap

	mu sync.Mutex
	n  map[string]int // guarded by mu
}

func newInflight(max int) *inflight { return &inflight{max: max, n: map[string]int{}} }

// acquire takes a slot for sandbox id; release gives it back.
func (f *inflight) acquire(id string) (release func(), ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.max > 0 && f.n[id] >= f.max {
		return nil, false
	}
	f.n[id]++
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.n[id]--; f.n[id] <= 0 {
				delete(f.n, id)
			}
		})
	}, true
}

// errBodyTooSlow ends a request body that broke the minimum-progress rule.
var errBodyTooSlow = errors.New("request body too slow")

// errBodyAfterHandler refuses a read of a spliced body once the handler
// returned (spliceBody).
var errBodyAfterHandler = errors.New("proxy: request body read after its handler returned")

// bodyKey is the request context key of a request's *progressBody.
type bodyKey struct{}

// watchBody wraps req's body in the minimum-progress rule of the config's
// limits, or returns nil when there is no body or no rule. A body is never
// given a whole-request deadline: a 1 GiB upload at a steady pace may take
// as long as it needs.
func (p *Proxy) watchBody(w http.ResponseWriter, req *http.Request) *progressBody {
	l := p.cfg.Limits
	if req.Body == nil || req.Body == http.NoBody || l.BodyMinBytes <= 0 || l.BodyWindow <= 0 {
		return nil
	}
	b := &progressBody{body: req.Body, rc: http.NewResponseController(w), min: l.BodyMinBytes, window: l.BodyWindow}
	b.spliceFromClient(req)
	return b
}

// progressBody enforces: at least min bytes in every window of the time
// spent inside Read. Only time blocked on the client counts; while the
// sandbox is slow to take what was read (flow control), the clock stops.
// When the budget runs out mid-Read, a timer sets the connection's read
// deadline to now, which ends that Read; the caller then gets
// errBodyTooSlow and the client a 408 (upstreamError).
type progressBody struct {
	body   io.ReadCloser
	rc     *http.ResponseController
	min    int64
	window time.Duration

	mu      sync.Mutex
	got     int64         // bytes in this window; guarded by mu
	used    time.Duration // time spent in Read in this window; guarded by mu
	reading bool          // a Read is in progress; guarded by mu
	cut     bool          // the rule fired; guarded by mu
	done    bool          // the handler returned; guarded by mu
	timer   *time.Timer

	// An upload spliced from the client's socket (splice.go): sock is
	// that socket, left the bytes of the body not yet taken by Read or
	// FillPipe, head what the server had read past the headers.
	sock    syscall.RawConn
	left    int64
	head    []byte
	drained bool // head was read
	spliced bool // FillPipe took bytes from the socket; guarded by mu
	// splicedBytes counts them (tl_proxy_spliced_bytes_total).
	splicedBytes prometheus.Counter
	short        bool // the last FillPipe took fewer bytes than asked
}

func (b *progressBody) Read(buf []byte) (int, error) {
	if b.sock != nil {
		return b.timed(func() (int, error) { return b.readCounted(buf) })
	}
	return b.timed(func() (int, error) { return b.body.Read(buf) })
}

// timed runs step, a read from the client, under the rule.
func (b *progressBody) timed(step func() (int, error)) (int, error) {
	b.mu.Lock()
	if b.cut {
		b.mu.Unlock()
		return 0, errBodyTooSlow
	}
	if b.done && b.sock != nil {
		b.mu.Unlock()
		return 0, errBodyAfterHandler
	}
	left := b.window - b.used
	if b.timer == nil {
		b.timer = time.AfterFunc(left, b.expire)
	} else {
		b.timer.Reset(left)
	}
	b.reading = true
	b.mu.Unlock()

	start := time.Now()
	n, err := step()

	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer.Stop()
	b.reading = false
	if b.cut {
		return n, errBodyTooSlow
	}
	b.used += time.Since(start)
	if b.got += int64(n); b.got >= b.min {
		b.got, b.used = 0, 0
	}
	return n, err
}

// wasCut reports whether the rule fired (nil-safe).
func (b *progressBody) wasCut() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cut
}

// expire runs when the window's budget is spent inside a Read.
func (b *progressBody) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.reading || b.cut || b.done {
		return
	}
	b.cut = true
	// Ends the blocked Read. The connection is not reused after: the
	// server closes it once the 408 is written.
	_ = b.rc.SetReadDeadline(time.Now())
}

// finish disarms the rule when the handler returns: the connection may
// then serve the next request, whose reads a late deadline would cut.
func (b *progressBody) finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = true
	if b.timer != nil {
		b.timer.Stop()
	}
}

func (b *progressBody) Close() error {
	b.mu.Lock()
	if b.timer != nil {
		b.timer.Stop()
	}
	b.mu.Unlock()
	return b.body.Close()
}

// stallWriter bounds each write to the client: a write (or flush) that
// cannot hand its bytes to the kernel within timeout means the client
// stopped reading (or vanished with data in flight, which TCP keep-alive
// does not notice); the connection is then dropped. An idle stream is
// never affected: only time inside a write counts. The hijacked
// connection of a WebSocket or tunnel gets the same rule.
type stallWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

// watchWrites wraps w in the write-stall rule, or returns it when off.
func (p *Proxy) watchWrites(w http.ResponseWriter) http.ResponseWriter {
	if p.cfg.Limits.WriteStallTimeout <= 0 {
		return w
	}
	return &stallWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: p.cfg.Limits.WriteStallTimeout}
}

func (s *stallWriter) Write(b []byte) (int, error) {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	n, err := s.ResponseWriter.Write(b)
	_ = s.rc.SetWriteDeadline(time.Time{})
	return n, err
}

func (s *stallWriter) FlushError() error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	err := s.rc.Flush()
	_ = s.rc.SetWriteDeadline(time.Time{})
	return err
}

func (s *stallWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := s.rc.Hijack()
	if err != nil {
		return nil, nil, err
	}
	return &stallConn{Conn: c, timeout: s.timeout}, brw, nil
}

// Unwrap lets ResponseController reach the server's writer for the rest.
func (s *stallWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// stallConn is a hijacked connection whose writes are bounded likewise.
// One goroutine writes to it at a time (the proxy's copier).
type stallConn struct {
	net.Conn
	timeout time.Duration
}

// PlainConn is the hijacked connection: a write that never waits
// cannot stall (netx.Socket).
func (c *stallConn) PlainConn() net.Conn { return c.Conn }

func (c *stallConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(b)
	_ = c.Conn.SetWriteDeadline(time.Time{})
	return n, err
}
