package forward

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/httpx"
	"github.com/tensorlake/tl-agent/internal/relay"
	"github.com/tensorlake/tl-agent/internal/reqid"
)

// Tunnels serves GET /api/v1/tunnels/tcp?port=N: a WebSocket whose binary
// messages are relayed byte for byte to 127.0.0.1:N inside the sandbox,
// through Relay like every other forward.
//
// Half-close: the target's EOF is passed to the client as a normal close
// (1000, "eof") after all its bytes; the client's EOF is a normal close
// or, to keep receiving after it, a zero-length binary message. Text
// messages are refused with close code 1003.
//
// A tunnel's WebSocket is hijacked from the HTTP server, whose Shutdown
// does not wait for it: Tunnels owns its tunnels, and Close ends them.
type Tunnels struct {
	log zerolog.Logger

	mu      sync.Mutex
	closing bool                  // guarded by mu: new tunnels are refused
	live    map[net.Conn]struct{} // guarded by mu; each tunnel's target
	wg      sync.WaitGroup        // tunnels; Add only under mu while !closing
}

// NewTunnels returns the tunnel capability.
func NewTunnels(log zerolog.Logger) *Tunnels {
	return &Tunnels{log: log.With().Str("component", "tunnels").Logger(), live: map[net.Conn]struct{}{}}
}

// Close refuses new tunnels, closes the open ones (their targets: the
// relay then closes the WebSocket) and returns once they have ended.
// Safe twice.
func (t *Tunnels) Close() {
	t.mu.Lock()
	t.closing = true
	for c := range t.live {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// begin registers a tunnel to target; false once closing.
func (t *Tunnels) begin(target net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closing {
		return false
	}
	t.live[target] = struct{}{}
	t.wg.Add(1)
	return true
}

func (t *Tunnels) end(target net.Conn) {
	t.mu.Lock()
	delete(t.live, target)
	t.mu.Unlock()
	t.wg.Done()
}

// Routes adds the TCP tunnel route.
func (t *Tunnels) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/tunnels/tcp", t.serve)
}

func (t *Tunnels) serve(w http.ResponseWriter, r *http.Request) {
	ps := r.URL.Query().Get("port")
	port, err := strconv.Atoi(ps)
	if ps == "" || err != nil || port < 1 || port > 65535 {
		httpx.WriteError(w, http.StatusBadRequest, "INVALID_PORT", "query parameter port must be a number from 1 to 65535")
		return
	}
	// Dial before accepting the upgrade, so that an unreachable port can
	// still be answered with a status.
	target, err := DialTCP(r.Context(), port)
	if err != nil {
		httpx.WriteError(w, http.StatusBadGateway, "PORT_UNREACHABLE", err.Error())
		return
	}
	if !t.begin(target) {
		target.Close()
		httpx.WriteError(w, http.StatusServiceUnavailable, "SHUTTING_DOWN", "the agent is shutting down")
		return
	}
	defer t.end(target)
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		target.Close() // Accept has answered the client
		return
	}
	// Messages are streamed through Reader, never held whole.
	ws.SetReadLimit(-1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The client's pings are answered while the relay reads. A client
	// that vanishes is noticed by the proxy (TCP keepalive, write errors),
	// which closes the stream; the agent does not ping, since a tunnel
	// whose target is slow to read cannot answer pings in time and would
	// be dropped for it.
	c := &wsConn{ws: ws, ctx: ctx, listening: make(chan struct{})}
	go c.awaitListener()
	start := time.Now()
	in, out := relay.Relay(c, target)
	log := reqid.Logger(r.Context(), t.log)
	log.Debug().Int("port", port).Int64("bytes_in", in).Int64("bytes_out", out).
		Dur("duration", time.Since(start)).Msg("tunnel ended")
}

// firstByteHold is how long the target's first bytes wait after the 101
// unless the client sends first (awaitListener).
const firstByteHold = 250 * time.Millisecond

// awaitListener holds the target's first bytes until the client has sent
// a message or firstByteHold has passed. A client may take the 101 and the
// first message from one read and attach its message handler only once it
// has seen the open: the official SDK's desktop tunnel (npm ws) does, and
// drops a server-speaks-first greeting (VNC's "RFB 003.008") that comes
// with the 101; bytes sent later arrive in a later read, after the handler
// is there. The cost: firstByteHold before the first byte of a server that
// speaks first, nothing when the client does. (A ping would be exact, but
// the SDK answers pings with unmasked pongs, a protocol error that ends
// the connection.)
func (c *wsConn) awaitListener() {
	t := time.NewTimer(firstByteHold)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.listening:
	case <-c.ctx.Done():
	}
	c.heard()
}

