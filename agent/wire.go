package agent

import (
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/supervisor"
)

// buildParts constructs the capabilities the agent serves. Each capability
// package gets what it needs (config values, the reaper, a logger) and
// nothing of the agent's internals. The returned stop function ends them
// all at shutdown.
func buildParts(cfg Config, log zerolog.Logger, reaper *supervisor.Reaper) (Parts, func()) {
	var p Parts
	var stops []func()
	// Capabilities are added here, one block each.

	// PTY sessions.
	ptyCfg := pty.Defaults()
	ptyCfg.IdleTimeout = cfg.PTYIdleTimeout
	ptyCfg.MaxSessions = cfg.PTYMaxSessions
	ptys := pty.NewManager(ptyCfg, log, reaper)
	p.Caps = append(p.Caps, ptys)
	stops = append(stops, ptys.Close)
	return p, func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
}
