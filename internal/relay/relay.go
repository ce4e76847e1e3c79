// Package relay copies bytes both ways between two connections, with
// half-close and fixed buffers. Both ends use it: the agent (uplink tcp:
// and unix: streams, WebSocket tunnels, SSH forwards) and the proxy (its
// SSH front door's port routes). It imports nothing of either end, so the
// proxy does not link the agent's SSH server, WebSocket library or
// identity code (see TestProxyDeps in cmd/tl-proxy).
package relay

import (
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/internal/copybuf"
	"github.com/tensorlake/tl-agent/internal/netx"
)

// BigWriter is a destination whose every Write has a fixed cost worth
// spreading, such as a WebSocket (one message per Write): it gets a big
// copy buffer (copybuf.Get), other destinations a small one, one per
// direction, the uplink's frame size, so a read becomes one frame.
type BigWriter interface{ PrefersBigWrites() bool }

type closeWriter interface{ CloseWrite() error }

// Relay copies both ways between a and b until both directions end, then
// closes both. EOF on one side is passed on as a half-close (FIN) where the
// other side supports it, so request-then-response protocols work. Memory
// is two fixed buffers; back-pressure is the peers' own flow control. It
// returns the bytes copied a->b and b->a.
func Relay(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); aToB = pipe(b, a) }()
	go func() { defer wg.Done(); bToA = pipe(a, b) }()
	wg.Wait()
	a.Close()
	b.Close()
	return aToB, bToA
}

// pipe copies src to dst, then half-closes dst. On a write error the source
// is closed too, so the other direction does not wait forever on a peer
// that is gone.
func pipe(dst, src net.Conn) int64 {
	var buf []byte
	if bw, ok := dst.(BigWriter); ok && bw.PrefersBigWrites() {
		buf = copybuf.Get()
	} else {
		buf = copybuf.GetSmall()
	}
	defer copybuf.Put(buf)
	n, err := Copy(dst, src, buf)
	if cw, ok := dst.(closeWriter); ok && err == nil {
		_ = cw.CloseWrite()
	} else {
		dst.Close()
		src.Close()
	}
	return n
}

// Copy copies src to dst with buf, as io.CopyBuffer would; when src is
// an uplink stream (a sinker) and dst a socket, small frames go from the
// stream's receive loop straight to the socket.
func Copy(dst net.Conn, src io.Reader, buf []byte) (int64, error) {
	if ss, ok := src.(sinker); ok {
		if try := tryWriter(dst); try != nil {
			return ss.SinkTo(writerOnly{dst}, try, buf)
		}
	}
	return io.CopyBuffer(writerOnly{dst}, readerOnly{src}, buf)
}

// SinkThrough is the SinkTo of a wrapper of an uplink stream that counts
// bytes (the agent's and the proxy's stream counters): inner's own
// SinkTo when it has one, sunk reporting that the wrapper must count the
// n bytes itself; else a copy through self, the wrapper, whose Read
// counts them.
func SinkThrough(inner, self io.Reader, w io.Writer, try func([]byte) int, buf []byte) (n int64, sunk bool, err error) {
	if ss, ok := inner.(sinker); ok {
		n, err = ss.SinkTo(w, try, buf)
		return n, true, err
	}
	n, err = io.CopyBuffer(w, readerOnly{self}, buf)
	return n, false, err
}

// ReadFromThrough is the ReadFrom of a wrapper of an uplink stream that
// counts bytes: inner's own ReadFrom (a download's splice, framing in
// big steps) when it has one, else a copy into inner. The wrapper counts
// the n bytes.
func ReadFromThrough(inner io.Writer, r io.Reader) (int64, error) {
	if rf, ok := inner.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{inner}, r)
}

// sinker is a source that can hand small frames straight to a
// non-blocking write of the destination (yamux's Stream.SinkTo in the
// in-repo copy): an interactive byte then skips one goroutine wake-up.
type sinker interface {
	SinkTo(w io.Writer, try func([]byte) int, buf []byte) (int64, error)
}

// tryWriter is a write to a TCP or unix socket that never waits: it
// returns what the socket took at once (0 when it is full or failed; the
// relay's own write then finds the error).
func tryWriter(dst net.Conn) func([]byte) int {
	rc := netx.Socket(dst)
	if rc == nil {
		return nil
	}
	return func(p []byte) int {
		var n int
		_ = rc.Write(func(fd uintptr) bool {
			for {
				k, err := unix.Write(int(fd), p)
				if err == unix.EINTR {
					continue
				}
				if err == nil {
					n = k
				}
				return true
			}
		})
		return n
	}
}

// writerOnly and readerOnly hide ReadFrom/WriteTo so CopyBuffer uses our
// bounded buffer instead of a path that might buffer more (or splice past
// the uplink's frame chunking).
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// Channel relays an SSH channel (a forward: its requests are discarded)
// and conn both ways with half-close until both ends are done, then
// closes both. It returns the bytes copied channel->conn and conn->channel.
func Channel(ch gossh.Channel, reqs <-chan *gossh.Request, conn net.Conn) (chToConn, connToCh int64) {
	go gossh.DiscardRequests(reqs)
	return Relay(&chanConn{Channel: ch, local: conn.RemoteAddr(), remote: conn.LocalAddr()}, conn)
}

// ChannelConn makes an SSH channel a net.Conn for Relay (CloseWrite sends
// EOF), for callers that track the channel's life themselves.
func ChannelConn(ch gossh.Channel, local, remote net.Addr) net.Conn {
	return &chanConn{Channel: ch, local: local, remote: remote}
}

// chanConn makes an SSH channel a net.Conn for Relay; CloseWrite sends EOF.
type chanConn struct {
	gossh.Channel
	local, remote net.Addr
}

func (c *chanConn) LocalAddr() net.Addr                { return c.local }
func (c *chanConn) RemoteAddr() net.Addr               { return c.remote }
func (c *chanConn) SetDeadline(t time.Time) error      { return nil }
func (c *chanConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *chanConn) SetWriteDeadline(t time.Time) error { return nil }
