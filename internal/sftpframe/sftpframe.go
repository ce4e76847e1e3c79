// Package sftpframe is the one owner of SFTP packet boundaries on a byte
// stream and of the exit trailer that follows a bare sftp stream's last
// packet.
//
// The proxy serves sftp subsystems itself and relays the SFTP bytes over
// an uplink stream to the agent's sftp-server; only the agent sees that
// server exit. So the agent appends one extra packet after the server's
// last reply, of a type SFTP never uses (0), carrying the exit; the proxy
// reports it as exit-status or exit-signal, as OpenSSH's sshd reports its
// sftp-server's exit (draft-ietf-secsh-filexfer-02 section 3: every packet
// is uint32 length, byte type, then length-1 bytes). The trailer is sent
// only when the server's output ended on a packet boundary: a server that
// died mid-packet leaves the stream ending mid-packet, which the proxy
// reports as a broken session.
package sftpframe

import (
	"encoding/binary"
	"errors"
	"io"
)

// trailerType is the trailer's packet type: SFTP's types start at 1.
const trailerType = 0

// maxTrailer bounds a trailer's body (type byte onwards): a status, a
// signal name and a flag fit many times over.
const maxTrailer = 64

// Exit is what the trailer carries: the server's exit status, or the
// signal (a name without "SIG", as SSH's exit-signal has it) that ended it.
type Exit struct {
	Status uint32
	Signal string
	Core   bool
}

// AppendTrailer appends e's trailer packet to b.
func AppendTrailer(b []byte, e Exit) []byte {
	sig := e.Signal
	if len(sig) > maxTrailer-10 {
		sig = sig[:maxTrailer-10]
	}
	n := 1 + 4 + 4 + len(sig) + 1
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = append(b, trailerType)
	b = binary.BigEndian.AppendUint32(b, e.Status)
	b = binary.BigEndian.AppendUint32(b, uint32(len(sig)))
	b = append(b, sig...)
	if e.Core {
		return append(b, 1)
	}
	return append(b, 0)
}

// ErrBadTrailer is a trailer packet that does not decode.
var ErrBadTrailer = errors.New("sftp stream: malformed exit trailer")

func parseTrailer(body []byte) (Exit, error) {
	// body: type, uint32 status, string signal, bool core.
	if len(body) < 10 || body[0] != trailerType {
		return Exit{}, ErrBadTrailer
	}
	e := Exit{Status: binary.BigEndian.Uint32(body[1:5])}
	n := binary.BigEndian.Uint32(body[5:9])
	if uint64(n)+10 != uint64(len(body)) {
		return Exit{}, ErrBadTrailer
	}
	e.Signal = string(body[9 : 9+n])
	e.Core = body[9+n] != 0
	return e, nil
}

// Counter passes bytes to W and tracks where SFTP packets end, so the
// writer of a stream knows whether a trailer may follow what it wrote.
type Counter struct {
	W    io.Writer
	hdr  int    // header bytes of the next packet seen so far (0..4)
	size uint32 // the length being assembled while hdr < 4
	left uint64 // body bytes of the current packet still to come
}

func (c *Counter) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.observe(p[:n])
	return n, err
}

// AtBoundary: everything written so far is whole packets.
func (c *Counter) AtBoundary() bool { return c.hdr == 0 && c.left == 0 }

func (c *Counter) observe(p []byte) {
	for len(p) > 0 {
		if c.left > 0 {
			k := min(uint64(len(p)), c.left)
			c.left -= k
			p = p[k:]
			continue
		}
		c.size = c.size<<8 | uint32(p[0])
		c.hdr++
		p = p[1:]
		if c.hdr == 4 {
			c.left, c.hdr, c.size = uint64(c.size), 0, 0
		}
	}
}

// Splitter passes SFTP packets to W until a trailer arrives, which it
// keeps instead. It holds back at most a packet header's 5 bytes (until
// the type byte says whether the packet is a trailer) and a trailer's
// body; it never buffers a data packet.
type Splitter struct {
	W io.Writer

	hdr     [5]byte // a held-back packet start: length and type
	nhdr    int
	left    uint64 // body bytes of the current data packet still to pass
	trailer []byte // the trailer's body so far (type byte onwards)
	want    int    // the trailer's body length
	exit    *Exit
	err     error
}

// ErrAfterTrailer is data after the trailer: the stream is not what the
// agent sends.
var ErrAfterTrailer = errors.New("sftp stream: data after the exit trailer")

// Write consumes all of p unless W fails or the stream is malformed.
func (s *Splitter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if s.err != nil {
			return total - len(p), s.err
		}
		switch {
		case s.exit != nil:
			s.err = ErrAfterTrailer
		case s.want > 0:
			p = s.takeTrailer(p)
		case s.left > 0:
			k := int(min(uint64(len(p)), s.left))
			if _, err := s.W.Write(p[:k]); err != nil {
				s.err = err
				return total - len(p), err
			}
			s.left -= uint64(k)
			p = p[k:]
		case s.nhdr == 0 && len(p) >= len(s.hdr) && p[4] != trailerType && p[0]|p[1]|p[2]|p[3] != 0:
			// A whole data packet header: pass it with its body in one
			// write, as the server wrote it (no extra SSH packet).
			size := uint64(binary.BigEndian.Uint32(p[:4])) + 4
			k := int(min(uint64(len(p)), size))
			if _, err := s.W.Write(p[:k]); err != nil {
				s.err = err
				return total - len(p), err
			}
			s.left = size - uint64(k)
			p = p[k:]
		default:
			p = s.takeHeader(p)
		}
	}
	if s.err != nil {
		return total - len(p), s.err
	}
	return total, nil
}

// takeHeader assembles a packet's length and type; once both are known it
// either passes the header on (a data packet) or starts the trailer.
func (s *Splitter) takeHeader(p []byte) []byte {
	k := copy(s.hdr[s.nhdr:], p)
	s.nhdr += k
	p = p[k:]
	if s.nhdr < len(s.hdr) {
		return p
	}
	s.nhdr = 0
	size := binary.BigEndian.Uint32(s.hdr[:4])
	if size == 0 {
		s.err = ErrBadTrailer // no SFTP packet is empty
		return p
	}
	if s.hdr[4] == trailerType {
		if size < 10 || size > maxTrailer {
			s.err = ErrBadTrailer
			return p
		}
		s.want = int(size)
		s.trailer = append(make([]byte, 0, size), trailerType)
		return s.takeTrailer(p)
	}
	if _, err := s.W.Write(s.hdr[:]); err != nil {
		s.err = err
		return p
	}
	s.left = uint64(size) - 1
	return p
}

func (s *Splitter) takeTrailer(p []byte) []byte {
	k := min(len(p), s.want-len(s.trailer))
	s.trailer = append(s.trailer, p[:k]...)
	p = p[k:]
	if len(s.trailer) == s.want {
		e, err := parseTrailer(s.trailer)
		s.want, s.trailer = 0, nil
		if err != nil {
			s.err = err
			return p
		}
		s.exit = &e
	}
	return p
}

// Exit is the trailer's exit, once it has arrived whole.
func (s *Splitter) Exit() (Exit, bool) {
	if s.exit == nil {
		return Exit{}, false
	}
	return *s.exit, true
}

// Clean: the stream so far is whole data packets, possibly followed by a
// whole trailer, and nothing malformed.
func (s *Splitter) Clean() bool {
	return s.err == nil && s.nhdr == 0 && s.left == 0 && s.want == 0
}
