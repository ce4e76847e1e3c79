// Package forward moves bytes between connections: the relay used by
// uplink tcp:/unix: streams, WebSocket tunnels and SSH forwards, and the
// dialers that reach targets inside the sandbox.
package forward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// BufSize is the relay's copy buffer, one per direction. It matches the
// uplink's frame size so a read becomes one frame.
const BufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// BigBufSize is the copy buffer toward a destination that prefers bigger
// writes (see bigWriter).
const BigBufSize = 256 << 10

var bigPool = sync.Pool{New: func() any { b := make([]byte, BigBufSize); return &b }}

// bigWriter is a destination whose every Write has a fixed cost worth
// spreading, such as a WebSocket (one message per Write).
type bigWriter interface{ PrefersBigWrites() bool }

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
	pool := &bufPool
	if bw, ok := dst.(bigWriter); ok && bw.PrefersBigWrites() {
		pool = &bigPool
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	n, err := io.CopyBuffer(writerOnly{dst}, readerOnly{src}, *bp)
	if cw, ok := dst.(closeWriter); ok && err == nil {
		_ = cw.CloseWrite()
	} else {
		dst.Close()
		src.Close()
	}
	return n
}

// writerOnly and readerOnly hide ReadFrom/WriteTo so CopyBuffer uses our
// bounded buffer instead of a path that might buffer more (or splice past
// the uplink's frame chunking).
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// DialTimeout bounds connecting to a target inside the sandbox.
const DialTimeout = 5 * time.Second

// ErrUnreachable wraps a failed dial to a sandbox target.
var ErrUnreachable = errors.New("target unreachable")

// DialTCP connects to 127.0.0.1:port inside the sandbox.
func DialTCP(ctx context.Context, port int) (net.Conn, error) {
	d := net.Dialer{Timeout: DialTimeout}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))
	if err != nil {
		return nil, fmt.Errorf("%w: port %d: %v", ErrUnreachable, port, err)
	}
	return c, nil
}
