package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/files"
	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/activity"
	"github.com/tensorlake/tl-agent/internal/memtrim"
	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/internal/relay"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/supervisor"
	"github.com/tensorlake/tl-agent/uplink"
)

// Agent serves the sandbox over the uplink.
type Agent struct {
	cfg     Config
	log     zerolog.Logger
	version string
	started time.Time

	caps    []Capability
	procs   ProcessCounter
	boot    *services.Manager
	hooks   *services.Hooks
	streams map[string]streamHandler // by stream kind: the one dispatch (streams.go)
	stats   StatSources              // the parts' counters in the operator's status
	user    *identity.User           // the sandbox user (Parts.User)
	met     *agentMetrics            // the metrics registry, read from Status (metrics.go)

	apiLn  *streamListener
	api    *http.Server
	link   linkState
	wg     sync.WaitGroup // stream handlers and long-lived loops
	closed chan struct{}

	// pause is the agent's one pause detector, started by Run; every part
	// that counts time shares it (Parts.Pause). The uplink redials when it
	// reports a gap.
	pause   *pause.Detector
	secrets linkSecrets  // link secrets to resume with, newest first
	early   *EarlyUplink // the first link, dialed during the start (Parts.Uplink)
	liveMu  sync.Mutex
	live    *yamux.Session // the live uplink session (listen mode keeps one)
	kicked  *yamux.Session // the session kickLink ended, to redial at once

	// The lifecycle (lifecycle.go): its state, the gate on new work, who
	// the agent registers as, the activity clock, the workload's freezer
	// and the seams around the wall clock and the random pool.
	life     *lifecycle
	gate     gate
	ident    sandboxIdentity
	activity *activity.Recorder
	headroom *supervisor.Headroom
	clock    clockSetter
	seed     func([]byte) error

	upg *upgrader // the live upgrade (upgrade*.go)
}

// Parts are the capabilities the agent serves, built by Main (or a test).
type Parts struct {
	Caps  []Capability
	Procs ProcessCounter
	// Streams are the capabilities that serve whole uplink streams, by
	// stream kind (uplink.KindSSH, uplink.KindSFTP). A kind without a
	// server is refused as not enabled.
	Streams map[string]streams.Server
	Stats   StatSources
	// Pause is the detector the parts count time with; nil: New makes one.
	// Agent.Run runs it.
	Pause *pause.Detector
	// Boot is the image's boot services and Hooks its hooks (package
	// services); Main starts and stops them. Nil in tests that need none.
	Boot  *services.Manager
	Hooks *services.Hooks
	// User is the sandbox user, resolved once after provisioning: unix
	// socket streams are dialled as it (nil: refused).
	User *identity.User
	// Headroom holds the workload cgroup a prepare may freeze (nil: none).
	Headroom *supervisor.Headroom
	// Uplink is the first uplink, dialed while the agent started
	// (DialEarly); nil: Run dials.
	Uplink *EarlyUplink
	// Activity is the recorder of last use; nil: New makes one.
	Activity *activity.Recorder
}

