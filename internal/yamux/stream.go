package yamux

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

type streamState int

const (
	streamInit streamState = iota
	streamSYNSent
	streamSYNReceived
	streamEstablished
	streamLocalClose
	streamRemoteClose
	streamClosed
	streamReset
)

// Stream is used to represent a logical stream
// within a session.
type Stream struct {
	recvWindow uint32
	sendWindow uint32

	id      uint32
	session *Session

	state     streamState
	stateLock sync.Mutex

	recvBuf  recvQueue // tl-agent: was *bytes.Buffer (FORK.md)
	recvLock sync.Mutex
	// tl-agent (FORK.md, SinkTo): under recvLock.
	sink func([]byte) int // set while SinkTo runs
	held bool             // SinkTo has bytes in hand it has not written yet
	sunk int64            // bytes the receive loop gave sink
	// tl-agent (FORK.md, Divert): under recvLock; divertMu is held
	// while take runs.
	take      TakeFunc // set while diverted
	diverted  int      // bytes take moved that Credit has not returned
	windowCap uint32   // the window's bound while diverted; 0: the session's
	divertMu  sync.Mutex
	// budgeted: the queued bytes count in the session's RecvBudget
	// (until the stream leaves the session: closeStream, forceClose).
	budgeted bool

	controlHdr     header
	controlErr     chan error
	controlHdrLock sync.Mutex

	sendHdr  header
	sendErr  chan error
	sendLock sync.Mutex

	recvNotifyCh chan struct{}
	sendNotifyCh chan struct{}

	readDeadline  atomic.Value // time.Time
	writeDeadline atomic.Value // time.Time

	// establishCh is notified if the stream is established or being closed.
	establishCh chan struct{}

	// closeTimer is set with stateLock held to honor the StreamCloseTimeout
	// setting on Session.
	closeTimer *time.Timer
}

// newStream is used to construct a new stream within
// a given session for an ID
func newStream(session *Session, id uint32, state streamState) *Stream {
	s := &Stream{
		id:           id,
		session:      session,
		state:        state,
		controlHdr:   header(make([]byte, headerSize)),
		controlErr:   make(chan error, 1),
		sendHdr:      header(make([]byte, headerSize)),
		sendErr:      make(chan error, 1),
		recvWindow:   initialStreamWindow,
		sendWindow:   initialStreamWindow,
		recvNotifyCh: make(chan struct{}, 1),
		sendNotifyCh: make(chan struct{}, 1),
		budgeted:     session.config.RecvBudget != nil,
		establishCh:  make(chan struct{}, 1),
	}
	s.readDeadline.Store(time.Time{})
	s.writeDeadline.Store(time.Time{})
	return s
}

// Session returns the associated stream session
func (s *Stream) Session() *Session {
	return s.session
}

// StreamID returns the ID of this stream
func (s *Stream) StreamID() uint32 {
	return s.id
}

// Read is used to read from the stream
func (s *Stream) Read(b []byte) (n int, err error) {
	defer asyncNotify(s.recvNotifyCh)
START:

	// If the stream is closed and there's no data buffered, return EOF
	s.stateLock.Lock()
	switch s.state {
	case streamLocalClose:
		// LocalClose only prohibits further local writes. Handle reads normally.
	case streamRemoteClose:
		fallthrough
	case streamClosed:
		s.recvLock.Lock()
		if s.recvBuf.Len() == 0 {
			s.recvLock.Unlock()
			s.stateLock.Unlock()
			return 0, io.EOF
		}
		s.recvLock.Unlock()
	case streamReset:
		s.stateLock.Unlock()
		return 0, ErrConnectionReset
	}
	s.stateLock.Unlock()

	// If there is no data available, block
	s.recvLock.Lock()
	if s.recvBuf.Len() == 0 {
		s.recvLock.Unlock()
		goto WAIT
	}

	// Read any bytes
	n = s.recvBuf.Read(b)
	s.queued(-n)
	if s.sink != nil {
		s.held = true
	}
	s.recvLock.Unlock()

	// Send a window update potentially
	err = s.sendWindowUpdate()
	if err == ErrSessionShutdown {
		err = nil
	}
	return n, err

WAIT:
	var timeout <-chan time.Time
	var timer *time.Timer
	readDeadline := s.readDeadline.Load().(time.Time)
	if !readDeadline.IsZero() {
		delay := time.Until(readDeadline)
		timer = time.NewTimer(delay)
		timeout = timer.C
	}
	select {
	case <-s.session.shutdownCh:
	case <-s.recvNotifyCh:
	case <-timeout:
		return 0, ErrTimeout
	}
	if timer != nil {
		if !timer.Stop() {
			<-timeout
		}
	}
	goto START
}

