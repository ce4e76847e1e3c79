package pty

import (
	"crypto/subtle"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Session is one command running on a PTY. Its life is the life of the
// command: clients come and go, output is kept while nobody watches.
type Session struct {
	id, token string
	command   string
	args      []string
	created   time.Time
	pid       int

	m      *Manager
	log    zerolog.Logger
	proc   *supervisor.Proc // nil for a restored session whose leader had ended (gone)
	gone   *supervisor.Exit // that leader's exit, as the upgrade handed it over
	master *os.File         // non-blocking; closed by end
	raw    syscall.RawConn

	inMu sync.Mutex // serializes input so two clients' messages never interleave

	exitedAt   atomic.Int64  // unix nanos of the leader's exit, 0 while it runs
	readerDone chan struct{} // closed when the master is drained
	done       chan struct{} // closed when the session has ended
	progress   chan struct{} // cap 1: some client advanced (wakes a waiting reader)

	mu        sync.Mutex
	rows      uint16 // guarded by mu
	cols      uint16
	out       ring                 // kept output
	clients   map[*client]struct{} // attached WebSocket clients
	ended     bool
	exit      supervisor.Exit
	endedAt   time.Time
	killed    bool // ended by DELETE, idle timeout or shutdown: clients get 1001
	oomKilled bool
	killCause string       // guarded by mu; the End reason of a kill of ours
	idle      *pause.Timer // runs while no client is attached
	killTimer *pause.Timer // SIGKILL after the grace period
	forget    *pause.Timer // forgets the ended session (guarded by m.mu)

	// Deadlines of the timers above on the running clock (Config.Pause),
	// 0 when not armed: what Freeze stops and Thaw and Restore re-arm.
	idleDue, killDue time.Duration // guarded by mu
	forgetDue        time.Duration // guarded by m.mu

	// Freeze (handover.go): the reader parks instead of reading and closes
	// parked; Thaw closes thaw.
	frozen       bool          // guarded by mu
	thaw, parked chan struct{} // guarded by mu
}

// Tuning of the exit drain: after the leader exits, read what is queued.
// EIO (every slave closed) ends it at once in the common case; a grandchild
// holding the terminal would keep it open, so we also stop after drainQuiet
// without output, drainMax in all, or drainBytes, whichever comes first.
// The quiet period covers the kernel's asynchronous push of the last write
// from the slave to the master (tty flip buffers are pushed by a worker).
const (
	drainQuiet = 100 * time.Millisecond
	drainMax   = 2 * time.Second
	drainBytes = 8 << 20
	// readChunk is one read of the master; the line discipline hands out
	// at most 4 KiB per read, a larger buffer catches the rest at once.
	readChunk = 16 << 10
	// inputTimeout bounds one write of input into a terminal whose program
	// does not read: the input is dropped rather than stalling its client.
	inputTimeout = 10 * time.Second
)

// readBufs are read buffers, taken only while the master is readable, so
// an idle session holds none.
var readBufs = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

// readLoop copies the master's output into the ring and wakes the clients.
// It ends on EIO (every slave fd closed, creack/pty 21: EOF for a PTY), on
// the drain deadline after the leader's exit, or when the master is closed.
// A Freeze stops it with a read deadline in the past: it parks until Thaw
// (which clears that deadline) and reads on, having lost nothing (the
// bytes it did not read stay queued in the terminal).
func (s *Session) readLoop() {
	defer close(s.readerDone)
	for {
		s.pump()
		if !s.park() {
			return
		}
	}
}

// pump reads until the master fails, ends or passes its read deadline.
func (s *Session) pump() {
	var drained int64
	for {
		var buf *[]byte
		var n int
		var rerr error
		err := s.raw.Read(func(fd uintptr) bool {
			// Always read before waiting: RawConn.Read resets the
			// poller's readiness before calling us, so an edge that came
			// after an earlier EAGAIN is forgotten and waiting first
			// could sleep on queued output (measured: a hang).
			b := readBufs.Get().(*[]byte)
			n, rerr = readMore(int(fd), *b)
			if n == 0 && rerr == unix.EAGAIN {
				readBufs.Put(b)
				return false // wait in the poller, holding no buffer
			}
			if n > 0 {
				rerr = nil // an error after data shows again on the next read
			}
			buf = b
			return true
		})
		if buf != nil {
			if n > 0 {
				s.output((*buf)[:n])
			}
			readBufs.Put(buf)
		}
		if err != nil || rerr != nil || n <= 0 {
			return
		}
		if at := s.exitedAt.Load(); at != 0 {
			drained += int64(n)
			if drained >= drainBytes {
				return
			}
			s.extendDrain(at)
		}
	}
}

// readMore reads until b is full or the master has nothing more right now.
// The line discipline hands out at most 4 KiB per read; taking what is
// already queued in one go means one wake-up of the clients per burst, not
// one per 4 KiB, which is most of the cost per byte under bulk output.
func readMore(fd int, b []byte) (int, error) {
	total := 0
	for total < len(b) {
		n, err := unix.Read(fd, b[total:])
		if err == unix.EINTR {
			continue
		}
		if n > 0 {
			total += n
		}
		if err != nil || n <= 0 {
			if err == nil {
				err = unix.EIO // 0 bytes: end of output, as EIO
			}
			return total, err
		}
	}
	return total, nil
}

func (s *Session) extendDrain(exitedAt int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.frozen { // a frozen reader keeps its deadline in the past
		s.extendDrainLocked(exitedAt)
	}
}

func (s *Session) extendDrainLocked(exitedAt int64) {
	deadline := time.Now().Add(drainQuiet)
	if limit := time.Unix(0, exitedAt).Add(drainMax); deadline.After(limit) {
		deadline = limit
	}
	_ = s.master.SetReadDeadline(deadline)
}

// waitLoop waits for the leader's exit, which alone decides the end: a
// background grandchild holding the terminal does not keep the session
// alive (lxd PR 12229). It then lets the reader drain, and ends.
func (s *Session) waitLoop() {
	exit, ok := s.leaderExit()
	if !ok {
		return // released (handover_test.go)
	}
	at := exit.At
	if at.IsZero() || s.proc == nil {
		at = time.Now() // a restored exit: the drain starts now
	}
	s.exitedAt.Store(at.UnixNano())
	s.extendDrain(at.UnixNano())
	<-s.readerDone
	if s.holdEnd() {
		s.end(exit)
	}
}

// leaderExit waits for the leader's exit; false when the manager was
// released first.
func (s *Session) leaderExit() (supervisor.Exit, bool) {
	if s.proc == nil {
		return *s.gone, true
	}
	select {
	case <-s.proc.Done():
		return s.proc.Wait(), true
	case <-s.m.released:
		return supervisor.Exit{}, false
	}
}

// output appends p to the kept output and wakes the clients. Before it
// overwrites bytes a live client has not sent yet, it waits for that client
// (flow control, as an SSH channel window gives); a client that makes no
// progress for the stall timeout is dropped, so it never holds the PTY or
// the other clients for longer than that.
func (s *Session) output(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var timer *time.Timer
	for {
		evictTo := s.out.end + int64(len(p)) - int64(s.out.max)
		slow := s.slowestBefore(evictTo)
		if slow == nil {
			break
		}
		// Running time: a client that was behind when the sandbox froze
		// is not dropped at thaw for the frozen time. A plain timer that
		// fires early after a pause just comes back here and waits again.
		wait := s.m.cfg.StallTimeout - (s.m.cfg.Pause.Now() - slow.lastProgress)
		if wait <= 0 {
			s.dropLocked(slow, websocket.StatusPolicyViolation,
				"client too slow: no progress for "+s.m.cfg.StallTimeout.String()+" while output waited")
			continue
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		s.mu.Unlock()
		select {
		case <-s.progress:
		case <-timer.C:
		}
		s.mu.Lock()
	}
	s.out.write(p)
	for c := range s.clients {
		c.wakeUp()
	}
}

// slowestBefore returns the live client furthest behind whose position is
// before off, or nil.
func (s *Session) slowestBefore(off int64) *client {
	var slow *client
	for c := range s.clients {
		if c.ready && c.drop == "" && c.pos < off && (slow == nil || c.pos < slow.pos) {
			slow = c
		}
	}
	return slow
}

// dropCloseTimeout bounds the close frame of a dropped client: it queues
// behind the output the client has not read, so it may never get there;
// after this the connection is cut.
const dropCloseTimeout = 2 * time.Second

// dropLocked disconnects c with a close frame (code, why), best effort:
// the writer sends it after the message in flight, and the connection is
// cut after dropCloseTimeout whatever happened. The session stops waiting
// for c at once.
func (s *Session) dropLocked(c *client, code websocket.StatusCode, why string) {
	if c.drop != "" {
		return
	}
	c.drop, c.dropCode = why, code
	s.m.dropped.Add(1)
	c.log.Warn().Int("code", int(code)).Str("reason", why).Msg("dropping pty client")
	c.wakeUp()
	s.m.cfg.Pause.AfterFunc(dropCloseTimeout, c.cancel)
}

// drop is dropLocked for callers not holding s.mu.
func (s *Session) drop(c *client, code websocket.StatusCode, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked(c, code, why)
}

// end records the exit and tells every client. The master is closed last,
// after the reader has drained it.
func (s *Session) end(exit supervisor.Exit) {
	s.mu.Lock()
	s.ended = true
	s.exit = exit
	s.endedAt = time.Now()
	s.stopIdleLocked()
	s.oomKilled = !s.killed && exit.OOMKilled // a kill of ours is not the OOM killer's
	for c := range s.clients {
		c.wakeUp()
	}
	killed := s.killed
	reason := EndExit
	switch {
	case killed && s.killCause != "":
		reason = s.killCause
	case s.oomKilled:
		reason = EndOOMKilled
	}
	s.m.endings.count(reason) // before done: whoever saw the end sees it counted
	close(s.done)
	s.mu.Unlock()
	_ = s.master.Close()
	s.log.Info().Str("exit", exit.String()).Bool("killed", killed).Int64("output_bytes", s.outputTotal()).Msg("pty session ended")
	s.m.sessionEnded(s)
}

func (s *Session) outputTotal() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.end
}

// kill hangs up the session's processes and kills them after the grace
// period, background children included.
func (s *Session) kill(cause, reason string) {
	s.mu.Lock()
	if s.ended || s.killed {
		s.mu.Unlock()
		return
	}
	s.killed = true
	s.killCause = cause
	s.armKillLocked(s.m.cfg.KillGrace)
	s.mu.Unlock()
	s.log.Info().Str("reason", reason).Msg("killing pty session")
	s.signal(syscall.SIGHUP)
}

// errEnded is returned for operations that need a running session.
var errEnded = errors.New("session has ended")

// resize sets the terminal size; the kernel sends SIGWINCH to the
// foreground process group when it changes.
func (s *Session) resize(rows, cols int) error {
	r, c := clampSize(rows, cols)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return errEnded
	}
	if s.frozen {
		return ErrFrozen // the size is handed over as it is now
	}
	if err := launch.Resize(s.master, launch.Size{Rows: r, Cols: c}); err != nil {
		return err
	}
	s.rows, s.cols = r, c
	return nil
}