func (c *wsConn) heard() { c.heardOnce.Do(func() { close(c.listening) }) }

// wsConn presents a WebSocket as a net.Conn for Relay: a Read returns
// bytes of binary messages in turn; a Write sends one binary message;
// CloseWrite sends a normal close. Deadlines are not supported.
type wsConn struct {
	ws  *websocket.Conn
	ctx context.Context

	r   io.Reader // current message; only the reading goroutine touches it
	eof bool

	listening chan struct{} // closed once the target's bytes may go (awaitListener)
	heardOnce sync.Once

	mu        sync.Mutex
	closeCode websocket.StatusCode // guarded by mu; set by a refusal
	closeMsg  string
}

var errText = errors.New("text message refused: the tunnel carries binary messages only")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.eof {
			return 0, io.EOF
		}
		if c.r == nil {
			typ, r, err := c.ws.Reader(c.ctx)
			if err != nil {
				switch websocket.CloseStatus(err) {
				case websocket.StatusNormalClosure, websocket.StatusGoingAway, websocket.StatusNoStatusRcvd:
					c.eof = true
					return 0, io.EOF
				}
				return 0, err
			}
			if typ != websocket.MessageBinary {
				c.refuse(websocket.StatusUnsupportedData, "text messages are refused; send binary")
				return 0, errText
			}
			c.r = r
			c.heard()
			n, err := c.r.Read(p)
			if errors.Is(err, io.EOF) {
				c.r = nil
				if n == 0 {
					// A zero-length message is the client's half-close. Keep
					// answering pings and the close handshake from here on.
					c.eof = true
					c.ws.CloseRead(c.ctx)
					return 0, io.EOF
				}
				return n, nil
			}
			return n, err
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			return n, nil
		}
		return n, err
	}
}

func (c *wsConn) refuse(code websocket.StatusCode, msg string) {
	c.mu.Lock()
	c.closeCode, c.closeMsg = code, msg
	c.mu.Unlock()
}

func (c *wsConn) Write(p []byte) (int, error) {
	select {
	case <-c.listening:
	case <-c.ctx.Done():
		return 0, c.ctx.Err()
	}
	if err := c.ws.Write(c.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// PrefersBigWrites asks Relay for its big buffer: each Write is a message
// whose header and first bytes go out as a separate small frame (the HTTP
// server's 4 KiB write buffer), so fewer, bigger messages save frames and
// system calls. Memory per tunnel stays fixed (one 256 KiB buffer).
func (c *wsConn) PrefersBigWrites() bool { return true }

// CloseWrite tells the client the target has finished sending.
func (c *wsConn) CloseWrite() error {
	return c.ws.Close(websocket.StatusNormalClosure, "eof")
}

func (c *wsConn) Close() error {
	c.mu.Lock()
	code, msg := c.closeCode, c.closeMsg
	c.mu.Unlock()
	if code == 0 {
		code, msg = websocket.StatusNormalClosure, ""
	}
	err := c.ws.Close(code, msg)
	if err != nil {
		_ = c.ws.CloseNow()
	}
	return nil
}

func (c *wsConn) LocalAddr() net.Addr              { return wsAddr{} }
func (c *wsConn) RemoteAddr() net.Addr             { return wsAddr{} }
func (c *wsConn) SetDeadline(time.Time) error      { return nil }
func (c *wsConn) SetReadDeadline(time.Time) error  { return nil }
func (c *wsConn) SetWriteDeadline(time.Time) error { return nil }

type wsAddr struct{}

func (wsAddr) Network() string { return "websocket" }
func (wsAddr) String() string  { return "websocket" }