// Write is used to write to the stream
func (s *Stream) Write(b []byte) (n int, err error) {
	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	total := 0
	for total < len(b) {
		n, err := s.write(b[total:])
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// write is used to write to the stream, may return on
// a short write.
func (s *Stream) write(b []byte) (n int, err error) {
	window, err := s.awaitWindow()
	if err != nil {
		return 0, err
	}

	// Determine the flags if any
	flags := s.sendFlags()

	// Send up to our send window
	max := min(window, uint32(len(b)))
	body := b[:max]

	// Send the header
	s.sendHdr.encode(typeData, flags, s.id, max)
	if err = s.session.writeData(s.sendHdr, body, s.sendErr); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.sendHdr = header(make([]byte, headerSize))
		}
		return 0, err
	}

	// Reduce our send window
	atomic.AddUint32(&s.sendWindow, ^uint32(max-1))

	// Unlock
	return int(max), err
}

// WriteFunc (tl-agent fork) sends one data frame of at most max bytes
// whose body the caller writes to the connection itself: tl-agent's
// uplink splices a file's bytes from a pipe to the socket, so they are
// never copied through the process. Once the send window allows, fill(n)
// readies up to n bytes and returns how many (0 ends the call with fill's
// error). Then send(hdr), holding the connection as a frame write does
// (writeSem, the write deadline), must write the 12-byte header and
// exactly that many bytes. A send error ends the session, since the frame
// may be half written. fill's error comes back with the frame that
// carried its last bytes. Only on a connection with write deadlines
// (ErrNoDirectWrite otherwise).
func (s *Stream) WriteFunc(max int, fill func(n int) (int, error), send func(hdr []byte) error) (int, error) {
	if _, ok := s.session.conn.(deadliner); !ok {
		return 0, ErrNoDirectWrite
	}
	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	window, err := s.awaitWindow()
	if err != nil {
		return 0, err
	}
	n, ferr := fill(int(min(window, uint32(max))))
	if n <= 0 {
		return 0, ferr
	}
	if uint32(n) > window || n > max {
		return 0, fmt.Errorf("yamux: WriteFunc's fill readied %d bytes of %d", n, min(window, uint32(max)))
	}
	s.sendHdr.encode(typeData, s.sendFlags(), s.id, uint32(n))
	if err := s.session.writeFrame(func() error { return send(s.sendHdr) }); err != nil {
		return 0, err
	}
	atomic.AddUint32(&s.sendWindow, ^uint32(n-1))
	return n, ferr
}

// awaitWindow waits until the stream may send (some send window, the
// stream open for writes) and returns the window; the write deadline
// bounds the wait.
func (s *Stream) awaitWindow() (uint32, error) {
START:
	s.stateLock.Lock()
	switch s.state {
	case streamLocalClose:
		fallthrough
	case streamClosed:
		s.stateLock.Unlock()
		return 0, ErrStreamClosed
	case streamReset:
		s.stateLock.Unlock()
		return 0, ErrConnectionReset
	}
	s.stateLock.Unlock()

	// If there is no data available, block
	if window := atomic.LoadUint32(&s.sendWindow); window > 0 {
		return window, nil
	}

	var timeout <-chan time.Time
	var timer *time.Timer
	writeDeadline := s.writeDeadline.Load().(time.Time)
	if !writeDeadline.IsZero() {
		delay := time.Until(writeDeadline)
		timer = time.NewTimer(delay)
		timeout = timer.C
	}
	select {
	case <-s.session.shutdownCh:
	case <-s.sendNotifyCh:
	case <-timeout:
		return 0, ErrTimeout
	}
	if timer != nil {
		if !timer.Stop() {
			<-timeout
		}
	}
	goto START
}

// sendFlags determines any flags that are appropriate
// based on the current stream state
func (s *Stream) sendFlags() uint16 {
	s.stateLock.Lock()
	defer s.stateLock.Unlock()
	var flags uint16
	switch s.state {
	case streamInit:
		flags |= flagSYN
		s.state = streamSYNSent
	case streamSYNReceived:
		flags |= flagACK
		s.state = streamEstablished
	}
	return flags
}