// input writes terminal input. Writes are serialized and bounded in time:
// a program that does not read its input loses input, never a client.
func (s *Session) input(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	s.inMu.Lock()
	defer s.inMu.Unlock()
	s.mu.Lock()
	if s.frozen || s.master == nil { // frozen: Freeze waits for the write in flight only
		s.mu.Unlock()
		return os.ErrClosed
	}
	_ = s.master.SetWriteDeadline(time.Now().Add(inputTimeout))
	s.mu.Unlock()
	_, err := s.master.Write(p)
	return err
}

// checkToken compares in constant time.
func (s *Session) checkToken(tok string) bool {
	return subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) == 1
}

// attach registers c unless the session has too many clients or is
// frozen. The idle clock stops while a client is attached.
func (s *Session) attach(c *client) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.frozen:
		return ErrFrozen
	case len(s.clients) >= s.m.cfg.MaxClients:
		return errTooManyClients
	}
	s.clients[c] = struct{}{}
	s.stopIdleLocked()
	return nil
}

// detach unregisters c and restarts the idle clock when it was the last.
func (s *Session) detach(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clients, c)
	if len(s.clients) == 0 && !s.ended {
		s.armIdleLocked(s.m.cfg.IdleTimeout)
	}
	s.signalProgress() // a reader may be waiting on c
}

