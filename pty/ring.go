package pty

import "unicode/utf8"

// ring keeps the last max bytes of a session's output. Offsets are absolute
// (bytes since the session started), so a client's position survives the
// ring wrapping. The backing array grows by doubling up to max, so an idle
// session that printed a prompt holds a few KiB, not a whole MiB.
//
// ring is not safe for concurrent use; the session's mutex guards it.
type ring struct {
	buf        []byte // circular once it has grown to max; index = off % len(buf)
	max        int
	start, end int64 // kept output is [start, end)
}

// minRing is the first allocation: one PTY read (the line discipline hands
// out at most 4 KiB at a time).
const minRing = 4 << 10

func newRing(max int) ring { return ring{max: max} }

// Len is the number of bytes kept.
func (r *ring) Len() int { return int(r.end - r.start) }

// Cap is the size of the backing array (memory held).
func (r *ring) Cap() int { return len(r.buf) }

// write appends p, dropping the oldest bytes beyond max.
func (r *ring) write(p []byte) {
	if len(p) > r.max {
		// Only the tail survives.
		r.start += int64(len(p) - r.max)
		r.end += int64(len(p) - r.max)
		p = p[len(p)-r.max:]
	}
	if need := r.Len() + len(p); need > len(r.buf) && len(r.buf) < r.max {
		r.grow(need)
	}
	if over := r.Len() + len(p) - len(r.buf); over > 0 {
		r.start += int64(over)
	}
	for len(p) > 0 {
		i := int(r.end % int64(len(r.buf)))
		n := copy(r.buf[i:], p)
		p = p[n:]
		r.end += int64(n)
	}
}

func (r *ring) grow(need int) {
	size := max(len(r.buf)*2, minRing)
	for size < need {
		size *= 2
	}
	size = min(size, r.max)
	nb := make([]byte, size)
	// Re-lay the kept bytes so that index = off % size still holds.
	for off := r.start; off < r.end; {
		i := int(off % int64(size))
		n := r.read(off, nb[i:])
		if n == 0 {
			break
		}
		off += int64(n)
	}
	r.buf = nb
}

// read copies kept bytes from absolute offset off into dst and returns how
// many. off must be within [start, end].
func (r *ring) read(off int64, dst []byte) int {
	if off < r.start || off >= r.end || len(dst) == 0 {
		return 0
	}
	total := 0
	for off < r.end && len(dst) > 0 {
		i := int(off % int64(len(r.buf)))
		chunk := r.buf[i:min(len(r.buf), i+int(r.end-off))]
		n := copy(dst, chunk)
		dst = dst[n:]
		off += int64(n)
		total += n
	}
	return total
}

// at returns the byte at absolute offset off (which must be kept).
func (r *ring) at(off int64) byte { return r.buf[off%int64(len(r.buf))] }

// replayStart is where a replay of the kept output begins. When nothing has
// been dropped, the very start. Otherwise the cut fell at an arbitrary byte,
// possibly inside a UTF-8 sequence or an escape sequence, which a terminal
// would render as garbage (Coder issue 3666); we start after the first line
// feed within replayScan bytes (escape sequences in practice never span a
// line feed), or, with no line feed there, at the first byte that does not
// continue a UTF-8 sequence.
func (r *ring) replayStart() int64 {
	if r.start == 0 {
		return 0
	}
	limit := min(r.end, r.start+replayScan)
	for off := r.start; off < limit; off++ {
		if r.at(off) == '\n' {
			return off + 1
		}
	}
	off := r.start
	for i := 0; off < r.end && i < utf8.UTFMax && !utf8.RuneStart(r.at(off)); i++ {
		off++
	}
	return off
}

// replayScan bounds the search for a line feed at the replay cut.
const replayScan = 16 << 10
