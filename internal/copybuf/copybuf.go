// Package copybuf owns the process's copy buffers: the one place a bulk
// path (an uplink stream's ReadFrom, the proxy's reverse proxy, the files
// capability's uploads and downloads, a relay toward a WebSocket) gets
// the buffer it copies through, so one bound covers them all.
//
// A copy holds its buffer for as long as it runs, a long-lived one (an
// SSE follower, a stalled download or upload) for its whole life. So at
// most MaxBig big buffers are out at once in a process; past that a copy
// gets a small one (net/http's own size), and a flood of long-lived
// copies costs SmallSize each: 240 stalled downloads grew tl-proxy by
// 885 MB before the bound (docs/security.md, "Streams whose readers
// stop"). Idle pooled buffers are dropped by the garbage collector, so
// the pools hold no memory after a burst.
package copybuf

import (
	"sync"
	"sync/atomic"
)

const (
	// Size is a bulk copy's buffer: reads and writes of sockets and files
	// in 256 KiB steps, one syscall where net/http's 32 KiB made eight
	// (docs/benchmarks.md, "Files through the proxy").
	Size = 256 << 10
	// SmallSize is a copy's buffer past MaxBig, and an interactive
	// relay's (one frame of the uplink's WriteChunk per read).
	SmallSize = 32 << 10
	// MaxBig is how many Size buffers may be out at once: 32 MiB.
	MaxBig = 128
)

var (
	big    = sync.Pool{New: func() any { b := make([]byte, Size); return &b }}
	small  = sync.Pool{New: func() any { b := make([]byte, SmallSize); return &b }}
	bigOut atomic.Int64
)

// Get lends a Size buffer, or a SmallSize one when MaxBig are out.
func Get() []byte {
	if bigOut.Add(1) <= MaxBig {
		return *big.Get().(*[]byte)
	}
	bigOut.Add(-1)
	return GetSmall()
}

// GetSmall lends a SmallSize buffer.
func GetSmall() []byte { return *small.Get().(*[]byte) }

// Put takes back what Get or GetSmall lent (known by its capacity);
// anything else is left to the garbage collector.
func Put(b []byte) {
	switch cap(b) {
	case Size:
		b = b[:Size]
		bigOut.Add(-1)
		big.Put(&b)
	case SmallSize:
		b = b[:SmallSize]
		small.Put(&b)
	}
}

// BigOut is how many Size buffers are lent now.
func BigOut() int64 { return bigOut.Load() }

// Pool lends copy buffers to httputil.ReverseProxy (its BufferPool).
type Pool struct{}

func (Pool) Get() []byte  { return Get() }
func (Pool) Put(b []byte) { Put(b) }
