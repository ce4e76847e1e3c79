package pty

import (
	"context"
	"errors"
	"os"
	"strconv"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"
)

// client is one attached WebSocket. It owns three goroutines: the reader
// (the HTTP handler's own), a writer that follows the session's output from
// its position in the ring, and a pinger.
type client struct {
	s      *Session
	conn   *websocket.Conn
	remote string
	log    zerolog.Logger // the session's, with the attach request's ids and the client
	ctx    context.Context
	cancel context.CancelFunc
	wake   chan struct{} // cap 1
	buf    []byte        // writer-owned frame buffer, allocated at READY

	// Guarded by s.mu.
	ready        bool                 // READY received: output flows
	pos          int64                // next output offset to send
	lastProgress time.Duration        // running clock (Config.Pause) at the last completed write (or READY)
	drop         string               // why the session dropped it, "" while wanted
	dropCode     websocket.StatusCode // the close code sent with drop
}

// Limits of the WebSocket side.
const (
	// maxMessage bounds a client message (opcode + 64 KiB of input); a
	// bigger one closes the connection with 1009.
	maxMessage = 1 + 64<<10
	// frameData is the output payload per message: one 32 KiB uplink chunk
	// holds the WebSocket header, the opcode and the payload.
	frameData = 32<<10 - 16
)

func (c *client) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// readLoop handles client messages until the connection ends. It returns
// the close code and reason to send, or 0 when the peer went away.
func (c *client) readLoop() (websocket.StatusCode, string) {
	for {
		typ, msg, err := c.conn.Read(c.ctx)
		if err != nil {
			if errors.Is(err, websocket.ErrMessageTooBig) {
				return websocket.StatusMessageTooBig, "message over " + strconv.Itoa(maxMessage) + " bytes"
			}
			return 0, ""
		}
		if typ != websocket.MessageBinary {
			return websocket.StatusUnsupportedData, errTextMessages.Error()
		}
		f, err := parseClientFrame(msg)
		if err != nil {
			if errors.Is(err, errEmptyFrame) {
				continue // nothing asked; harmless
			}
			return websocket.StatusProtocolError, err.Error()
		}
		switch f.op {
		case opData:
			if err := c.s.input(f.data); err != nil && !errors.Is(err, os.ErrClosed) {
				c.log.Debug().Err(err).Msg("pty input dropped")
			}
		case opResize:
			if err := c.s.resize(f.rows, f.cols); err != nil && !errors.Is(err, errEnded) {
				c.log.Debug().Err(err).Msg("pty resize failed")
			}
		case opReady:
			c.s.setReady(c)
		}
	}
}

// step is what the writer does next.
type step int

const (
	stepWait       step = iota // nothing to send yet
	stepSend                   // send buf[:1+n]
	stepExit                   // caught up with an exited session: 03, then close exit:<code>
	stepTerminated             // caught up with a killed session: close 1001
	stepDrop                   // dropped by the session
)

// writeLoop sends output from the client's position, then the end.
func (c *client) writeLoop() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.wake:
		}
		for {
			st, n, code := c.s.next(c)
			switch st {
			case stepWait:
			case stepSend:
				if !c.write(c.buf[:1+n]) {
					return
				}
				c.s.advance(c, n)
				continue
			case stepExit:
				if c.write(exitFrame(code)) {
					_ = c.conn.Close(websocket.StatusNormalClosure, "exit:"+strconv.Itoa(code))
				}
				return
			case stepTerminated:
				_ = c.conn.Close(websocket.StatusGoingAway, "session terminated")
				return
			case stepDrop:
				// The deadline is dropLocked's timer: it cancels c.ctx,
				// which cuts the connection under a close still queued.
				_ = c.conn.Close(c.s.dropReason(c))
				return
			}
			break
		}
	}
}

// write sends one message. It takes no per-write timeout (a timer per
// frame is measurable on the hot path): a write stuck on a stalled client
// ends when the reader drops it (StallTimeout) or a ping fails, both of
// which cancel c.ctx.
func (c *client) write(p []byte) bool {
	if err := c.conn.Write(c.ctx, websocket.MessageBinary, p); err != nil {
		c.log.Debug().Err(err).Msg("pty client write failed")
		c.cancel()
		return false
	}
	return true
}

// pingLoop drops a client that does not answer pings. The pong timeout
// counts running time: a pong that arrived while the sandbox was frozen
// is still unread at thaw, and must not count as missing.
func (c *client) pingLoop() {
	cfg := c.s.m.cfg
	t := time.NewTicker(cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithCancel(c.ctx)
		late := cfg.Pause.AfterFunc(cfg.PongTimeout, cancel)
		err := c.conn.Ping(ctx)
		late.Stop()
		cancel()
		if err != nil {
			if c.ctx.Err() == nil {
				c.log.Info().Err(err).Msg("pty client did not answer ping")
				c.s.drop(c, websocket.StatusPolicyViolation, "no pong within "+cfg.PongTimeout.String())
			}
			return
		}
	}
}

// setReady starts output for c from the replay point of the kept output.
func (s *Session) setReady(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.ready {
		return
	}
	c.ready = true
	c.pos = s.out.replayStart()
	c.lastProgress = s.m.cfg.Pause.Now()
	c.wakeUp()
}

// next decides c's next step and, for stepSend, copies up to frameData
// bytes of output into c.buf after the opcode.
func (s *Session) next(c *client) (step, int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.drop != "":
		return stepDrop, 0, 0
	case !c.ready:
		return stepWait, 0, 0
	}
	if c.pos < s.out.start {
		// Only reachable if output was released after the end.
		c.pos = s.out.start
	}
	if c.pos < s.out.end {
		if c.buf == nil {
			c.buf = make([]byte, 1+frameData)
			c.buf[0] = opData
		}
		return stepSend, s.out.read(c.pos, c.buf[1:]), 0
	}
	switch {
	case !s.ended:
		return stepWait, 0, 0
	case s.killed:
		return stepTerminated, 0, 0
	default:
		return stepExit, 0, s.exit.ExitCode()
	}
}

// dropReason is the close code and reason of a dropped client.
func (s *Session) dropReason(c *client) (websocket.StatusCode, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.dropCode, c.drop
}

func (s *Session) advance(c *client, n int) {
	s.mu.Lock()
	c.pos += int64(n)
	c.lastProgress = s.m.cfg.Pause.Now()
	s.mu.Unlock()
	s.signalProgress()
}
