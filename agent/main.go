package agent

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/supervisor"
)

// Main runs the agent until it is told to stop and returns the process
// exit code. It is the whole of tl-agent's life after flag parsing.
func Main(cfg Config, log zerolog.Logger, version string) int {
	pid1 := os.Getpid() == 1
	if !pid1 {
		// Orphans of our sessions reparent to us instead of escaping to
		// the host's init, so they are reaped and swept at shutdown.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Warn().Err(err).Msg("cannot become child subreaper")
		}
	}
	log.Info().Str("version", version).Int("pid", os.Getpid()).Str("sandbox_id", cfg.SandboxID).Msg("tl-agent starting")

	reaper := supervisor.NewReaper(log, true)
	stopReaper := make(chan struct{})
	go reaper.Run(stopReaper)

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	parts, stopParts := buildParts(cfg, log, reaper)
	a := New(cfg, log, version, parts)
	err := a.Run(ctx)
	stopParts()
	close(stopReaper)
	if err != nil {
		log.Error().Err(err).Msg("agent stopped")
		return 1
	}
	log.Info().Msg("tl-agent stopped")
	return 0
}
