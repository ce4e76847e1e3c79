package uplink

import (
	"encoding/binary"
	"net"
	"sync"
)

// yamux's sender writes each data frame as two writes, the 12-byte header
// and then the body: two syscalls (and on TCP_NODELAY, possibly two
// segments) per frame. coalesceConn holds a data frame's header and sends
// it with the body in one writev. It relies only on yamux's documented
// frame layout (version, type, flags, stream id, length) and on its one
// sender loop writing header and body back to back.
type coalesceConn struct {
	net.Conn
	mu   sync.Mutex
	hdr  [12]byte
	held bool
}

// joinBufs join a frame's header and body where writev is not available
// (TLS): shared by every link and returned after each write, so an idle
// link holds none, and a bulk stream does not make one per frame.
var joinBufs = sync.Pool{New: func() any { return new([]byte) }}

// Coalesce wraps the uplink's connection before it is handed to yamux.
func Coalesce(c net.Conn) net.Conn { return &coalesceConn{Conn: c} }

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

func (c *coalesceConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held {
		c.held = false
		var n int64
		var err error
		switch c.Conn.(type) {
		case *net.TCPConn, *net.UnixConn: // writev
			bufs := net.Buffers{c.hdr[:], p}
			n, err = bufs.WriteTo(c.Conn)
		default: // TLS and others: one write of a joined copy
			bp := joinBufs.Get().(*[]byte)
			b := append(append((*bp)[:0], c.hdr[:]...), p...)
			var m int
			m, err = c.Conn.Write(b)
			n = int64(m)
			if cap(b) <= 2*MaxWriteChunk { // not a huge frame's
				*bp = b[:0]
				joinBufs.Put(bp)
			}
		}
		return int(max(n-yamuxHeaderSize, 0)), err
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:12]) > 0 {
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	return c.Conn.Write(p)
}
