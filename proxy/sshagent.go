package proxy

import (
	"errors"
	"strings"
	"sync"

	gossh "golang.org/x/crypto/ssh"
)

// agentLink is a user connection's SSH connection to the sandbox, made on
// first need. On the default route that is the agent's SSH server, which
// only some channels need: a shell, exec, agent forwarding, a forward the
// proxy cannot serve with a plain uplink stream, or a global request such
// as tcpip-forward. sftp sessions and -L/-D to the sandbox's loopback take
// uplink streams of their own (sshsession.go, takeChannel), so a
// connection that only does those never costs the agent a handshake or
// one of its SSH connection slots. A port route's link is made at
// authentication, as its refusals must reach the user then.
type agentLink struct {
	dial func() (sshEnd, error)

	mu     sync.Mutex
	end    sshEnd       // guarded by mu; conn nil until dialled
	err    error        // guarded by mu; the dial's failure, kept: no redial
	closed bool         // guarded by mu; the user's connection ended
	up     func(sshEnd) // guarded by mu; starts the relays of the agent's side
}

func lazyAgent(dial func() (sshEnd, error)) *agentLink { return &agentLink{dial: dial} }

func dialledAgent(end sshEnd) *agentLink { return &agentLink{end: end} }

// errUserGone is get's error once the user's connection ended.
var errUserGone = errors.New("connection closing")

// get returns the connection, dialling it the first time. One dial at a
// time: later channels wait for the first one's outcome.
func (l *agentLink) get() (gossh.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.end.conn != nil:
		return l.end.conn, nil
	case l.err != nil:
		return nil, l.err
	case l.closed:
		return nil, errUserGone
	}
	end, err := l.dial()
	if err != nil {
		l.err = err
		return nil, err
	}
	l.end = end
	if l.up != nil {
		l.up(end)
	}
	return end.conn, nil
}

// start registers what runs once the connection exists (at once if it
// already does).
func (l *agentLink) start(up func(sshEnd)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.up = up
	if l.end.conn != nil {
		up(l.end)
	}
}

// forRequest is the target of a user's global request: the agent's
// connection, dialled if need be, except for requests the agent's server
// answers with a failure anyway (keepalives), which get that answer here
// while there is no connection. nil: answer failure.
func (l *agentLink) forRequest(req *gossh.Request) gossh.Conn {
	l.mu.Lock()
	c := l.end.conn
	l.mu.Unlock()
	if c != nil {
		return c
	}
	switch req.Type {
	case "keepalive@openssh.com", "no-more-sessions@openssh.com":
		return nil
	}
	c, err := l.get()
	if err != nil {
		return nil
	}
	return c
}

// close ends the connection, if made, and refuses later dials.
func (l *agentLink) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.end.conn != nil {
		l.end.conn.Close()
	}
}

// refusalText is what a channel refusal says of a failed dial: the
// banner's message without the proxy's prefix (the channel adds its own).
func refusalText(err error) string {
	var be *gossh.BannerError
	if errors.As(err, &be) {
		return strings.TrimSpace(strings.TrimPrefix(be.Message, "tl-proxy: "))
	}
	return err.Error()
}
