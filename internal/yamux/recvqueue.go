package yamux

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
	spare  [][]byte // drained chunks kept for the next frames
}

// Chunks come in size classes, minChunk, 2*minChunk, ... maxClass; a
// frame larger than maxClass (a peer may send up to its window) gets a
// chunk of its own size. A drained chunk of a class is kept for the
// stream's next frames (at most maxSpare of them, as upstream kept its one
// buffer), not in a pool shared by every stream: a process's spare memory
// then goes with its streams (closed, or shrunk when idle) and a forced GC
// returns it, where a sync.Pool would keep it past one.
const (
	minChunk = 32 << 10
	maxClass = 256 << 10
	maxSpare = 4
)

// classSize is the size of the class that holds n bytes, or n itself
// above the largest class.
func classSize(n int) int {
	if n > maxClass {
		return n
	}
	size := minChunk
	for size < n {
		size *= 2
	}
	return size
}

// take returns an empty chunk with room for at least n bytes, a spare one
// of its class if there is one.
func (q *recvQueue) take(n int) []byte {
	size := classSize(n)
	for i := len(q.spare) - 1; i >= 0; i-- {
		if c := q.spare[i]; cap(c) == size {
			q.spare[i] = q.spare[len(q.spare)-1]
			q.spare[len(q.spare)-1] = nil
			q.spare = q.spare[:len(q.spare)-1]
			return c[:0]
		}
	}
	return make([]byte, 0, size)
}

// keep makes a drained chunk a spare, or drops it.
func (q *recvQueue) keep(c []byte) {
	if cap(c) <= maxClass && len(q.spare) < maxSpare {
		q.spare = append(q.spare, c[:0])
	}
}

// Len is the number of unread bytes.
func (q *recvQueue) Len() int { return q.n }

// push queues a chunk of received bytes.
func (q *recvQueue) push(b []byte) {
	if len(b) == 0 {
		q.keep(b)
		return
	}
	q.chunks = append(q.chunks, b)
	q.n += len(b)
}

// addRoom queues an empty chunk for small frames to be packed into.
func (q *recvQueue) addRoom(size int) {
	q.chunks = append(q.chunks, q.take(size))
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

// Read copies unread bytes into b, in order, and keeps drained chunks
// as spares.
func (q *recvQueue) Read(b []byte) int {
	read := 0
	for read < len(b) && len(q.chunks) > 0 {
		c := q.chunks[0]
		m := copy(b[read:], c[q.off:])
		read += m
		q.off += m
		if q.off == len(c) {
			q.keep(c)
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

// release drops the spares, and the chunks when nothing is unread (an
// idle stream that was shrunk).
func (q *recvQueue) release() {
	q.spare = nil
	if q.n == 0 {
		q.chunks, q.off = nil, 0
	}
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
