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
// frame layout (version, type, flags, stream id, length) and on whoever
// holds its write slot (the send loop, or a stream's writer: see
// internal/yamux/FORK.md) writing header and body back to back.
type coalesceConn struct {
	net.Conn
	mu   sync.Mutex
	hdr  [12]byte
	held bool
	buf  []byte // joins header and body where writev is not available
}

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
			c.buf = append(append(c.buf[:0], c.hdr[:]...), p...)
			var m int
			m, err = c.Conn.Write(c.buf)
			n = int64(m)
			if cap(c.buf) > 2*MaxWriteChunk {
				// Keep a buffer for the largest frame the uplink makes
				// (freed at 256 KiB, it was made anew for every bulk
				// frame over TLS), but not a huge one.
				c.buf = nil
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
