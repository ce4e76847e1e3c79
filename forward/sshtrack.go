package forward

import (
	"context"
	"io"
	"net"
	"sync"

	"github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/relay"
	"github.com/tensorlake/tl-agent/internal/streams"
)

// SSHForwards owns the forwarding state of one SSH server's connections
// and every goroutine forwarding starts: each connection's watcher, the
// accept loops of -R and agent sockets, and the relays of every forwarded
// connection, including those run in gliderlabs' channel goroutines. When
// a connection ends, its listeners and relayed connections are closed;
// Close does that for all of them and returns once every goroutine has
// ended (yamux's Session.Close, Coder's trackGoroutine).
type SSHForwards struct {
	log zerolog.Logger

	mu      sync.Mutex
	closing bool                  // guarded by mu: Attach refuses
	conns   map[*sshConn]struct{} // guarded by mu; attached, not yet closed
	// wg counts the goroutines and handlers of every connection. Add
	// happens only under f.mu while !closing, or under a connection's mu
	// while it is not closed; Close closes every connection before Wait.
	wg sync.WaitGroup
}

// NewSSHForwards returns the forwarding owner of one SSH server.
func NewSSHForwards(log zerolog.Logger) *SSHForwards {
	return &SSHForwards{log: log, conns: map[*sshConn]struct{}{}}
}

// Attach gives the connection of ctx its forwarding state; call it in
// gliderlabs' ConnCallback. The state is torn down when ctx ends (the
// connection closed). u is the sandbox user, or nil when unknown. False
// once Close has begun: refuse the connection. Its forwards' events carry
// the connection's request ids when the server kept its peer in ctx
// (streams.SetPeer) before.
func (f *SSHForwards) Attach(ctx ssh.Context, u *identity.User) bool {
	log := f.log
	if p, ok := streams.PeerFrom(ctx); ok {
		log = p.LogIDs(log)
	}
	c := &sshConn{log: log, user: u, owner: f, listeners: map[string]net.Listener{}, held: map[io.Closer]struct{}{}}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing {
		return false
	}
	f.conns[c] = struct{}{}
	ctx.SetValue(ctxKey{}, c)
	f.wg.Add(1)
	c.stopWatch = context.AfterFunc(ctx, func() {
		defer f.wg.Done()
		c.close()
	})
	return true
}

// Close refuses new connections, closes every connection's listeners and
// relays and returns when all their goroutines have ended. Safe twice.
func (f *SSHForwards) Close() {
	f.mu.Lock()
	f.closing = true
	conns := make([]*sshConn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	for _, c := range conns {
		if c.stopWatch() {
			f.wg.Done() // the watcher will never run
		}
		c.close()
	}
	f.wg.Wait()
}

// enter counts a handler running in a goroutine we did not start (a
// gliderlabs channel handler); false when the connection is closed.
// Every true is matched by leave.
func (c *sshConn) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.owner.wg.Add(1)
	return true
}

func (c *sshConn) leave() { c.owner.wg.Done() }

// goTrack runs fn in a goroutine the owner waits for; false (fn not run)
// when the connection is closed.
func (c *sshConn) goTrack(fn func()) bool {
	if !c.enter() {
		return false
	}
	go func() {
		defer c.leave()
		fn()
	}()
	return true
}

// hold registers what a relay must close when the connection ends; false
// when it already has (then the caller closes them itself).
func (c *sshConn) hold(cs ...io.Closer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	for _, x := range cs {
		c.held[x] = struct{}{}
	}
	return true
}

func (c *sshConn) release(cs ...io.Closer) {
	c.mu.Lock()
	for _, x := range cs {
		delete(c.held, x)
	}
	c.mu.Unlock()
}

// relay relays a forward's channel and conn both ways (Relay) until both
// ends are done or the SSH connection ends, which closes both. Requests
// on the channel (none are expected) are discarded by a tracked goroutine.
func (c *sshConn) relay(ch gossh.Channel, reqs <-chan *gossh.Request, conn net.Conn) {
	cc := relay.ChannelConn(ch, conn.RemoteAddr(), conn.LocalAddr())
	if !c.hold(cc, conn) {
		cc.Close()
		conn.Close()
		go gossh.DiscardRequests(reqs) // ends with the connection, which is gone
		return
	}
	defer c.release(cc, conn)
	if !c.goTrack(func() { gossh.DiscardRequests(reqs) }) {
		go gossh.DiscardRequests(reqs)
	}
	relay.Relay(cc, conn)
}
