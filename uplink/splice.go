package uplink

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/netx"
)

// PipeFiller is a source whose bytes can move into a pipe without being
// copied through this process: the files capability's downloads of
// regular files, by splice(2) from the page cache. Stream.ReadFrom sends
// such a source's bytes on from the pipe to the uplink's socket by splice
// too, so a download crosses the agent with no copy of its own: before, it
// was read into a buffer and written to the socket, two copies per byte
// on the path that limits throughput (docs/benchmarks.md, "Files through
// the proxy"). The source keeps its own rules (the files capability holds
// a slot of its thread gate for each fill).
type PipeFiller interface {
	io.Reader
	// FillPipe moves up to n bytes into the pipe whose write end is fd
	// and returns how many; 0 and io.EOF at the end.
	FillPipe(fd int, n int) (int, error)
}

// spliceFrom sends src's bytes in frames that go from a pipe to the
// uplink's socket (yamux's Stream.WriteFunc). fallback says nothing was
// sent and the caller should copy instead: the link is not a plain socket
// (TLS), no pipe could be made, or src's file system cannot splice.
func (s *Stream) spliceFrom(src PipeFiller) (n int64, err error, fallback bool) {
	rc := s.rawSocket()
	if rc == nil {
		return 0, nil, true
	}
	p, err := newPipe(MaxWriteChunk)
	if err != nil {
		return 0, nil, true
	}
	defer p.close()
	for {
		var filled int
		fill := func(max int) (int, error) {
			var err error
			filled, err = fillPipe(src, p.w, min(max, p.size))
			return filled, err
		}
		send := func(hdr []byte) error { return sendSpliced(rc, hdr, p.r, filled) }
		bound := s.frame()
		start := time.Now()
		m, err := s.Stream.WriteFunc(bound, fill, send)
		n += int64(m)
		if m >= WriteChunk {
			s.adapt(m, time.Since(start))
		}
		switch {
		case n == 0 && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)):
			return 0, nil, true
		case errors.Is(err, io.EOF):
			return n, nil, false
		case err != nil:
			s.closeOnWriteTimeout(err)
			return n, err, false
		}
	}
}

// pipeFiller is r as a PipeFiller, also under the io.LimitedReader a
// copy of a known length wraps its source in (net/http's transport
// sends a request body of Content-Length n as LimitReader(body, n)),
// else nil.
func pipeFiller(r io.Reader) PipeFiller {
	if lr, ok := r.(*io.LimitedReader); ok {
		if pf, ok := lr.R.(PipeFiller); ok {
			return &limitedFiller{PipeFiller: pf, lr: lr}
		}
		return nil
	}
	pf, _ := r.(PipeFiller)
	return pf
}

// limitedFiller is a PipeFiller under an io.LimitedReader: both ways
// of reading it count down the limit.
type limitedFiller struct {
	PipeFiller
	lr *io.LimitedReader
}

func (l *limitedFiller) Read(p []byte) (int, error) { return l.lr.Read(p) }

func (l *limitedFiller) FillPipe(fd int, n int) (int, error) {
	if l.lr.N <= 0 {
		return 0, io.EOF
	}
	k, err := l.PipeFiller.FillPipe(fd, int(min(int64(n), l.lr.N)))
	l.lr.N -= int64(k)
	return k, err
}

// rawSocket is the uplink's socket when it is a plain one splice can
// write to (a TCP or unix socket under Coalesce, and under the proxy's
// welcome gate once it is open: WriteThrough), else nil (TLS, a test's
// pipe). Splice writes it only inside a frame write yamux owns, when
// Coalesce holds no header.
func (s *Stream) rawSocket() syscall.RawConn {
	c, ok := s.Stream.Session().Conn().(net.Conn)
	for ok {
		wt, through := c.(WriteThrough)
		if !through {
			break
		}
		c, ok = wt.WriteConn()
	}
	cc, isCoalesce := c.(*coalesceConn)
	if !ok || !isCoalesce {
		return nil
	}
	return netx.Socket(cc.Conn)
}

// WriteThrough is a wrapper of the uplink's connection whose writes go
// straight to the connection under it, when ok (the proxy's welcome
// gate, once the welcome is out).
type WriteThrough interface {
	WriteConn() (c net.Conn, ok bool)
}

// fillPipe fills the pipe with up to n bytes of src, fewer at src's end
// or error, or when the pipe is full before n: a pipe holds a number of
// pages, and a file read from an offset that is not page-aligned puts
// less than a page in each.
func fillPipe(src PipeFiller, fd int, n int) (int, error) {
	got := 0
	for got < n {
		k, err := src.FillPipe(fd, n-got)
		got += k
		if errors.Is(err, unix.EAGAIN) && got > 0 {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		if k == 0 {
			return got, io.EOF
		}
	}
	return got, nil
}

// sendSpliced writes a frame's header and then n bytes from the pipe's
// read end pr to the socket. The header goes with MSG_MORE, so on a
// TCP_NODELAY socket it leaves in the body's first segment. The socket
// is non-blocking: on EAGAIN the runtime's poller waits for room, bounded
// by the write deadline yamux set (writeFrame).
func sendSpliced(rc syscall.RawConn, hdr []byte, pr int, n int) error {
	sent, spliced := 0, 0
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		if !pump(&sent, len(hdr), &werr, func() (int, error) {
			return unix.SendmsgN(int(fd), hdr[sent:], nil, nil, unix.MSG_MORE|unix.MSG_NOSIGNAL)
		}) {
			return false
		}
		return werr != nil || pump(&spliced, n, &werr, func() (int, error) {
			k, err := unix.Splice(pr, nil, int(fd), nil, n-spliced, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			return int(k), err
		})
	})
	if err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("uplink: spliced frame, %d of %d header and %d of %d body bytes sent: %w", sent, len(hdr), spliced, n, werr)
	}
	return nil
}

// pump runs step, a non-blocking write, until done reaches total. It
// returns false when the socket is full (EAGAIN: the poller waits for
// room), true when done or failed (werr).
func pump(done *int, total int, werr *error, step func() (int, error)) bool {
	for *done < total {
		k, err := step()
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			*werr = err
			return true
		case k == 0:
			*werr = io.ErrUnexpectedEOF // the pipe held less than the frame
			return true
		}
		*done += k
	}
	return true
}

// pipe is a kernel pipe that holds one frame's bytes as page references
// between a source's splice into it and the socket's splice out of it.
type pipe struct {
	r, w int
	size int // bytes it holds
}

// newPipe makes a pipe of want bytes, or of the kernel's default size
// when the size cannot be set (fs.pipe-max-size, a user's pipe quota).
func newPipe(want int) (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	p := &pipe{r: fds[0], w: fds[1]}
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, want)
	if err != nil {
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil || size <= 0 {
		p.close()
		return nil, fmt.Errorf("uplink: pipe size: %v", err)
	}
	p.size = min(size, want)
	return p, nil
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
