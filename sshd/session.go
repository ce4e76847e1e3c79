package sshd

import (
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Session channels are served here rather than by gliderlabs' Session,
// which (v0.3.8) can hang on a window-change before exec, rewrites \n in
// PTY output, sends no exit-signal, and closes in an order some clients
// mishandle. Requests are taken one at a time in the channel's own loop;
// none of them blocks on the process.

// maxEnv bounds what a client may pile up before starting a program.
const maxEnv = 256

// The end of a PTY session, as OpenSSH's sshd ends it: at the shell's exit
// it reads what the master still holds, until a read would block, and
// closes it even if a process of another session keeps the terminal open.
// When nothing else holds the terminal, the master is read to its EIO,
// which comes after the last output. When something does, "would block"
// is drainQuiet without output (the kernel pushes the slave's output to
// the master asynchronously), and a writer that never pauses is cut
// drainMax after the exit. Pipes have no such bound: as with
// OpenSSH, the session lasts until every writer has closed them.
const (
	drainQuiet = 100 * time.Millisecond
	drainMax   = 2 * time.Second
)

// maxOutputs is the most output copies a session runs (stdout, stderr).
const maxOutputs = 2

// outBuf is the copy size of program output and input: larger than an SSH
// packet (32 KiB) so bulk transfers (sftp, cat) cost fewer reads and
// writes; the channel splits output into packets and joins input.
const outBuf = 128 << 10

// session is one session channel.
type session struct {
	srv *Server
	ch  gossh.Channel
	ctx ssh.Context
	log zerolog.Logger

	env  map[string]string
	pty  *ptyRequest // requested terminal, nil for none
	term *terminal   // open once the program started with a PTY

	limits *connLimits
	begun  bool // a start request came: the unstarted slot is given back
	proc   *supervisor.Proc
	sftp   *sftpRun      // the sftp subsystem, instead of proc
	failed bool          // the program could not start; the channel is closed
	outs   []*os.File    // our read ends of the program's output
	ended  chan struct{} // one token per output copy that ended
	stdin  *os.File      // our write end of the program's stdin (pipes only)
	exitAt atomic.Int64  // the program's exit (unix ns) once seen, for the PTY drain

	x11 *forward.X11Display // the session's X11 display, nil for none
}

func (s *Server) handleSession(_ *ssh.Server, _ *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
	if !s.startSession() {
		_ = nc.Reject(gossh.ResourceShortage, "server shutting down")
		return
	}
	defer s.sessions.Done()
	l := limitsOf(ctx)
	if l == nil || !l.openChannel(true) {
		s.refuseChannel(nc, "too many channels, or sessions not started, on this connection")
		return
	}
	defer l.closeChannel()
	select {
	case s.slots <- struct{}{}:
	default:
		l.started()
		_ = nc.Reject(gossh.ResourceShortage, "too many sessions")
		return
	}
	defer func() { <-s.slots }()
	ch, reqs, err := nc.Accept()
	if err != nil {
		l.started()
		return
	}
	ss := &session{
		srv: s, ch: ch, ctx: ctx, env: map[string]string{}, limits: l,
		ended: make(chan struct{}, maxOutputs),
		log:   s.connLog(ctx).With().Str("session", shortID(ctx.SessionID())).Logger(),
	}
	ss.serve(reqs)
}

// started reports whether a program (or the sftp subsystem) runs.
func (ss *session) started() bool { return ss.proc != nil || ss.sftp != nil }

// begin gives back the session's unstarted slot, once.
func (ss *session) begin() {
	if !ss.begun {
		ss.begun = true
		ss.limits.started()
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// serve handles requests until the program exits (then reports its exit)
// or the client closes the channel (then hangs the program up).
func (ss *session) serve(reqs <-chan *gossh.Request) {
	// Until a start request, the client's data piles up unread (up to the
	// channel's 2 MiB window): such a channel gets a deadline.
	unstarted := time.NewTimer(ss.srv.cfg.UnstartedTimeout)
	defer unstarted.Stop()
	defer ss.begin()
	defer ss.closeX11()
	var done <-chan struct{}
	for {
		select {
		case req, ok := <-reqs:
			if !ok {
				ss.hangup()
				return
			}
			ss.handle(req)
			if ss.proc != nil {
				done = ss.proc.Done()
			} else if ss.sftp != nil {
				done = ss.sftp.done
			}
			if ss.started() || ss.failed {
				ss.begin()
				unstarted.Stop()
			}
		case <-unstarted.C:
			ss.log.Info().Dur("after", ss.srv.cfg.UnstartedTimeout).Msg("ssh: session closed: no shell, exec or subsystem request")
			ss.discard(reqs)
			_ = ss.ch.Close()
			return
		case <-done:
			ss.finish(reqs)
			return
		}
	}
}

func (ss *session) handle(req *gossh.Request) {
	ok := false
	switch req.Type {
	case "env":
		ok = ss.setEnv(req.Payload)
	case "pty-req":
		if !ss.started() && ss.pty == nil {
			ss.pty, ok = parsePtyRequest(req.Payload)
		}
	case "window-change":
		ok = ss.windowChange(req.Payload)
	case "shell", "exec", "subsystem":
		if ss.started() || ss.failed {
			break
		}
		// A program that cannot start is reported as sshd reports an
		// exec that fails in the child: the request succeeds, the reason
		// goes to stderr, exit status as a shell gives it (127 not found,
		// 126 not executable, else 1). Replying failure instead would
		// race the message (clients exit at the failure reply).
		ok = true
		if err := ss.start(req.Type, req.Payload); err != nil {
			ss.log.Warn().Err(err).Str("request", req.Type).Msg("ssh: cannot start")
			ss.failed = true
			if req.WantReply {
				_ = req.Reply(true, nil)
			}
			_, _ = io.WriteString(ss.ch.Stderr(), "tl-agent: "+err.Error()+"\r\n")
			ss.sendExit(exitStatus(launch.ExitStatus(err)))
			_ = ss.ch.CloseWrite()
			_ = ss.ch.Close()
			return
		}
	case "signal":
		ok = ss.signal(req.Payload)
	case "x11-req":
		ok = ss.x11Request(req.Payload)
	case "auth-agent-req@openssh.com":
		if !ss.started() {
			path, err := forward.AgentSocket(ss.ctx)
			if err != nil {
				ss.log.Warn().Err(err).Msg("ssh: agent forwarding")
			} else {
				ss.env["SSH_AUTH_SOCK"] = path
				ok = true
			}
		}
	}
	if req.WantReply {
		_ = req.Reply(ok, nil)
	}
}

// envDenied are variables a client may not set: malformed, or deciding
// who the program runs as or what it loads (SSH's per-door deny-list,
// launch.LoginVar).
func envDenied(k string) bool {
	return launch.LoginVar(k) || k == "" || strings.ContainsAny(k, "=\x00")
}

func (ss *session) setEnv(payload []byte) bool {
	var kv struct{ Name, Value string }
	if gossh.Unmarshal(payload, &kv) != nil || envDenied(kv.Name) || strings.IndexByte(kv.Value, 0) >= 0 {
		return false
	}
	if _, ok := ss.env[kv.Name]; !ok && len(ss.env) >= maxEnv {
		return false
	}
	ss.env[kv.Name] = kv.Value
	return true
}

func (ss *session) signal(payload []byte) bool {
	var msg struct{ Name string }
	if gossh.Unmarshal(payload, &msg) != nil || ss.proc == nil {
		return false
	}
	sig := unix.SignalNum("SIG" + msg.Name)
	if sig == 0 {
		return false
	}
	// The whole group: a shell's children get it too.
	return ss.proc.SignalGroup(sig) == nil
}

// hangup is the client going away before the program ended: as a closed
// terminal does, SIGHUP reaches the program's group; its exit is still
// reaped by the reaper, and our pipes are closed so nothing blocks.
func (ss *session) hangup() {
	_ = ss.ch.Close()
	if ss.sftp != nil {
		<-ss.sftp.done // the closed channel is the server's EOF
		return
	}
	if ss.proc == nil {
		return
	}
	if _, exited := ss.proc.Exited(); !exited {
		_ = ss.proc.SignalGroup(unix.SIGHUP)
		_ = ss.proc.SignalGroup(unix.SIGCONT)
	}
	ss.stopOutput(time.Now())
	ss.waitOutput(len(ss.outs))
	ss.closeFiles()
}

// finish reports the program's exit in the order OpenSSH clients rely on
// (RFC 4254 §6.10): remaining output, exit-status or exit-signal, EOF,
// close. As OpenSSH's sshd does, the program's stdin is closed at its
// exit, and output is copied until every writer of the pipes has closed
// them (a background job keeps the session, as it does with OpenSSH), or
// the client closes the channel (then the pipes are closed: the job's
// writes fail, nothing of the session is left).
func (ss *session) finish(reqs <-chan *gossh.Request) {
	if ss.sftp != nil {
		ss.discard(reqs)
		ss.finishSFTP()
		return
	}
	exit := ss.proc.Wait()
	if ss.stdin != nil {
		_ = ss.stdin.Close()
	}
	if ss.term != nil && !awaitHangUp(ss.term.master) {
		// Another process holds the terminal: drain until it is quiet.
		// Without one the master reads what is left, then EIO: Linux
		// flushes the slave's pending output before it reports the other
		// side closed (n_tty_read and TTY_OTHER_CLOSED, since 3.17), so
		// no timer may cut that output, however loaded the machine.
		ss.exitAt.Store(time.Now().UnixNano())
		ss.extendDrain(ss.term.master)
	}
	if !ss.awaitOutput(reqs) {
		ss.log.Debug().Str("exit", exit.String()).Msg("ssh: client left before the program's output ended")
		return
	}
	// Requests that arrive while we report the exit (a late
	// window-change) must not block the connection's mux.
	ss.discard(reqs)
	ss.sendExit(exit)
	_ = ss.ch.CloseWrite()
	_ = ss.ch.Close()
	ss.closeFiles()
	ss.log.Debug().Str("exit", exit.String()).Msg("ssh: program ended")
}

// awaitOutput waits until every output copy has ended, refusing the
// channel's requests meanwhile (the program is gone, as OpenSSH refuses a
// signal then). If the client closes the channel first, the output is
// closed and false returned.
func (ss *session) awaitOutput(reqs <-chan *gossh.Request) bool {
	for left := len(ss.outs); left > 0; {
		select {
		case <-ss.ended:
			left--
		case req, ok := <-reqs:
			if !ok {
				ss.stopOutput(time.Now())
				ss.waitOutput(left)
				ss.closeFiles()
				return false
			}
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
	return true
}

// waitOutput waits for n more output copies to end.
func (ss *session) waitOutput(n int) {
	for ; n > 0; n-- {
		<-ss.ended
	}
}

// stopOutput makes the output copies end by the deadline even if a
// background child keeps the pipes or the terminal open.
func (ss *session) stopOutput(deadline time.Time) {
	for _, f := range ss.outs {
		_ = f.SetReadDeadline(deadline)
	}
}

// extendDrain moves the PTY master's read deadline to drainQuiet from now,
// at most drainMax after the exit; nothing before the exit.
func (ss *session) extendDrain(master *os.File) {
	at := ss.exitAt.Load()
	if at == 0 {
		return
	}
	deadline := time.Now().Add(drainQuiet)
	if limit := time.Unix(0, at).Add(drainMax); deadline.After(limit) {
		deadline = limit
	}
	_ = master.SetReadDeadline(deadline)
}

// holderGrace is how long the exit waits for the terminal's other holders
// to let go before it takes one for a process of its own: a process the
// agent forks at that moment holds the slave (as every fd) until its exec,
// which on a loaded machine takes milliseconds, and the output still in
// the kernel's buffer must not be cut by the quiet drain meanwhile.
const holderGrace = 300 * time.Millisecond

// awaitHangUp reports whether the terminal's slave side is closed by
// every process within holderGrace, checking without blocking a thread.
func awaitHangUp(master *os.File) bool {
	for deadline := time.Now().Add(holderGrace); ; time.Sleep(10 * time.Millisecond) {
		if hungUp(master) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// hungUp reports whether no process holds the terminal's slave side any
// more (the master polls POLLHUP once the slave's last fd is closed).
func hungUp(master *os.File) bool {
	rc, err := master.SyscallConn()
	if err != nil {
		return false
	}
	hup := false
	_ = rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd)}}
		if n, err := unix.Poll(fds, 0); err == nil && n == 1 {
			hup = fds[0].Revents&unix.POLLHUP != 0
		}
	})
	return hup
}

func (ss *session) closeFiles() {
	for _, f := range ss.outs {
		_ = f.Close()
	}
	if ss.term != nil {
		ss.term.close()
	}
}

func exitStatus(code int) supervisor.Exit { return supervisor.Exit{Code: code} }

// sendExit sends exit-status, or exit-signal for a killed program
// (gliderlabs sends none), whose fields are: signal name without "SIG",
// core dumped, message, language tag.
func (ss *session) sendExit(e supervisor.Exit) {
	if e.Signal != 0 {
		name := strings.TrimPrefix(unix.SignalName(e.Signal), "SIG")
		msg := struct {
			Name    string
			Core    bool
			Message string
			Lang    string
		}{name, e.Core, "", ""}
		_, _ = ss.ch.SendRequest("exit-signal", false, gossh.Marshal(&msg))
		return
	}
	_, _ = ss.ch.SendRequest("exit-status", false, gossh.Marshal(&struct{ Status uint32 }{uint32(e.Code)}))
}

// copyOut copies program output to w until EOF, EIO (PTY closed) or the
// read deadline (stopOutput; for a terminal, the exit drain).
func (ss *session) copyOut(w io.Writer, r *os.File, tty bool) {
	ss.outs = append(ss.outs, r)
	go func() {
		defer func() { ss.ended <- struct{}{} }()
		buf := make([]byte, outBuf)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				if tty { // after the write: a slow client does not cut the drain
					ss.extendDrain(r)
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
					ss.log.Debug().Err(err).Msg("ssh: output read")
				}
				return
			}
		}
	}()
}

// copyIn copies the client's input to the program; at the client's EOF it
// closes w so the program sees EOF too. The session does not wait for it
// (many clients never half-close, and a channel's Read cannot be
// interrupted); it ends when the client closes the channel or the
// connection ends, and the server's Close waits for it.
func (ss *session) copyIn(w io.WriteCloser, r io.Reader, closeAtEOF bool) {
	if !ss.srv.startSession() {
		if closeAtEOF {
			_ = w.Close() // closing: the connection and its channel are going
		}
		return
	}
	go func() {
		defer ss.srv.sessions.Done()
		buf := make([]byte, outBuf)
		_, _ = io.CopyBuffer(writerOnly{w}, r, buf)
		if closeAtEOF {
			_ = w.Close()
		}
	}()
}

// discard drains the channel's later requests (they must not block the
// connection's mux) until the channel goes, on a goroutine the server's
// Close waits for.
func (ss *session) discard(reqs <-chan *gossh.Request) {
	if !ss.srv.startSession() {
		go gossh.DiscardRequests(reqs) // closing: ends with the connection, now
		return
	}
	go func() {
		defer ss.srv.sessions.Done()
		gossh.DiscardRequests(reqs)
	}()
}

type writerOnly struct{ io.Writer }
