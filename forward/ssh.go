package forward

import (
	"fmt"
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
// closed when it ends.

// MaxListeners bounds the remote forwards (TCP and unix) of one connection.
const MaxListeners = 64

type ctxKey struct{}

// sshConn is one SSH connection's forwarding state.
type sshConn struct {
	log  zerolog.Logger
	user *identity.User // whom forwards act as; nil refuses unix forwards

	mu        sync.Mutex
	closed    bool                    // guarded by mu
	listeners map[string]net.Listener // guarded by mu; "tcp:addr:port" or "unix:path"
	agentPath string                  // guarded by mu; the agent socket once made
	agentDir  string                  // guarded by mu
}

// Attach gives the connection of ctx its forwarding state; call it in
// gliderlabs' ConnCallback. It is torn down when ctx ends (the connection
// closed). u is the sandbox user, or nil when unknown.
func Attach(ctx ssh.Context, log zerolog.Logger, u *identity.User) {
	c := &sshConn{log: log, user: u, listeners: map[string]net.Listener{}}
	ctx.SetValue(ctxKey{}, c)
	go func() {
		<-ctx.Done()
		c.close()
	}()
}

func stateOf(ctx ssh.Context) *sshConn {
	c, _ := ctx.Value(ctxKey{}).(*sshConn)
	return c
}

// userOrNil is the sandbox user forwards act as; nil refuses them.
func (c *sshConn) userOrNil() *identity.User {
	if c == nil {
		return nil
	}
	return c.user
}

func (c *sshConn) close() {
	c.mu.Lock()
	c.closed = true
	ls := c.listeners
	c.listeners = map[string]net.Listener{}
	dir := c.agentDir
	c.mu.Unlock()
	for _, ln := range ls {
		ln.Close()
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
