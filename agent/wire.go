package agent

import (
	"context"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/files"
	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/internal/streams"
	"github.com/tensorlake/tl-agent/process"
	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/sftpd"
	"github.com/tensorlake/tl-agent/sshd"
	"github.com/tensorlake/tl-agent/supervisor"
	"github.com/tensorlake/tl-agent/uplink"
)

// buildParts constructs the capabilities the agent serves. Each capability
// package gets what it needs (config values, the reaper, a logger) and
// nothing of the agent's internals. The returned stop function ends them
// all at shutdown.
func buildParts(cfg Config, log zerolog.Logger, reaper *supervisor.Reaper) (Parts, func()) {
	var p Parts
	var stops []func()
	// The running clock shared by everything that counts time (docs/pty.md
	// "Pauses"): one Detector per agent, run by Agent.Run, which also
	// redials the uplink on a pause.
	pauses := pause.New(0, 0)
	p.Pause = pauses
	pctx, stopPauses := context.WithCancel(context.Background())
	gaps, unsubscribe := pauses.Subscribe()
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		defer unsubscribe()
		for {
			select {
			case <-pctx.Done():
				return
			case g := <-gaps:
				total, n := pauses.Paused()
				log.Warn().Dur("length", g.Length).Dur("paused_total", total).Int("pauses", n).
					Msg("sandbox was paused: timers count running time only")
				if p.Hooks != nil {
					p.Hooks.Run(pctx, services.PostResume)
				}
			}
		}
	}()
	stops = append(stops, func() { stopPauses(); <-logged })
	// Capabilities are added here, one block each.

	// PTY sessions.
	ptyCfg := pty.Defaults()
	ptyCfg.IdleTimeout = cfg.PTYIdleTimeout
	ptyCfg.MaxSessions = cfg.PTYMaxSessions
	ptyCfg.User = cfg.User
	ptyCfg.Pause = pauses
	ptys := pty.NewManager(ptyCfg, log, reaper)
	p.Caps = append(p.Caps, ptys)
	p.Stats.PTY = ptys.Stats
	stops = append(stops, ptys.Close)

	// SFTP: bare sftp streams from the proxy's front door, and the SSH
	// server's sftp subsystem; both run the same sftpd sessions.
	sftps := sftpd.New(sftpd.Config{User: cfg.User}, log, reaper)
	p.Streams = map[string]streams.Server{uplink.KindSFTP: sftps}
	stops = append(stops, sftps.Close)
	p.Stats.SFTP = sftps.Stats

	// SSH: uplink SSH streams, plus the optional in-sandbox listener.
	srv, err := sshd.New(sshd.Config{User: cfg.User, Listen: cfg.SSHListen, SFTP: sftps}, log, reaper)
	if err != nil {
		log.Error().Err(err).Msg("ssh server disabled")
	} else {
		if err := srv.Listen(); err != nil {
			log.Error().Err(err).Msg("ssh listener")
		}
		p.Streams[uplink.KindSSH] = srv
		p.Stats.SSH = srv.Stats
		stops = append(stops, srv.Close)
	}

	// Processes: the table also answers /api/v1/info's counts.
	pcfg := cfg.Processes
	pcfg.User = cfg.User
	pcfg.Pause = pauses
	procs := process.New(pcfg, log, reaper)
	p.Caps = append(p.Caps, procs)
	p.Procs = procs
	p.Stats.Processes = procs.Stats
	stops = append(stops, procs.Close)

	// Boot services (supervised processes of the table) and hooks, as the
	// image declares them; Main starts and stops them.
	p.Hooks = &services.Hooks{Dir: services.HooksDir, Timeout: cfg.HookTimeout, Reaper: reaper, Log: log.With().Str("component", "hooks").Logger()}
	svcs, errs := services.Load(services.Dir)
	for _, err := range errs {
		log.Error().Err(err).Msg("boot service skipped")
	}
	p.Boot = services.New(svcs, procs, log)

	// Files, owned by the sandbox user.
	p.Caps = append(p.Caps, files.New(files.Config{Owner: sandboxUser(cfg, log)}, log))

	// TCP tunnels over WebSocket.
	tunnels := forward.NewTunnels(log)
	p.Caps = append(p.Caps, tunnels)
	stops = append(stops, tunnels.Close)

	return p, func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
}
