package uplink

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/copybuf"
)

// Tuning of the multiplexer, shared by both ends. docs/uplink.md explains
// each figure and docs/benchmarks.md has the measurements behind them.
const (
	// StreamWindow is the per-stream receive window. Throughput of one
	// stream is about window/RTT; 256 KiB (yamux's default) caps a bulk
	// stream well below loopback TCP, 4 MiB reaches it while keeping a
	// slow reader's backlog bounded.
	StreamWindow = 4 << 20
	// RecvBudgetBytes bounds what this process's streams may have
	// received and not yet read before their windows stop growing past
	// yamux's initial 256 KiB (RecvBudget): a flood of downloads whose
	// clients stop reading made tl-proxy hold a whole 4 MiB window for
	// each stream, 885 MB for 240 of them (TestProxyStalledDownloadsBounded).
	// 16 bulk streams at full window fit in it.
	RecvBudgetBytes = 64 << 20
	// WriteChunk is the smallest bound of one yamux data frame and the
	// one a stream starts with. The session has one sender loop, so a huge
	// frame on a bulk stream would sit in front of a keystroke on another
	// stream; what matters is how long a frame holds the link, so each
	// stream sizes its frames by the time its last ones took (Stream.Write):
	// at most FrameTime on the link, between WriteChunk and MaxWriteChunk.
	// On a 100 Mbit/s link a 32 KiB frame already takes 2.6 ms, so frames
	// stay 32 KiB there; on loopback they grow to MaxWriteChunk, a
	// fraction of the per-frame work (syscalls, the peer's hand-off to its
	// reader, window updates). Copying paths write at most copybuf.Size
	// (256 KiB, 0.1–0.3 ms on loopback) at a time, so their frames stop
	// there; spliced downloads (splice.go) fill frames of up to 1 MiB,
	// 5–13% less machine CPU per GB than 256 KiB frames in six paired
	// runs (docs/benchmarks.md).
	WriteChunk    = 32 << 10
	MaxWriteChunk = 1 << 20
	FrameTime     = 2 * time.Millisecond
	// KeepAliveInterval and WriteTimeout together bound how long a dead
	// link goes unnoticed: a ping every 4 s that must be answered within
	// 10 s means detection within 14 s, under the 15 s promised. The write timeout is not a
	// throughput floor: a saturated link still moves frames every few ms.
	KeepAliveInterval = 4 * time.Second
	WriteTimeout      = 10 * time.Second
	// OpenTimeout bounds a stream open that the peer never acknowledges.
	OpenTimeout = 30 * time.Second
	// TCPKeepAlive is the uplink socket's TCP keep-alive period, both
	// ends. yamux's pings (KeepAliveInterval) find a dead peer; this lets
	// NATs and load balancers on the path see traffic on an idle link and
	// frees the kernel's side of a socket whose peer vanished.
	TCPKeepAlive = 5 * time.Second
)

// MuxConfig returns the yamux configuration both ends use.
func MuxConfig(log zerolog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 1024
	c.EnableKeepAlive = true
	c.KeepAliveInterval = KeepAliveInterval
	c.ConnectionWriteTimeout = WriteTimeout
	c.MaxStreamWindowSize = StreamWindow
	c.RecvBudget = RecvBudget
	c.StreamOpenTimeout = OpenTimeout
	// A relay half-closes when one direction ends; the other direction may
	// legitimately carry data for a long time after (a request sent, then
	// a long download). Relays close both ways themselves.
	c.StreamCloseTimeout = 0
	c.LogOutput = nil
	c.Logger = yamuxLogger{log.With().Str("component", "yamux").Logger()}
	return c
}

// RecvBudget is this process's one budget for every uplink session's
// streams (tl-proxy has a session per sandbox).
var RecvBudget = &yamux.RecvBudget{Limit: RecvBudgetBytes}

type yamuxLogger struct{ l zerolog.Logger }

