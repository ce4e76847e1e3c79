package agent

import (
	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/sshd"
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

	// SSH: uplink SSH streams, plus the optional in-sandbox listener.
	if srv, err := sshd.New(sshd.Config{User: cfg.User, Listen: cfg.SSHListen}, log, reaper); err != nil {
		log.Error().Err(err).Msg("ssh server disabled")
	} else {
		if err := srv.Listen(); err != nil {
			log.Error().Err(err).Msg("ssh listener")
		}
		p.SSH = srv
		stops = append(stops, srv.Close)
	}
	return p, func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
}
