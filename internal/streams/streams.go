// Package streams is what a capability serving whole connections from the
// uplink sees: the connection, and who the proxy says is on the other end.
// The wire header (package uplink) stays with the agent, which reads it,
// answers it and picks the server by the stream's kind; capabilities do
// not import uplink.
package streams

import (
	"context"
	"net"

	"github.com/rs/zerolog"
)

// Peer describes the far end of a stream, as the proxy reported it. Every
// field is for logs only: the uplink is trusted, and the proxy has
// already authenticated the user.
type Peer struct {
	User   string // who the proxy authenticated: an SSH key's comment
	Remote string // the user's address as the proxy saw it
	// ExitTrailer: the peer wants the server's exit after its output, in
	// the stream's own framing (sftp: internal/sftpframe).
	ExitTrailer bool
	// RequestID and TraceID name the user's connection in both the
	// proxy's and the agent's logs (internal/reqid); empty from a proxy
	// that predates them.
	RequestID string
	TraceID   string
}

// Log is base with the peer's fields: every event of the connection
// carries who, from where, and its request ids when the proxy sent them.
func (p Peer) Log(base zerolog.Logger) zerolog.Logger {
	return p.LogIDs(base.With().Str("user", p.User).Str("remote", p.Remote).Logger())
}

// LogIDs is base with the peer's request ids, those it has.
func (p Peer) LogIDs(base zerolog.Logger) zerolog.Logger {
	if p.RequestID == "" && p.TraceID == "" {
		return base
	}
	c := base.With()
	if p.RequestID != "" {
		c = c.Str("request_id", p.RequestID)
	}
	if p.TraceID != "" {
		c = c.Str("trace_id", p.TraceID)
	}
	return c.Logger()
}

type peerKey struct{}

// SetPeer keeps p in a connection's mutable context (gliderlabs'
// ssh.Context), so the code that serves its channels logs its ids too.
func SetPeer(ctx interface{ SetValue(key, value any) }, p Peer) {
	ctx.SetValue(peerKey{}, p)
}

// PeerFrom is the Peer SetPeer kept in ctx.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// Server serves whole connections of one stream kind (ssh, sftp).
// ServeConn owns c, closes it, and returns when it is done with it; ctx
// ends at shutdown. The agent accepts the stream (answers the proxy's
// header) at the server's first read or write of c, so an error returned
// before either refuses the stream, and its text is the reason the proxy
// reports to the user (over a cap, shutting down, a session that could
// not start). Later errors are only logged.
type Server interface {
	ServeConn(ctx context.Context, c net.Conn, p Peer) error
}
