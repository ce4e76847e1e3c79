package yamux

import (
	"sync"
	"sync/atomic"
)

// recvQueue holds a stream's received, unread bytes as a list of chunks
// (tl-agent's change, FORK.md). Upstream kept them in a bytes.Buffer that
// the receive loop filled straight from the connection while holding the
// stream's lock, so a reader could not take what was already there while
// the next frame was still arriving, and the buffer slid its unread bytes
// down (a memmove of up to the window) to make room. Here a large frame is
// read into a chunk of its own with no lock held and then queued; small
// frames are packed into the last chunk, so a window's worth of tiny
// frames holds a few chunks, not one each.
type recvQueue struct {
	chunks [][]byte // unread bytes: chunks[0][off:], chunks[1], ...
	off    int
	n      int
}

// Chunks are pooled by size class: minChunk, 2*minChunk, ... maxPooled
// (tl-agent's spliced downloads send frames of up to 1 MiB).
// A frame larger than maxPooled (a peer may send up to its window) gets a
// chunk of its own size that is not pooled.
const (
	minChunk  = 32 << 10
	maxPooled = 1 << 20
)

var chunkPools [6]sync.Pool // 32 KiB to 1 MiB

func chunkClass(n int) int {
	c := 0
	for size := minChunk; size < n; size *= 2 {
		c++
	}
	return c
}

// getChunk returns an empty chunk with room for at least n bytes.
func getChunk(n int) []byte {
	if n > maxPooled {
		return make([]byte, 0, n)
	}
	c := chunkClass(n)
	if p, _ := chunkPools[c].Get().(*[]byte); p != nil {
		return (*p)[:0]
	}
	return make([]byte, 0, minChunk<<c)
}

func putChunk(b []byte) {
	if cap(b) > maxPooled || cap(b) < minChunk || cap(b)&(cap(b)-1) != 0 {
		return
	}
	b = b[:0]
	chunkPools[chunkClass(cap(b))].Put(&b)
}

// Len is the number of unread bytes.
func (q *recvQueue) Len() int { return q.n }

// push queues a chunk of received bytes.
func (q *recvQueue) push(b []byte) {
	if len(b) == 0 {
		putChunk(b)
		return
	}
	q.chunks = append(q.chunks, b)
	q.n += len(b)
}

// addRoom queues an empty chunk for small frames to be packed into.
func (q *recvQueue) addRoom(size int) {
	q.chunks = append(q.chunks, getChunk(size))
}

// tail is the last chunk's free room when it has at least n bytes of it,
// or nil.
func (q *recvQueue) tail(n int) []byte {
	if len(q.chunks) == 0 {
		return nil
	}
	t := q.chunks[len(q.chunks)-1]
	if cap(t)-len(t) < n {
		return nil
	}
	return t[len(t) : len(t)+n]
}

// grewTail records n bytes written into the room tail returned.
func (q *recvQueue) grewTail(n int) {
	i := len(q.chunks) - 1
	q.chunks[i] = q.chunks[i][:len(q.chunks[i])+n]
	q.n += n
}

// Read copies unread bytes into b, in order, and returns drained chunks
// to their pools.
func (q *recvQueue) Read(b []byte) int {
	read := 0
	for read < len(b) && len(q.chunks) > 0 {
		c := q.chunks[0]
		m := copy(b[read:], c[q.off:])
		read += m
		q.off += m
		if q.off == len(c) {
			putChunk(c)
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
			q.off = 0
		}
	}
	q.n -= read
	if len(q.chunks) == 0 {
		q.chunks = nil // the slice's array goes with the last chunk
	}
	return read
}

// release drops every chunk (a stream that was shrunk or closed).
func (q *recvQueue) release() {
	for _, c := range q.chunks {
		putChunk(c)
	}
	*q = recvQueue{}
}

// Cap is the room the queued chunks hold (upstream's tests log the
// buffer's capacity).
func (q *recvQueue) Cap() int {
	c := 0
	for _, b := range q.chunks {
		c += cap(b)
	}
	return c
}

// RecvBudget is a bound on received bytes queued and not yet read,
// shared by the sessions whose Config names it (Config.RecvBudget).
type RecvBudget struct {
	Limit int64 // bytes
	used  atomic.Int64
}

// Used is the bytes queued now in the streams it counts.
func (b *RecvBudget) Used() int64 { return b.used.Load() }

// over says whether windows should stay at the initial size.
func (b *RecvBudget) over() bool { return b != nil && b.used.Load() > b.Limit }
