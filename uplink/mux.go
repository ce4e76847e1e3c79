package uplink

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"
)

// Tuning of the multiplexer, shared by both ends. docs/uplink.md explains
// each figure and docs/benchmarks.md has the measurements behind them.
const (
	// StreamWindow is the per-stream receive window. Throughput of one
	// stream is about window/RTT; 256 KiB (yamux's default) caps a bulk
	// stream well below loopback TCP, 4 MiB reaches it while keeping a
	// slow reader's backlog bounded.
	StreamWindow = 4 << 20
	// WriteChunk bounds one yamux data frame. The session has one sender
	// loop, so a huge frame on a bulk stream would sit in front of a
	// keystroke on another stream; 32 KiB frames keep that wait short.
	WriteChunk = 32 << 10
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
	c.StreamOpenTimeout = OpenTimeout
	// A relay half-closes when one direction ends; the other direction may
	// legitimately carry data for a long time after (a request sent, then
	// a long download). Relays close both ways themselves.
	c.StreamCloseTimeout = 0
	c.LogOutput = nil
	c.Logger = yamuxLogger{log.With().Str("component", "yamux").Logger()}
	return c
}

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

// Stream wraps a yamux stream: writes go out in WriteChunk frames, and a
// write that hits the connection write timeout closes the whole session.
// That second rule guards against yamux's known hang (GHSA-29qp-crvh-w22m):
// after such a timeout the peer's readers could otherwise wait forever; a
// closed session fails them all at once and the agent reconnects.
type Stream struct {
	*yamux.Stream
}

// Wrap returns c as a *Stream when it is a yamux stream, else c itself.
func Wrap(c net.Conn) net.Conn {
	if s, ok := c.(*yamux.Stream); ok {
		return &Stream{s}
	}
	return c
}

func (s *Stream) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), WriteChunk)
		m, err := s.Stream.Write(b[:n])
		written += m
		if err != nil {
			if errors.Is(err, yamux.ErrConnectionWriteTimeout) {
				_ = s.Stream.Session().Close()
			}
			return written, err
		}
		b = b[n:]
	}
	return written, nil
}

// CloseWrite sends FIN: yamux's Close is a half-close.
func (s *Stream) CloseWrite() error { return s.Stream.Close() }

// ReadFrom keeps io.Copy from bypassing the chunking through a ReaderFrom
// on the source side.
func (s *Stream) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, WriteChunk)
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
