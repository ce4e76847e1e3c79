package uplink

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/copybuf"
	"github.com/tensorlake/tl-agent/internal/netx"
)

// SpliceTo moves the stream's next n bytes to dst, the proxy's side of a
// download: from the uplink's socket into a pipe (yamux's Stream.Divert:
// the receive loop splices each frame's body there instead of reading
// it), and from the pipe to dst's socket. The bytes are never copied
// through the process; before, the proxy read each one from the uplink,
// copied it into the reverse proxy's buffer and wrote it to the client,
// half of the machine's CPU in a download (docs/benchmarks.md, "Files
// through the proxy").
//
// It returns the bytes moved and how many of them were spliced (the rest
// were copied). stall bounds each write to dst, as the proxy's write-stall
// rule does for a response's writes (0: none). Where splice cannot run
// (TLS on either side, no pipe) the bytes are copied as before. Bytes the
// agent sent past n are lost: the caller closes the stream after (an HTTP
// response body of known length, the stream not reused).
func (s *Stream) SpliceTo(dst net.Conn, n int64, stall time.Duration) (done, spliced int64, err error) {
	w := &stallWrites{c: dst, stall: stall}
	src, out := s.recvSocket(), netx.Socket(dst)
	if src == nil || out == nil {
		done, err = s.copyTo(w, n)
		return done, 0, err
	}
	p, err := newPipe(MaxWriteChunk)
	if err == nil && p.size < minSplicePipe {
		p.close() // over the user's pipe quota: the window would be tiny
		err = errors.New("uplink: small pipe")
	}
	if err != nil {
		done, err = s.copyTo(w, n)
		return done, 0, err
	}
	d := &diversion{p: p, src: src}
	// Divert once nothing is queued: what is queued was received first.
	for done < n && !s.Stream.Divert(d.take, uint32(p.size)) {
		m, err := s.copyOnce(w, n-done)
		done += m
		if err != nil {
			p.close()
			return done, 0, err
		}
	}
	defer func() {
		s.Stream.Undivert()
		p.close()
	}()
	for done < n {
		piped, queued, err := s.Stream.Pending()
		switch {
		case errors.Is(err, io.EOF):
			return done, spliced, io.ErrUnexpectedEOF
		case err != nil:
			return done, spliced, err
		case piped > 0:
			m, err := w.splice(out, p.r, int(min(int64(piped), n-done)))
			done += int64(m)
			spliced += int64(m)
			if cerr := s.Stream.Credit(m); err == nil {
				err = cerr
			}
			if err != nil {
				return done, spliced, err
			}
		default: // queued: take's pipe was full
			m, err := s.copyOnce(w, min(n-done, int64(queued)))
			done += m
			if err != nil {
				return done, spliced, err
			}
		}
	}
	return done, spliced, nil
}

// minSplicePipe is the smallest pipe SpliceTo works with: the pipe's size
// is the stream's window while it runs, and yamux's initial window is the
// least a bulk stream should have.
const minSplicePipe = 256 << 10

