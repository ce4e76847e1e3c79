package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/uplink"
)

// StreamServer serves whole connections arriving over the uplink; the SSH
// server is one.
type StreamServer interface {
	ServeConn(ctx context.Context, c net.Conn, h uplink.Header)
}

// Agent serves the sandbox over the uplink.
type Agent struct {
	cfg     Config
	log     zerolog.Logger
	version string
	started time.Time

	caps  []Capability
	procs ProcessCounter
	ssh   StreamServer
	extra func() map[string]any // more status for the control socket

	apiLn  *streamListener
	api    *http.Server
	link   linkState
	wg     sync.WaitGroup // stream handlers and long-lived loops
	closed chan struct{}
}

// Parts are the capabilities the agent serves, built by Main (or a test).
type Parts struct {
	Caps   []Capability
	Procs  ProcessCounter
	SSH    StreamServer
	Status func() map[string]any
}

// New returns an agent; call Run.
func New(cfg Config, log zerolog.Logger, version string, p Parts) *Agent {
	a := &Agent{
		cfg: cfg, log: log, version: version, started: time.Now(),
		caps: p.Caps, procs: p.Procs, ssh: p.SSH, extra: p.Status,
		apiLn: newStreamListener(), closed: make(chan struct{}),
	}
	a.api = &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	return a
}

// Run serves until ctx is done, then stops taking new streams and returns
// once the API server and uplink loops have ended. Processes and sessions
// are not the agent's to end here: the supervisor's shutdown does that.
func (a *Agent) Run(ctx context.Context) error {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.serveControl(ctx)
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.api.Serve(a.apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error().Err(err).Msg("api server stopped")
		}
	}()

	var err error
	if a.cfg.Listen != "" {
		err = a.listenLoop(ctx)
	} else {
		a.dialLoop(ctx)
	}
	a.apiLn.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = a.api.Shutdown(sctx)
	cancel()
	_ = a.api.Close()
	a.wg.Wait()
	return err
}

// serveSession accepts streams on one uplink session until it ends.
func (a *Agent) serveSession(ctx context.Context, sess streamAccepter) {
	for {
		c, err := sess.Accept()
		if err != nil {
			return
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.serveStream(ctx, uplink.Wrap(c))
		}()
	}
}

type streamAccepter interface {
	Accept() (net.Conn, error)
}

// headerTimeout bounds how long a fresh stream may take to name its target.
const headerTimeout = 10 * time.Second

// serveStream reads a stream's header and hands the stream to its target.
// Every failure is answered with a reply carrying the reason, then the
// stream is closed; nothing here may panic the agent.
func (a *Agent) serveStream(ctx context.Context, c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
	h, err := uplink.ReadHeader(c)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		if !errors.Is(err, io.EOF) {
			a.log.Warn().Err(err).Msg("bad stream header")
			_ = uplink.WriteReply(c, uplink.StatusBadHeader, err.Error())
		}
		c.Close()
		return
	}
	log := a.log.With().Str("target", h.String()).Str("user", h.User).Logger()
	if err := h.Validate(); err != nil {
		log.Warn().Err(err).Msg("refused stream")
		_ = uplink.WriteReply(c, uplink.StatusBadHeader, err.Error())
		c.Close()
		return
	}
	switch h.Kind {
	case uplink.KindAPI:
		if uplink.WriteReply(c, uplink.StatusOK, "") != nil {
			c.Close()
			return
		}
		a.apiLn.push(c)
	case uplink.KindSSH, uplink.KindSFTP:
		if a.ssh == nil {
			_ = uplink.WriteReply(c, uplink.StatusUnavailable, "ssh server not enabled")
			c.Close()
			return
		}
		if uplink.WriteReply(c, uplink.StatusOK, "") != nil {
			c.Close()
			return
		}
		log.Info().Str("remote", h.Remote).Msg("ssh connection")
		a.ssh.ServeConn(ctx, c, h)
	case uplink.KindTCP, uplink.KindUnix:
		var t net.Conn
		if h.Kind == uplink.KindTCP {
			t, err = forward.DialTCP(ctx, h.Port)
		} else {
			t, err = forward.DialUnixAs(ctx, a.cfg.User, h.Path) // as the sandbox user, never root
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
		up, down := forward.Relay(c, t)
		log.Debug().Int64("bytes_in", up).Int64("bytes_out", down).Msg("relay ended")
	}
}
