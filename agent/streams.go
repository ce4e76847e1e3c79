package agent

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/internal/relay"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/uplink"
)

// streamHandler answers a validated stream header (the reply the proxy
// waits for) and serves the stream. It owns c: every path closes it.
type streamHandler func(ctx context.Context, c *countedConn, h uplink.Header, lim *streamLimits, log zerolog.Logger)

// streamHandlers is the one map from stream kind to what serves it: the
// agent's own kinds (api, tcp, unix, metrics) and the capabilities' stream servers
// (ssh, sftp), which get the connection and a streams.Peer, never the
// wire header. A capability may not take over an agent kind.
func (a *Agent) streamHandlers(servers map[string]streams.Server) map[string]streamHandler {
	m := map[string]streamHandler{
		uplink.KindAPI:       a.serveAPI,
		uplink.KindTCP:       a.serveDial,
		uplink.KindUnix:      a.serveDial,
		uplink.KindMetrics:   a.serveMetrics,
		uplink.KindLifecycle: a.serveLifecycle,
	}
	for kind, srv := range servers {
		if _, taken := m[kind]; taken || srv == nil {
			continue
		}
		m[kind] = serveWhole(srv)
	}
	return m
}

// serveAPI hands the stream to the API server, within the session's cap
// on API streams (Config.MaxAPIStreams).
func (a *Agent) serveAPI(_ context.Context, c *countedConn, _ uplink.Header, lim *streamLimits, log zerolog.Logger) {
	if lim.api.Add(1) > lim.maxAPI && lim.maxAPI > 0 {
		lim.api.Add(-1)
		why := fmt.Sprintf("too many concurrent API streams on this uplink (max %d)", lim.maxAPI)
		log.Warn().Msg("refused stream: " + why)
		_ = uplink.WriteReply(c, uplink.StatusUnavailable, why)
		c.Close()
		return
	}
	c.release = append(c.release, func() { lim.api.Add(-1) })
	if uplink.WriteReply(c, uplink.StatusOK, "") != nil {
		c.Close()
		return
	}
	c.handed.Store(true)
	a.apiLn.push(c)
}

// serveDial relays the stream to a TCP port on the sandbox's loopback or
// to a unix socket (dialled as the sandbox user, never root).
func (a *Agent) serveDial(ctx context.Context, c *countedConn, h uplink.Header, _ *streamLimits, log zerolog.Logger) {
	var t net.Conn
	var err error
	if h.Kind == uplink.KindTCP {
		t, err = forward.DialTCP(ctx, h.Port)
	} else {
		t, err = forward.DialUnixAs(ctx, a.user, h.Path)
	}
	if err != nil {
		log.Debug().Err(err).Msg("target unreachable")
		_ = uplink.WriteReply(c, uplink.StatusUnreachable, err.Error())
		c.Close()
		return
	}
	if uplink.WriteReply(c, uplink.StatusOK, "") != nil {
		c.Close()
		t.Close()
		return
	}
	up, down := relay.Relay(c, t)
	log.Debug().Int64("bytes_in", up).Int64("bytes_out", down).Msg("relay ended")
}

// serveWhole gives the stream to a capability's server, which accepts it
// by using it (acceptingConn) or refuses it with the error it returns
// first.
func serveWhole(srv streams.Server) streamHandler {
	return func(ctx context.Context, c *countedConn, h uplink.Header, _ *streamLimits, log zerolog.Logger) {
		log.Info().Str("remote", h.Remote).Msg("stream to " + h.Kind)
		ac := &acceptingConn{countedConn: c}
		err := srv.ServeConn(ctx, ac, streams.Peer{User: h.User, Remote: h.Remote, RequestID: h.RequestID, TraceID: h.TraceID, ExitTrailer: h.ExitTrailer})
		switch {
		case err != nil && !ac.used.Load():
			log.Warn().Err(err).Msg("refused stream")
			_ = uplink.WriteReply(c, uplink.StatusUnavailable, err.Error())
		case err != nil:
			log.Info().Err(err).Msg("stream ended")
		}
		c.Close()
	}
}

// acceptingConn answers the stream's header with OK just before the
// server's first read, write or half-close, so that a server that fails
// before touching the stream can still refuse it with its reason; the
// proxy waits for the answer (its reply timeout bounds the wait).
type acceptingConn struct {
	*countedConn
	once sync.Once
	used atomic.Bool
	err  error // the OK reply's write error
}

func (c *acceptingConn) accept() error {
	c.once.Do(func() {
		c.used.Store(true)
		c.err = uplink.WriteReply(c.countedConn, uplink.StatusOK, "")
	})
	return c.err
}

func (c *acceptingConn) Read(b []byte) (int, error) {
	if err := c.accept(); err != nil {
		return 0, err
	}
	return c.countedConn.Read(b)
}

func (c *acceptingConn) Write(b []byte) (int, error) {
	if err := c.accept(); err != nil {
		return 0, err
	}
	return c.countedConn.Write(b)
}

// Close before any use leaves the stream to serveWhole, which answers the
// header with the server's refusal first.
func (c *acceptingConn) Close() error {
	if !c.used.Load() {
		return nil
	}
	return c.countedConn.Close()
}

func (c *acceptingConn) CloseWrite() error {
	if err := c.accept(); err != nil {
		return err
	}
	return c.countedConn.CloseWrite()
}
