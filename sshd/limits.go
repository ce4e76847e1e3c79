package sshd

import (
	"sync"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Channel bounds per connection. x/crypto gives every channel a fixed
// 2 MiB receive window and buffers what the client sends until it is read,
// so what one connection can make the agent hold is bounded by counts:
// a session nobody reads yet (no shell, exec or subsystem request) holds
// up to 2 MiB, which is why those have their own, smaller cap and a
// deadline.
const (
	// DefaultMaxChannelsPerConn bounds open channels of one connection:
	// sessions and forwards together.
	DefaultMaxChannelsPerConn = 64
	// DefaultMaxUnstartedPerConn bounds session channels of one
	// connection that have not asked for a program yet.
	DefaultMaxUnstartedPerConn = 16
	// DefaultUnstartedTimeout closes a session channel that has not asked
	// for a program within it; clients send their requests at once.
	DefaultUnstartedTimeout = 10 * time.Second
)

type limitsKey struct{}

// connLimits counts one connection's channels.
type connLimits struct {
	maxOpen, maxUnstarted int

	mu        sync.Mutex
	open      int // guarded by mu
	unstarted int // guarded by mu
}

func limitsOf(ctx ssh.Context) *connLimits {
	l, _ := ctx.Value(limitsKey{}).(*connLimits)
	return l
}

// openChannel takes a channel slot, and an unstarted slot for a session;
// false when the connection is at either cap.
func (l *connLimits) openChannel(session bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.maxOpen || session && l.unstarted >= l.maxUnstarted {
		return false
	}
	l.open++
	if session {
		l.unstarted++
	}
	return true
}

// started gives back a session's unstarted slot (once).
func (l *connLimits) started() {
	l.mu.Lock()
	l.unstarted--
	l.mu.Unlock()
}

func (l *connLimits) closeChannel() {
	l.mu.Lock()
	l.open--
	l.mu.Unlock()
}

// limited wraps a forward's channel handler with the connection's channel
// cap; the slot is held until the handler (and so its relay) returns.
func (s *Server) limited(h ssh.ChannelHandler) ssh.ChannelHandler {
	return func(srv *ssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
		l := limitsOf(ctx)
		if l == nil || !l.openChannel(false) {
			s.refuseChannel(nc, "too many channels on this connection")
			return
		}
		defer l.closeChannel()
		h(srv, conn, nc, ctx)
	}
}

func (s *Server) refuseChannel(nc gossh.NewChannel, why string) {
	s.log.Debug().Str("type", nc.ChannelType()).Msg("ssh channel refused: " + why)
	_ = nc.Reject(gossh.ResourceShortage, why)
}