// sendWindowUpdate potentially sends a window update enabling
// further writes to take place. Must be invoked with the lock.
func (s *Stream) sendWindowUpdate() error {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()

	// Determine the delta update
	max := s.session.config.MaxStreamWindowSize
	if s.session.config.RecvBudget.over() {
		max = initialStreamWindow // tl-agent (FORK.md): RecvBudget
	}
	s.recvLock.Lock()
	if s.windowCap > 0 {
		max = min(max, s.windowCap) // tl-agent (FORK.md): Divert
	}
	bufLen := uint32(s.recvBuf.Len() + s.diverted)
	var delta uint32
	if bufLen+s.recvWindow < max {
		delta = (max - bufLen) - s.recvWindow
	}

	// Determine the flags if any
	flags := s.sendFlags()

	// Check if we can omit the update
	if delta < (max/2) && flags == 0 {
		s.recvLock.Unlock()
		return nil
	}

	// Update our window
	s.recvWindow += delta
	s.recvLock.Unlock()

	// Send the header
	s.controlHdr.encode(typeWindowUpdate, flags, s.id, delta)
	if err := s.session.waitForSendErr(s.controlHdr, nil, s.controlErr); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.controlHdr = header(make([]byte, headerSize))
		}
		return err
	}
	return nil
}

// sendClose is used to send a FIN
func (s *Stream) sendClose() error {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()

	flags := s.sendFlags()
	flags |= flagFIN
	s.controlHdr.encode(typeWindowUpdate, flags, s.id, 0)
	if err := s.session.waitForSendErr(s.controlHdr, nil, s.controlErr); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.controlHdr = header(make([]byte, headerSize))
		}
		return err
	}
	return nil
}

// Close is used to close the stream
func (s *Stream) Close() error {
	closeStream := false
	s.stateLock.Lock()
	switch s.state {
	// Opened means we need to signal a close
	case streamSYNSent:
		fallthrough
	case streamSYNReceived:
		fallthrough
	case streamEstablished:
		s.state = streamLocalClose
		goto SEND_CLOSE

	case streamLocalClose:
	case streamRemoteClose:
		s.state = streamClosed
		closeStream = true
		goto SEND_CLOSE

	case streamClosed:
	case streamReset:
	default:
		panic("unhandled state")
	}
	s.stateLock.Unlock()
	return nil
SEND_CLOSE:
	// This shouldn't happen (the more realistic scenario to cancel the
	// timer is via processFlags) but just in case this ever happens, we
	// cancel the timer to prevent dangling timers.
	if s.closeTimer != nil {
		s.closeTimer.Stop()
		s.closeTimer = nil
	}

	// If we have a StreamCloseTimeout set we start the timeout timer.
	// We do this only if we're not already closing the stream since that
	// means this was a graceful close.
	//
	// This prevents memory leaks if one side (this side) closes and the
	// remote side poorly behaves and never responds with a FIN to complete
	// the close. After the specified timeout, we clean our resources up no
	// matter what.
	if !closeStream && s.session.config.StreamCloseTimeout > 0 {
		s.closeTimer = time.AfterFunc(
			s.session.config.StreamCloseTimeout, s.closeTimeout)
	}

	s.stateLock.Unlock()
	s.sendClose()
	s.notifyWaiting()
	if closeStream {
		s.session.closeStream(s.id)
	}
	return nil
}

// closeTimeout is called after StreamCloseTimeout during a close to
// close this stream.
func (s *Stream) closeTimeout() {
	// Close our side forcibly
	s.forceClose()

	// Free the stream from the session map
	s.session.closeStream(s.id)

	// Send a RST so the remote side closes too.
	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeWindowUpdate, flagRST, s.id, 0)
	_ = s.session.sendNoWait(hdr)
}

// forceClose is used for when the session is exiting
func (s *Stream) forceClose() {
	s.stateLock.Lock()
	s.state = streamClosed
	s.stateLock.Unlock()
	s.unbudget()
	s.notifyWaiting()
}

// queued counts n bytes queued (negative: read) in the session's
// RecvBudget. recvLock held.
func (s *Stream) queued(n int) {
	if s.budgeted {
		s.session.config.RecvBudget.used.Add(int64(n))
	}
}

