package agent

import (
	"context"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/files"
	"github.com/tensorlake/tl-agent/forward"
	"github.com/tensorlake/tl-agent/identity"
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
// package gets what it needs (config values, the sandbox user u resolved
// once after provisioning, the reaper, a logger) and nothing of the
// agent's internals. The returned stop function ends them all at shutdown;
// on an error (a config the capability refuses) what was built is stopped.
func buildParts(cfg Config, u *identity.User, log zerolog.Logger, reaper *supervisor.Reaper) (Parts, func(), error) {
	p := Parts{User: u}
	var stops []func()
	stopAll := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	fail := func(err error) (Parts, func(), error) {
		stopAll()
		return Parts{}, nil, err
	}
	// The image's hooks (package services): post-resume runs on each pause.
	p.Hooks = &services.Hooks{Dir: services.HooksDir, Timeout: cfg.HookTimeout, Reaper: reaper, Log: log.With().Str("component", "hooks").Logger()}
	pauses, stopPauses := logPauses(log, func(ctx context.Context) { p.Hooks.Run(ctx, services.PostResume) })
	p.Pause = pauses
	stops = append(stops, stopPauses)
	// Capabilities are added here, one block each.

	// PTY sessions.
	ptyCfg := cfg.PTY
	ptyCfg.User = u
	ptyCfg.Pause = pauses
	ptys, err := pty.NewManager(ptyCfg, log, reaper)
	if err != nil {
		return fail(err)
	}
	p.Caps = append(p.Caps, ptys)
	p.Stats.PTY = ptys.Stats
	stops = append(stops, ptys.Close)

	// SFTP: bare sftp streams from the proxy's front door, and the SSH
	// server's sftp subsystem; both run the same sftpd sessions.
	sftps, err := sftpd.New(sftpd.Config{User: u}, log, reaper)
	if err != nil {
		return fail(err)
	}
	p.Streams = map[string]streams.Server{uplink.KindSFTP: sftps}
	stops = append(stops, sftps.Close)
	p.Stats.SFTP = sftps.Stats

	// SSH: uplink SSH streams, plus the optional in-sandbox listener.
	sshCfg := cfg.SSH
	sshCfg.User, sshCfg.SFTP = u, sftps
	if srv, err := sshd.New(sshCfg, log, reaper); err != nil {
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
	pcfg.User = u
	pcfg.Pause = pauses
	procs, err := process.New(pcfg, log, reaper)
	if err != nil {
		return fail(err)
	}
	p.Caps = append(p.Caps, procs)
	p.Procs = procs
	p.Stats.Processes = procs.Stats
	stops = append(stops, procs.Close)

	// Boot services: supervised processes of the table, as the image
	// declares them; Main starts and stops them.
	svcs, errs := services.Load(services.Dir)
	for _, err := range errs {
		log.Error().Err(err).Msg("boot service skipped")
	}
	p.Boot = services.New(svcs, procs, log)

	// Files, owned by the sandbox user.
	fs, err := files.New(files.Config{Owner: u}, log)
	if err != nil {
		return fail(err)
	}
	p.Caps = append(p.Caps, fs)

	// TCP tunnels over WebSocket.
	tunnels := forward.NewTunnels(log)
	p.Caps = append(p.Caps, tunnels)
	stops = append(stops, tunnels.Close)
	return p, stopAll, nil
}

// logPauses makes the running clock shared by everything that counts time
// (docs/pty.md "Pauses"): one Detector per agent, run by Agent.Run, which
// also redials the uplink on a pause. Each pause is logged, and onPause
// run (the post-resume hooks), until stop.
func logPauses(log zerolog.Logger, onPause func(context.Context)) (*pause.Detector, func()) {
	pauses := pause.New(0, 0)
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
				onPause(pctx)
			}
		}
	}()
	return pauses, func() { stopPauses(); <-logged }
}
