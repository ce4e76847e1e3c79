// Package netx holds the listener plumbing every door of the agent and the
// proxy shares: an accept that survives temporary errors, and caps on live
// connections in total and per source address.
//
// An accept loop that returns on EMFILE never accepts again (field notes);
// net/http retries temporary errors with back-off, and so does Accept here.
package netx

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/backoff"
)

// Back-off for temporary accept errors, as net/http's Server.Serve does:
// 5 ms doubling to 1 s.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Temporary reports whether an accept error is worth retrying: running out
// of fds or buffers, a connection aborted before it was accepted, or a
// deadline. The listener itself is still good after each of these.
func Temporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED,
		syscall.ENOBUFS, syscall.ENOMEM, syscall.EAGAIN, syscall.EINTR, syscall.EPROTO} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Accept returns the next connection from ln, retrying temporary errors
// with back-off until ctx ends. Any other error (net.ErrClosed after Close)
// is returned as is; so is ctx's error once it is done.
func Accept(ctx context.Context, ln net.Listener, log zerolog.Logger) (net.Conn, error) {
	bo := backoff.Backoff{Initial: acceptBackoffMin, Max: acceptBackoffMax}
	for {
		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !Temporary(err) {
			return nil, err
		}
		wait := bo.Next()
		log.Warn().Err(err).Str("addr", ln.Addr().String()).Dur("retry_in", wait).Msg("accept failed; retrying")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// Limiter caps live connections: at most Total in all, at most PerSource
// from one source address (the IP for TCP; every unix or vsock peer counts
// as one source). Zero means no cap. Safe for concurrent use.
type Limiter struct {
	Total, PerSource int

	mu       sync.Mutex
	live     int
	bySource map[string]int
	lastLog  time.Time // last refusal logged; guarded by mu
	quiet    int       // refusals not logged since; guarded by mu
}

// refusalLogEvery spaces out refusal logs: a flood at the cap must not
// become a flood in the log.
const refusalLogEvery = time.Second

// LogRefusal logs a connection refused at a cap: the first at once, then
// at most one a second, each with the number left out before it.
func (l *Limiter) LogRefusal(log zerolog.Logger, remote net.Addr, msg string) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.lastLog) < refusalLogEvery {
		l.quiet++
		l.mu.Unlock()
		return
	}
	quiet := l.quiet
	l.lastLog, l.quiet = now, 0
	l.mu.Unlock()
	log.Warn().Str("remote", remote.String()).Int("refused_unlogged", quiet).Int("cap", l.Total).Int("cap_per_source", l.PerSource).Msg(msg)
}

// Source is the key a connection's remote address is counted under.
func Source(addr net.Addr) string {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.String()
	}
	if addr == nil {
		return ""
	}
	return addr.Network()
}

// Acquire takes a slot for a connection from addr. It returns a release
// function (safe to call more than once) and true, or false when a cap is
// reached.
func (l *Limiter) Acquire(addr net.Addr) (release func(), ok bool) {
	src := Source(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.Total > 0 && l.live >= l.Total {
		return nil, false
	}
	if l.PerSource > 0 && l.bySource[src] >= l.PerSource {
		return nil, false
	}
	if l.bySource == nil {
		l.bySource = map[string]int{}
	}
	l.live++
	l.bySource[src]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.live--
			if l.bySource[src]--; l.bySource[src] <= 0 {
				delete(l.bySource, src)
			}
		})
	}, true
}

// Live is the number of connections holding a slot.
func (l *Limiter) Live() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live
}

// Listen wraps ln so that every accepted connection holds a slot of l until
// it is closed, connections over a cap are closed at once (and logged), and
// temporary accept errors are retried with back-off. It suits servers that
// own their accept loop, such as net/http's.
func Listen(ln net.Listener, l *Limiter, log zerolog.Logger) net.Listener {
	return ListenWith(ln, l, log, nil)
}

// ListenWith is Listen where refuse, if not nil, may tell a connection over
// a cap why before it is closed (an HTTP 503, say). It runs in the accept
// loop, so it must not block.
func ListenWith(ln net.Listener, l *Limiter, log zerolog.Logger, refuse func(net.Conn)) net.Listener {
	ctx, cancel := context.WithCancel(context.Background())
	return &limitListener{Listener: ln, l: l, log: log, refuse: refuse, ctx: ctx, cancel: cancel}
}

type limitListener struct {
	net.Listener
	l      *Limiter
	log    zerolog.Logger
	refuse func(net.Conn)
	ctx    context.Context
	cancel context.CancelFunc
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := Accept(ll.ctx, ll.Listener, ll.log)
		if err != nil {
			if ll.ctx.Err() != nil {
				return nil, net.ErrClosed
			}
			return nil, err
		}
		release, ok := ll.l.Acquire(c.RemoteAddr())
		if !ok {
			ll.l.LogRefusal(ll.log.With().Str("addr", ll.Addr().String()).Logger(), c.RemoteAddr(), "connection refused: at the connection limit")
			if ll.refuse != nil {
				ll.refuse(c)
			}
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: release}, nil
	}
}

func (ll *limitListener) Close() error {
	ll.cancel()
	return ll.Listener.Close()
}

type limitedConn struct {
	net.Conn
	release func()
}

// PlainConn is the accepted connection (Socket).
func (c *limitedConn) PlainConn() net.Conn { return c.Conn }

// ReadFrom is where net/http's response body copy lands once the headers
// are out (its response.ReadFrom hands the source to the connection): a
// ConnWriterTo writes itself, any other source goes to the connection's
// own ReadFrom (a TCP socket's sendfile or splice) or is copied.
func (c *limitedConn) ReadFrom(r io.Reader) (int64, error) {
	if w, ok := r.(ConnWriterTo); ok {
		return w.WriteToConn(c)
	}
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// ConnWriterTo is a source that moves its bytes to a connection itself:
// tl-proxy's downloads, spliced from the uplink's socket to the client's
// (uplink.Stream.SpliceTo), which needs the socket io.Copy would hide.
type ConnWriterTo interface {
	WriteToConn(c net.Conn) (int64, error)
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// PlainConn is implemented by a wrapper of a connection whose writes add
// nothing to the bytes (a slot's release, a write deadline), so a write
// made on the connection underneath is the same write. TLS must not be
// one.
type PlainConn interface{ PlainConn() net.Conn }

// Socket returns the raw socket of c when c is a plain TCP or unix
// socket, under any PlainConn wrappers, and nil otherwise (TLS, pipes,
// SSH channels): the one test both zero-copy paths make, splice to the
// uplink (uplink/splice.go) and a relay's non-blocking write
// (internal/relay).
func Socket(c net.Conn) syscall.RawConn {
	for {
		p, ok := c.(PlainConn)
		if !ok {
			break
		}
		c = p.PlainConn()
	}
	var sc syscall.Conn
	switch conn := c.(type) {
	case *net.TCPConn:
		sc = conn
	case *net.UnixConn:
		sc = conn
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