// unbudget takes the stream's queued bytes out of the RecvBudget when
// it leaves the session: they can still be read, but no more can arrive.
func (s *Stream) unbudget() {
	s.recvLock.Lock()
	s.queued(-s.recvBuf.Len() - s.diverted)
	s.budgeted = false
	s.recvLock.Unlock()
}

// processFlags is used to update the state of the stream
// based on set flags, if any. Lock must be held
func (s *Stream) processFlags(flags uint16) error {
	s.stateLock.Lock()
	defer s.stateLock.Unlock()

	// Close the stream without holding the state lock
	closeStream := false
	defer func() {
		if closeStream {
			if s.closeTimer != nil {
				// Stop our close timeout timer since we gracefully closed
				s.closeTimer.Stop()
			}

			s.session.closeStream(s.id)
		}
	}()

	if flags&flagACK == flagACK {
		if s.state == streamSYNSent {
			s.state = streamEstablished
		}
		asyncNotify(s.establishCh)
		s.session.establishStream(s.id)
	}
	if flags&flagFIN == flagFIN {
		switch s.state {
		case streamSYNSent:
			fallthrough
		case streamSYNReceived:
			fallthrough
		case streamEstablished:
			s.state = streamRemoteClose
			s.notifyWaiting()
		case streamLocalClose:
			s.state = streamClosed
			closeStream = true
			s.notifyWaiting()
		default:
			s.session.logger.Printf("[ERR] yamux: unexpected FIN flag in state %d", s.state)
			return ErrUnexpectedFlag
		}
	}
	if flags&flagRST == flagRST {
		s.state = streamReset
		closeStream = true
		s.notifyWaiting()
	}
	return nil
}

// notifyWaiting notifies all the waiting channels
func (s *Stream) notifyWaiting() {
	asyncNotify(s.recvNotifyCh)
	asyncNotify(s.sendNotifyCh)
	asyncNotify(s.establishCh)
}

// incrSendWindow updates the size of our send window
func (s *Stream) incrSendWindow(hdr header, flags uint16) error {
	if err := s.processFlags(flags); err != nil {
		return err
	}

	// Increase window, unblock a sender
	atomic.AddUint32(&s.sendWindow, hdr.Length())
	asyncNotify(s.sendNotifyCh)
	return nil
}

// readData is used to handle a data frame
func (s *Stream) readData(hdr header, flags uint16, conn io.Reader) error {
	if err := s.processFlags(flags); err != nil {
		return err
	}

	// Check that our recv window is not exceeded
	length := hdr.Length()
	if length == 0 {
		return nil
	}

	// tl-agent (FORK.md): the window is checked under the lock, but a
	// large frame is read with no lock held, into a chunk of its own, so
	// the reader keeps taking what is queued while it arrives. Only this
	// loop lowers recvWindow (a window update only raises it), so the
	// check stays true during the read; the frame's bytes count as in
	// flight until they are queued, as bytes still on the wire do.
	s.recvLock.Lock()
	if length > s.recvWindow {
		s.session.logger.Printf("[ERR] yamux: receive window exceeded (stream: %d, remain: %d, recv: %d)", s.id, s.recvWindow, length)
		s.recvLock.Unlock()
		return ErrRecvWindowExceeded
	}
	if s.take != nil && s.recvBuf.Len() == 0 {
		k, err := s.readDiverted(length)
		if err != nil || k == length {
			return err
		}
		length -= k // the rest is queued: take's store is full
		s.recvLock.Lock()
	}
	if int(length) < minChunk && s.sinkable(length) {
		return s.readToSink(length, conn)
	}
	if int(length) < minChunk {
		// A small frame: packed into the last chunk under the lock, as
		// upstream read every frame (its bytes are mostly buffered).
		room := s.recvBuf.tail(int(length))
		if room == nil {
			s.recvBuf.addRoom(minChunk)
			room = s.recvBuf.tail(int(length))
		}
		if _, err := io.ReadFull(conn, room); err != nil {
			s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
			s.recvLock.Unlock()
			return err
		}
		s.recvBuf.grewTail(int(length))
		s.queued(int(length))
		s.recvWindow -= length
		s.recvLock.Unlock()
	} else {
		s.recvLock.Unlock()
		chunk := getChunk(int(length))[:length]
		if _, err := io.ReadFull(conn, chunk); err != nil {
			putChunk(chunk)
			s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
			return err
		}
		s.recvLock.Lock()
		s.recvBuf.push(chunk)
		s.queued(int(length))
		s.recvWindow -= length
		s.recvLock.Unlock()
	}

	// Unblock any readers
	asyncNotify(s.recvNotifyCh)
	return nil
}