func (y yamuxLogger) Print(v ...any) { y.l.Debug().Msg(trim(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) {
	y.l.Debug().Msgf(format, v...)
}
func (y yamuxLogger) Println(v ...any) { y.l.Debug().Msg(trim(v...)) }

func trim(v ...any) string {
	s := ""
	for i, x := range v {
		if i > 0 {
			s += " "
		}
		if e, ok := x.(error); ok {
			s += e.Error()
		} else if str, ok := x.(string); ok {
			s += str
		}
	}
	return s
}

// Stream wraps a yamux stream: writes go out in frames of at most
// chunk bytes (adapted to the link, see WriteChunk), and a write that hits
// the connection write timeout closes the whole session.
// That second rule guards against yamux's known hang (GHSA-29qp-crvh-w22m):
// after such a timeout the peer's readers could otherwise wait forever; a
// closed session fails them all at once and the agent reconnects.
type Stream struct {
	*yamux.Stream
	chunk atomic.Int64 // current frame bound; 0 means WriteChunk
	sess  *sessionState
}

// Wrap returns c as a *Stream when it is a yamux stream, else c itself.
func Wrap(c net.Conn) net.Conn {
	if s, ok := c.(*yamux.Stream); ok {
		return &Stream{Stream: s, sess: stateOf(s.Session())}
	}
	return c
}

func (s *Stream) Write(b []byte) (int, error) {
	if len(b) < WriteChunk {
		s.sess.small(s.StreamID())
	}
	written := 0
	for len(b) > 0 {
		n := min(len(b), s.frame())
		start := time.Now()
		m, err := s.Stream.Write(b[:n])
		written += m
		if err != nil {
			s.closeOnWriteTimeout(err)
			return written, err
		}
		if n >= WriteChunk {
			s.adapt(n, time.Since(start))
		}
		b = b[n:]
	}
	return written, nil
}

// closeOnWriteTimeout closes the session after a write that hit the
// connection write timeout (GHSA-29qp-crvh-w22m, see Stream).
func (s *Stream) closeOnWriteTimeout(err error) {
	if errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		_ = s.Stream.Session().Close()
	}
}

// frame is the bound of the next frame: WriteChunk while another stream
// of the session is interactive (InteractiveHold), else what adapt chose.
func (s *Stream) frame() int {
	if s.sess.interactive(s.StreamID()) {
		return WriteChunk
	}
	if c := s.chunk.Load(); c > 0 {
		return int(c)
	}
	return WriteChunk
}

// adapt sizes the next frames from the time a frame of n bytes took to
// be taken by the session: the hand-off to its send loop, other streams'
// frames ahead of it, the socket write, a wait for the peer's window. All
// of that is time a keystroke queued behind our frame would wait too. So
// the next frame is what the link moves in FrameTime at that pace:
// shrinking at once, growing at most 2x per frame, always between
// WriteChunk and MaxWriteChunk. A slow link or a busy session keeps
// WriteChunk; a fast idle one gets MaxWriteChunk.
func (s *Stream) adapt(n int, took time.Duration) {
	want := MaxWriteChunk
	if took > 0 {
		want = int(min(int64(n)*int64(FrameTime)/int64(took), MaxWriteChunk))
	}
	next := min(max(want, WriteChunk), 2*s.frame())
	s.chunk.Store(int64(next))
}

// CloseWrite sends FIN: yamux's Close is a half-close.
func (s *Stream) CloseWrite() error { return s.Stream.Close() }

// ReadFrom keeps io.Copy from bypassing the chunking through a ReaderFrom
// on the source side. A PipeFiller's bytes go by splice (spliceFrom);
// others are read up to copybuf.Size at a time (a file, a client's socket:
// one syscall per 256 KiB instead of per frame) and written in frames
// bounded as Write's are, so a keystroke's wait behind a bulk stream
// stays as short.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	if pf := pipeFiller(r); pf != nil {
		if n, err, fallback := s.spliceFrom(pf); !fallback {
			return n, err
		}
	}
	buf := copybuf.Get()
	defer copybuf.Put(buf)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := s.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