// copyTo copies n bytes of the stream to w.
func (s *Stream) copyTo(w *stallWrites, n int64) (int64, error) {
	var done int64
	for done < n {
		m, err := s.copyOnce(w, n-done)
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// copyOnce copies what one Read returns, at most max bytes, to w. With
// bytes queued, Read does not wait.
func (s *Stream) copyOnce(w *stallWrites, max int64) (int64, error) {
	buf := copybuf.Get()
	defer copybuf.Put(buf)
	k, err := s.Stream.Read(buf[:min(int64(len(buf)), max)])
	if k > 0 {
		m, werr := w.write(buf[:k])
		if werr != nil {
			return int64(m), werr
		}
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return int64(k), err
}

// recvSocket is the uplink's socket when the session reads a plain one
// (under Coalesce and the proxy's welcome gate, whose reads pass straight
// through: ReadThrough), else nil (TLS, a test's pipe).
func (s *Stream) recvSocket() syscall.RawConn {
	c, ok := s.Stream.Session().Conn().(net.Conn)
	if !ok {
		return nil
	}
	for {
		rt, ok := c.(ReadThrough)
		if !ok {
			return netx.Socket(c)
		}
		c = rt.ReadConn()
	}
}

// ReadThrough is a wrapper of the uplink's connection whose reads are the
// reads of the connection underneath, so a splice from that socket reads
// what Read would.
type ReadThrough interface{ ReadConn() net.Conn }

// ReadConn: Coalesce only joins writes.
func (c *coalesceConn) ReadConn() net.Conn { return c.Conn }

// diversion is where the receive loop puts a spliced stream's frames: a
// pipe, filled from the uplink's socket.
type diversion struct {
	p   *pipe
	src syscall.RawConn
	// broken: the socket refused splice once (EINVAL); the rest queues.
	broken bool
}

// take is the stream's yamux.TakeFunc: it moves up to n bytes into the
// pipe, first those r has buffered, then by splice from the socket. It
// stops early, and the rest is queued, when the pipe is full: a pipe
// holds a number of pages, and a socket's segments may fill less than a
// page each, so the window (the pipe's size in bytes) does not always fit.
// The pipe never makes it wait: the receive loop serves every stream.
func (d *diversion) take(r *bufio.Reader, n int) (int, error) {
	if d.broken {
		return 0, nil
	}
	taken := 0
	if b := r.Buffered(); b > 0 {
		head, _ := r.Peek(min(b, n))
		k, _ := unix.Write(d.p.w, head) // EAGAIN: full
		k = max(k, 0)
		_, _ = r.Discard(k)
		taken += k
		if taken == n || k < len(head) {
			return taken, nil
		}
	}
	for taken < n {
		k, err := FillFromSocket(d.src, d.p.w, n-taken, true)
		taken += k
		switch {
		case errors.Is(err, unix.EAGAIN): // the pipe is full
			return taken, nil
		case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS):
			d.broken = true
			return taken, nil
		case err != nil:
			return taken, fmt.Errorf("uplink: splice from the uplink's socket: %w", err)
		}
	}
	return taken, nil
}

// FillFromSocket moves up to n bytes from the socket rc into the pipe
// whose write end is fd, by splice(2), and returns how many: what the
// socket holds, after waiting for its first byte when wait is set (the
// runtime's poller, under the socket's read deadline). It returns
// unix.EAGAIN when the pipe has no free slot, or when the socket has
// nothing and wait is not set; io.ErrUnexpectedEOF when the peer closed.
func FillFromSocket(rc syscall.RawConn, fd int, n int, wait bool) (int, error) {
	k := 0
	var serr error
	err := rc.Read(func(s uintptr) bool {
		for {
			m, err := unix.Splice(int(s), nil, fd, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case m > 0:
				k = int(m)
				return true
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN && (!wait || pipeFull(fd)):
				// Either the socket has nothing yet or the pipe has no
				// free slot; poll tells them apart.
				serr = unix.EAGAIN
				return true
			case err == unix.EAGAIN:
				return false // wait for the socket
			case err != nil:
				serr = err
				return true
			default:
				serr = io.ErrUnexpectedEOF
				return true
			}
		}
	})
	if err == nil {
		err = serr
	}
	return k, err
}

// pipeFull says whether the pipe has no free slot (poll's POLLOUT).
func pipeFull(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(fds, 0)
	return err == nil && (n == 0 || fds[0].Revents&unix.POLLOUT == 0)
}

// stallWrites writes to a connection under the write-stall bound.
type stallWrites struct {
	c     net.Conn
	stall time.Duration
}

func (w *stallWrites) arm() {
	if w.stall > 0 {
		_ = w.c.SetWriteDeadline(time.Now().Add(w.stall))
	}
}

func (w *stallWrites) disarm() {
	if w.stall > 0 {
		_ = w.c.SetWriteDeadline(time.Time{})
	}
}

func (w *stallWrites) write(b []byte) (int, error) {
	w.arm()
	defer w.disarm()
	return w.c.Write(b)
}

// splice moves n bytes from the pipe's read end pr to the socket out.
func (w *stallWrites) splice(out syscall.RawConn, pr int, n int) (int, error) {
	w.arm()
	defer w.disarm()
	done := 0
	var werr error
	err := out.Write(func(fd uintptr) bool {
		return pump(&done, n, &werr, func() (int, error) {
			k, err := unix.Splice(pr, nil, int(fd), nil, n-done, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			return int(k), err
		})
	})
	if err == nil {
		err = werr
	}
	return done, err
}