// SinkTo (tl-agent fork) copies the stream to w until EOF, as io.Copy
// with buf would, and lets the receive loop give a small frame straight
// to try, a write to w that must not block (it returns what it took):
// the bytes then skip the wake-up of this goroutine, a thread hand-off
// per frame on an interactive relay. try is offered a frame only when
// nothing is queued and this goroutine holds no bytes it has not yet
// written, so bytes reach w in order.
func (s *Stream) SinkTo(w io.Writer, try func([]byte) int, buf []byte) (int64, error) {
	s.recvLock.Lock()
	s.sink, s.sunk = try, 0
	s.recvLock.Unlock()
	var total int64
	defer func() {
		s.recvLock.Lock()
		s.sink, s.held = nil, false
		s.recvLock.Unlock()
	}()
	for {
		n, err := s.Read(buf)
		var werr error
		if n > 0 {
			var m int
			m, werr = w.Write(buf[:n])
			total += int64(m)
		}
		s.recvLock.Lock()
		s.held = false
		sunk := s.sunk
		s.recvLock.Unlock()
		switch {
		case werr != nil:
			return total + sunk, werr
		case err == io.EOF:
			return total + sunk, nil
		case err != nil:
			return total + sunk, err
		}
	}
}

// sinkable says whether a frame of length bytes may go to the sink:
// one is set, nothing is queued or in hand, and the window update the
// bytes would owe stays under the threshold at which Read sends one (the
// reader is not woken for them, so it could not send it).
func (s *Stream) sinkable(length uint32) bool {
	if s.sink == nil || s.held || s.recvBuf.Len() > 0 {
		return false
	}
	max := s.session.config.MaxStreamWindowSize
	return max-s.recvWindow+length < max/2
}

// readToSink reads a small frame and gives it to the sink; what the
// sink does not take is queued for SinkTo. Called with recvLock held
// (released here).
func (s *Stream) readToSink(length uint32, conn io.Reader) error {
	buf := s.session.sinkBuf(int(length))
	if _, err := io.ReadFull(conn, buf); err != nil {
		s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
		s.recvLock.Unlock()
		return err
	}
	s.recvWindow -= length
	n := 0
	if s.session.bufRead.Buffered() == 0 {
		// Only a frame that arrived alone (a keystroke) goes to the sink:
		// when more frames are already buffered (bulk, or a peer's flood
		// of tiny frames), the reader takes them all in one Read and one
		// write, where the sink would make a syscall per frame.
		n = s.sink(buf)
	}
	s.sunk += int64(n)
	if n == len(buf) {
		s.recvLock.Unlock()
		return nil
	}
	rest := buf[n:]
	room := s.recvBuf.tail(len(rest))
	if room == nil {
		s.recvBuf.addRoom(minChunk)
		room = s.recvBuf.tail(len(rest))
	}
	copy(room, rest)
	s.recvBuf.grewTail(len(rest))
	s.queued(len(rest))
	s.recvLock.Unlock()
	asyncNotify(s.recvNotifyCh)
	return nil
}

// SetDeadline sets the read and write deadlines
func (s *Stream) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	if err := s.SetWriteDeadline(t); err != nil {
		return err
	}
	return nil
}

// SetReadDeadline sets the deadline for blocked and future Read calls.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.readDeadline.Store(t)
	asyncNotify(s.recvNotifyCh)
	return nil
}

// SetWriteDeadline sets the deadline for blocked and future Write calls
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.writeDeadline.Store(t)
	asyncNotify(s.sendNotifyCh)
	return nil
}

// Shrink is used to compact the amount of buffers utilized
// This is useful when using Yamux in a connection pool to reduce
// the idle memory utilization.
func (s *Stream) Shrink() {
	s.recvLock.Lock()
	if s.recvBuf.Len() == 0 {
		s.recvBuf.release()
	}
	s.recvLock.Unlock()
}
