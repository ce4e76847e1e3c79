package forward

import (
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
)

// SSH forwards: the channel and global-request handlers the agent's SSH
// server installs in gliderlabs/ssh. Each connection gets its own registry
// of listeners (Attach), because gliderlabs' ForwardedTCPHandler keys them
// by "addr:port" across connections: several `-R 0:...` overwrite each
// other and a dropped connection's stale forward blocks the next one
// (gliderlabs 162, Coder PR 11631). Everything a connection opened is
// closed when it ends, and SSHForwards (sshtrack.go) waits for every
// goroutine it started.

// MaxListeners bounds the remote forwards (TCP and unix) of one connection.
const MaxListeners = 64

type ctxKey struct{}

// sshConn is one SSH connection's forwarding state.
type sshConn struct {
	log  zerolog.Logger
	user *identity.User // whom forwards act as; nil refuses unix forwards

	owner     *SSHForwards
	stopWatch func() bool // stops the watcher that closes c when its context ends

	mu        sync.Mutex
	closed    bool                    // guarded by mu
	listeners map[string]net.Listener // guarded by mu; "tcp:addr:port" or "unix:path"
	held      map[io.Closer]struct{}  // guarded by mu; both ends of every relay
	agentPath string                  // guarded by mu; the agent socket once made
	agentDir  string                  // guarded by mu
}

func stateOf(ctx ssh.Context) *sshConn {
	c, _ := ctx.Value(ctxKey{}).(*sshConn)
	return c
}

// close ends the connection's forwards: its listeners (so their accept
// loops end) and both ends of its relays. Safe twice.
func (c *sshConn) close() {
	c.mu.Lock()
	c.closed = true
	ls, held := c.listeners, c.held
	c.listeners, c.held = map[string]net.Listener{}, map[io.Closer]struct{}{}
	dir := c.agentDir
	c.agentDir = ""
	c.mu.Unlock()
	if c.owner != nil {
		c.owner.mu.Lock()
		delete(c.owner.conns, c)
		c.owner.mu.Unlock()
	}
	for _, ln := range ls {
		ln.Close()
	}
	for x := range held {
		x.Close()
	}
	if dir != "" {
		c.removeAgentDir(dir)
	}
}

// add registers ln under key; false when the connection is gone, the key
// is taken or the bound is reached.
func (c *sshConn) add(key string, ln net.Listener) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return fmt.Errorf("connection closed")
	case c.listeners[key] != nil:
		return fmt.Errorf("%s already forwarded", key)
	case len(c.listeners) >= MaxListeners:
		return fmt.Errorf("more than %d forwards", MaxListeners)
	}
	c.listeners[key] = ln
	return nil
}

// remove closes and forgets the listener under key.
func (c *sshConn) remove(key string) bool {
	c.mu.Lock()
	ln := c.listeners[key]
	delete(c.listeners, key)
	c.mu.Unlock()
	if ln == nil {
		return false
	}
	ln.Close()
	return true
}

// RequestHandlers are the global requests of the agent's SSH server.
// keepalive@openssh.com needs no handler: any reply, even a failure, is
// what OpenSSH's ServerAliveInterval waits for.
func RequestHandlers() map[string]ssh.RequestHandler {
	return map[string]ssh.RequestHandler{
		"tcpip-forward":                          tcpipForward,
		"cancel-tcpip-forward":                   cancelTCPIPForward,
		"streamlocal-forward@openssh.com":        streamLocalForward,
		"cancel-streamlocal-forward@openssh.com": cancelStreamLocalForward,
	}
}