// New returns an agent; call Run.
func New(cfg Config, log zerolog.Logger, version string, p Parts) *Agent {
	a := &Agent{
		cfg: cfg, log: log, version: version, started: time.Now(),
		caps: p.Caps, procs: p.Procs, stats: p.Stats, user: p.User, boot: p.Boot, hooks: p.Hooks,
		apiLn: newStreamListener(), closed: make(chan struct{}), pause: p.Pause,
		life: newLifecycle(), upg: newUpgrader(), activity: p.Activity, headroom: p.Headroom, early: p.Uplink, clock: realClock{}, seed: writeURandom,
	}
	a.ident.id, a.ident.token = cfg.SandboxID, cfg.Token
	if a.pause == nil {
		a.pause = pause.New(0, 0)
	}
	if a.activity == nil {
		a.activity = &activity.Recorder{}
	}
	a.streams = a.streamHandlers(p.Streams)
	a.met = newAgentMetrics(a)
	a.api = &http.Server{
		Handler:           a.withRequestIDs(a.apiDoor(a.met.instrumentAPI(a.routes()))),
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
		ConnState:         shrinkIdle,
		// An upload over the uplink is written from the stream's chunks
		// (files/upload.go): the handler needs the stream.
		ConnContext: files.WithConn,
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
		a.pause.Run(ctx)
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.serveControl(ctx)
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		memtrim.New().Run(ctx) // RSS back down after a burst (docs/uplink.md)
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

// serveSession accepts streams on one uplink session until it ends. Streams
// beyond the caps (Config.MaxStreams in all, MaxAPIStreams of kind api)
// are answered StatusUnavailable with the reason and closed.
func (a *Agent) serveSession(ctx context.Context, sess streamAccepter) {
	var lim streamLimits
	lim.max, lim.maxAPI = int64(a.cfg.MaxStreams), int64(a.cfg.MaxAPIStreams)
	for {
		c, err := sess.Accept()
		if err != nil {
			return
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if lim.all.Add(1) > lim.max && lim.max > 0 {
				lim.all.Add(-1)
				a.refuseStream(c, fmt.Sprintf("too many concurrent streams on this uplink (max %d)", lim.max))
				return
			}
			cc := &countedConn{Conn: uplink.Wrap(c)}
			cc.release = append(cc.release, func() { lim.all.Add(-1) })
			defer cc.done()
			a.serveStream(ctx, cc, &lim)
		}()
	}
}

// streamLimits counts one session's live streams.
type streamLimits struct {
	all, api    atomic.Int64
	max, maxAPI int64
}

// refuseStream answers a stream over a cap without reading its header (the
// reply is all the proxy waits for).
func (a *Agent) refuseStream(c net.Conn, why string) {
	a.log.Warn().Msg("refused stream: " + why)
	_ = c.SetWriteDeadline(time.Now().Add(headerTimeout))
	_ = uplink.WriteReply(c, uplink.StatusUnavailable, why)
	c.Close()
}

// shrinkIdle frees an API stream's receive buffer when its HTTP connection
// goes idle between requests: yamux keeps a stream's buffer at the size
// a burst grew it to (up to the 4 MiB window) for as long as the stream
// lives, and the proxy keeps up to 32 idle streams pooled.
func shrinkIdle(c net.Conn, st http.ConnState) {
	if st != http.StateIdle {
		return
	}
	if s, ok := c.(interface{ Shrink() }); ok {
		s.Shrink()
	}
}

// Shrink passes yamux's Shrink through (shrinkIdle).
func (c *countedConn) Shrink() {
	if s, ok := c.Conn.(interface{ Shrink() }); ok {
		s.Shrink()
	}
}

// countedConn runs its release functions once, at Close or when its
// handler is done with it without handing it on (done).
type countedConn struct {
	net.Conn
	once    sync.Once
	release []func()
	handed  atomic.Bool   // the API server owns it now: only Close releases
	kind    *kindCounters // its kind's counters, once the header named it
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if k := c.kind; k != nil && n > 0 {
		k.in.Add(int64(n))
	}
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if k := c.kind; k != nil && n > 0 {
		k.out.Add(int64(n))
	}
	return n, err
}

// ReadFrom passes the stream's own ReadFrom through (a download's
// splice, uplink.Stream.ReadFrom), counted as writes are.
func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	n, err := relay.ReadFromThrough(c.Conn, r)
	if k := c.kind; k != nil && n > 0 {
		k.out.Add(n)
	}
	return n, err
}

// ReadChunks passes the stream's ReadChunks through (an upload written
// from its chunks, files.ChunkReader), counted as reads are.
func (c *countedConn) ReadChunks(n int64, write func([]byte) error) (int64, error) {
	cr, ok := c.Conn.(files.ChunkReader)
	if !ok {
		return 0, errors.New("agent: not an uplink stream")
	}
	m, err := cr.ReadChunks(n, write)
	if k := c.kind; k != nil && m > 0 {
		k.in.Add(m)
	}
	return m, err
}

// SinkTo passes the stream's SinkTo through (internal/relay), counted
// as reads are.
func (c *countedConn) SinkTo(w io.Writer, try func([]byte) int, buf []byte) (int64, error) {
	n, sunk, err := relay.SinkThrough(c.Conn, c, w, try, buf)
	if k := c.kind; k != nil && sunk && n > 0 {
		k.in.Add(n)
	}
	return n, err
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		for _, f := range c.release {
			f()
		}
	})
	return err
}

func (c *countedConn) done() {
	if !c.handed.Load() {
		_ = c.Close()
	}
}

// CloseWrite passes the half-close relays use through to the stream.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

type streamAccepter interface {
	Accept() (net.Conn, error)
}

// headerTimeout bounds how long a fresh stream may take to name its target.
const headerTimeout = 10 * time.Second

// serveStream reads a stream's header and hands the stream to its target.
// Every failure is answered with a reply carrying the reason, then the
// stream is closed; nothing here may panic the agent.
func (a *Agent) serveStream(ctx context.Context, c *countedConn, lim *streamLimits) {
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
	// A stream that serves one user connection names it (validated
	// above): every event of the stream carries its ids.
	log = streams.Peer{RequestID: h.RequestID, TraceID: h.TraceID}.LogIDs(log)
	serve, ok := a.streams[h.Kind]
	if !ok {
		why := h.Kind + " server not enabled"
		log.Warn().Msg("refused stream: " + why)
		_ = uplink.WriteReply(c, uplink.StatusUnavailable, why)
		c.Close()
		return
	}
	if !a.gateStream(ctx, c, h, log) {
		return
	}
	k := a.met.streams.opened(h.Kind)
	c.kind = k
	c.release = append(c.release, func() { k.open.Add(-1) })
	serve(ctx, c, h, lim, log)
}
