package agent

import (
	"github.com/rs/zerolog"

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
	return p, func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
}
