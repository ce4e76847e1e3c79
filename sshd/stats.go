package sshd

import (
	"sync/atomic"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// channelCounts counts the channels clients opened, by type. The types
// are the server's channel handlers (a fixed set: others are rejected
// before a handler runs), so the map is built once and never written.
type channelCounts map[string]*atomic.Int64

// countChannels wraps every channel handler of g so its channels are
// counted in c, and returns c.
func countChannels(g *ssh.Server, c channelCounts) channelCounts {
	for typ, h := range g.ChannelHandlers {
		n := c[typ]
		if n == nil {
			n = new(atomic.Int64)
			c[typ] = n
		}
		g.ChannelHandlers[typ] = func(srv *ssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx ssh.Context) {
			n.Add(1)
			h(srv, conn, nc, ctx)
		}
	}
	return c
}

func (c channelCounts) snapshot() map[string]int64 {
	out := make(map[string]int64, len(c))
	for typ, n := range c {
		out[typ] = n.Load()
	}
	return out
}
