package yamux

import (
	"bufio"
	"io"
	"time"
)

// TakeFunc moves up to n bytes of a data frame's body out of the receive
// loop (tl-agent fork, Divert): the bytes r holds buffered first, through
// r; once r has none buffered, the rest may be read from the connection
// under it (Session.Conn) directly, as a splice from the socket into a
// pipe does. It returns how many it consumed; the frame's remaining bytes
// are queued as usual. It must not wait for anything but the connection's
// bytes: the receive loop serves every stream of the session. An error is
// the connection's and ends the session.
type TakeFunc func(r *bufio.Reader, n int) (int, error)

// Divert (tl-agent fork) has the receive loop give this stream's data
// frames to take instead of queueing them, and caps its receive window at
// window bytes (what take's store holds). tl-proxy splices a download's
// frames from the uplink's socket into a pipe and on to the client's
// socket, so its bytes are never copied through the process.
//
// Bytes take moved are the stream's still (they count against its window
// and the RecvBudget) until the reader hands them on and calls Credit.
// While any are queued (take took part of a frame, or the store was full),
// later frames queue too, so diverted bytes are always older than queued
// ones: the reader hands on what Pending says is diverted first, then reads
// what is queued, and frames go to take again once the queue is empty.
//
// Divert changes nothing and returns false while bytes are queued: read
// them first (Read does not block then) and try again. A large frame the
// receive loop is reading as Divert comes is queued after it, so the
// reader must take queued bytes even when Divert said yes.
func (s *Stream) Divert(take TakeFunc, window uint32) bool {
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	if s.recvBuf.Len() > 0 {
		return false
	}
	s.take, s.windowCap = take, window
	return true
}

// Undivert ends Divert: it returns once a take in progress has returned,
// and after it take is not called again. It returns the diverted bytes
// never credited, which the stream no longer holds: the caller must close
// the stream if there are any, since a reader would miss them.
func (s *Stream) Undivert() int {
	s.recvLock.Lock()
	s.take = nil
	s.recvLock.Unlock()
	s.divertMu.Lock()
	// Empty: this waits for a take in progress, which holds it.
	s.divertMu.Unlock()
	s.recvLock.Lock()
	left := s.diverted
	s.queued(-left)
	s.diverted, s.windowCap = 0, 0
	s.recvLock.Unlock()
	return left
}

// Pending waits until the stream holds bytes for its reader and returns
// how many were diverted (not yet credited) and how many are queued (for
// Read). It returns io.EOF once the peer closed and neither remain,
// ErrConnectionReset, ErrTimeout at the read deadline, as Read does.
func (s *Stream) Pending() (diverted, queued int, err error) {
	for {
		s.stateLock.Lock()
		state := s.state
		s.stateLock.Unlock()
		if state == streamReset {
			return 0, 0, ErrConnectionReset
		}
		s.recvLock.Lock()
		diverted, queued = s.diverted, s.recvBuf.Len()
		s.recvLock.Unlock()
		if diverted > 0 || queued > 0 {
			return diverted, queued, nil
		}
		if state == streamRemoteClose || state == streamClosed {
			return 0, 0, io.EOF
		}
		if err := s.waitRecv(); err != nil {
			return 0, 0, err
		}
	}
}

// Credit records that the reader handed on n diverted bytes: they leave
// the stream's window, which may grow again (a window update, as Read
// sends).
func (s *Stream) Credit(n int) error {
	s.recvLock.Lock()
	if n > s.diverted {
		n = s.diverted
	}
	s.diverted -= n
	s.queued(-n)
	s.recvLock.Unlock()
	err := s.sendWindowUpdate()
	if err == ErrSessionShutdown {
		err = nil
	}
	return err
}

// readDiverted gives up to length bytes of a frame to take and returns
// how many it took. Called with recvLock held (released here); divertMu
// is held while take runs, so Undivert can wait for it.
func (s *Stream) readDiverted(length uint32) (uint32, error) {
	s.divertMu.Lock()
	take := s.take
	s.recvLock.Unlock()
	k, err := take(s.session.bufRead, int(length))
	s.divertMu.Unlock()
	if err != nil {
		s.session.logger.Printf("[ERR] yamux: Failed to read diverted stream data: %v", err)
		return 0, err
	}
	if k > int(length) {
		k = int(length)
	}
	if k > 0 {
		s.recvLock.Lock()
		s.diverted += k
		s.queued(k)
		s.recvWindow -= uint32(k)
		s.recvLock.Unlock()
		asyncNotify(s.recvNotifyCh)
	}
	if k < 0 {
		k = 0
	}
	return uint32(k), nil
}

// waitRecv waits for the receive side to change (bytes, a close), the
// session's end or the read deadline: Read's wait.
func (s *Stream) waitRecv() error {
	var timeout <-chan time.Time
	if d := s.readDeadline.Load().(time.Time); !d.IsZero() {
		timer := time.NewTimer(time.Until(d))
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-s.session.shutdownCh:
		return ErrSessionShutdown
	case <-s.recvNotifyCh:
		return nil
	case <-timeout:
		return ErrTimeout
	}
}

// ReadChunks (tl-agent fork) hands the stream's next n bytes to write in
// the chunks the receive loop queued them in, with no copy: an upload
// written to a file straight from them (files, over an uplink stream)
// skips Read's copy into the caller's buffer, on the one goroutine that
// also writes the file. write must not keep the slice. A last chunk with
// more than n bytes left is copied, as Read would. It waits as Read does
// (Pending) and returns what write took, with write's error or the
// stream's (io.EOF before n bytes).
func (s *Stream) ReadChunks(n int64, write func([]byte) error) (int64, error) {
	var done int64
	var tail []byte
	for done < n {
		if _, _, err := s.Pending(); err != nil {
			return done, err
		}
		s.recvLock.Lock()
		q := &s.recvBuf
		if q.Len() == 0 { // diverted bytes only: not ours to take
			s.recvLock.Unlock()
			return done, ErrStreamClosed
		}
		c := q.chunks[0]
		if int64(len(c)-q.off) > n-done {
			s.recvLock.Unlock()
			if tail == nil {
				tail = make([]byte, minChunk)
			}
			k, err := s.Read(tail[:min64(int64(len(tail)), n-done)])
			if k > 0 {
				if werr := write(tail[:k]); werr != nil {
					return done, werr
				}
				done += int64(k)
			}
			if err != nil {
				return done, err
			}
			continue
		}
		b := c[q.off:]
		q.chunks[0] = nil
		q.chunks = q.chunks[1:]
		q.off = 0
		q.n -= len(b)
		if len(q.chunks) == 0 {
			q.chunks = nil
		}
		s.queued(-len(b))
		s.recvLock.Unlock()
		err := write(b)
		putChunk(c)
		done += int64(len(b))
		if uerr := s.sendWindowUpdate(); uerr != nil && uerr != ErrSessionShutdown && err == nil {
			err = uerr
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}