// armIdleLocked (re)starts the idle clock for d. A frozen session only
// records the deadline: Thaw arms it.
func (s *Session) armIdleLocked(d time.Duration) {
	s.idleDue = s.m.cfg.Pause.Now() + d
	switch {
	case s.frozen:
	case s.idle == nil:
		s.idle = s.m.cfg.Pause.AfterFunc(d, s.idleExpired)
	default:
		s.idle.Reset(d)
	}
}

func (s *Session) stopIdleLocked() {
	s.idleDue = 0
	if s.idle != nil {
		s.idle.Stop()
	}
}

// armKillLocked sends SIGKILL after d, the rest of the kill's grace; a
// frozen session only records the deadline.
func (s *Session) armKillLocked(d time.Duration) {
	s.killDue = s.m.cfg.Pause.Now() + d
	if !s.frozen {
		s.killTimer = s.m.cfg.Pause.AfterFunc(d, func() { s.signal(syscall.SIGKILL) })
	}
}

func (s *Session) idleExpired() {
	s.mu.Lock()
	idle := len(s.clients) == 0 && !s.ended
	s.mu.Unlock()
	if idle {
		s.kill(EndIdle, "idle: no client attached for "+s.m.cfg.IdleTimeout.String())
	}
}

func (s *Session) signalProgress() {
	select {
	case s.progress <- struct{}{}:
	default:
	}
}

// Info is the spec's S object. Times are ms since the epoch.
type Info struct {
	SessionID string   `json:"session_id"`
	PID       int      `json:"pid"`
	Command   string   `json:"command"`
	Args      []string `json:"args"`
	Rows      int      `json:"rows"`
	Cols      int      `json:"cols"`
	CreatedAt int64    `json:"created_at"`
	EndedAt   *int64   `json:"ended_at"`
	ExitCode  *int     `json:"exit_code"`
	IsAlive   bool     `json:"is_alive"`
	OOMKilled bool     `json:"oom_killed,omitempty"`
}

func (s *Session) info() Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := Info{
		SessionID: s.id, PID: s.pid, Command: s.command, Args: s.args,
		Rows: int(s.rows), Cols: int(s.cols), CreatedAt: s.created.UnixMilli(),
		IsAlive: !s.ended, OOMKilled: s.oomKilled,
	}
	if in.Args == nil {
		in.Args = []string{}
	}
	if s.ended {
		at, code := s.endedAt.UnixMilli(), s.exit.ExitCode()
		in.EndedAt, in.ExitCode = &at, &code
	}
	return in
}
