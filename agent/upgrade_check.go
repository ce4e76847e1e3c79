package agent

import (
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/internal/pause"
	"github.com/tensorlake/tl-agent/process"
	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/supervisor"
	"github.com/tensorlake/tl-agent/uplink"
)

// UpgradeCheck is the pre-flight's dry run, in the new binary (`tl-agent
// upgrade-check AGENT-FLAGS...`, a child of the old agent with the state
// as fd 3): cfg parsed from the old agent's own flags, r opened in
// dry-run mode. It checks the agent section and has every part check its
// own (Restore with r.DryRun(): no fds, no reaper lookups, no side
// effect).
func UpgradeCheck(cfg Config, version string, r *handover.Reader) UpgradeCheckResult {
	res := UpgradeCheckResult{Version: version, Protocol: uplink.Version, Sections: r.Sections(), Pids: len(r.Pids())}
	if err := checkState(cfg, r); err != nil {
		res.Error = err.Error()
		return res
	}
	res.OK = true
	return res
}

func checkState(cfg Config, r *handover.Reader) error {
	if !r.DryRun() {
		return errors.New("the check reads the state in dry-run mode only")
	}
	var sec agentSection
	ok, err := r.Section("agent", &sec)
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("the state has no agent section")
	}
	if err := checkAgentSection(sec, r); err != nil {
		return err
	}
	if _, err := r.File(sec.OldBinary); err != nil {
		return err
	}
	if sec.Listener != nil {
		if cfg.Listen == "" {
			return errors.New("the state keeps an uplink listener, the flags name none (--listen)")
		}
		if _, err := r.File(*sec.Listener); err != nil {
			return err
		}
	}
	log := zerolog.Nop()
	reaper := supervisor.NewReaper(log, false) // never run: a dry run looks nothing up
	parts, err := checkParts(cfg, sandboxUser(cfg, log), log, reaper)
	if err != nil {
		return err
	}
	for _, p := range parts {
		if err := p.Restore(r, reaper); err != nil {
			return fmt.Errorf("%T: %w", p, err)
		}
	}
	return nil
}

// checkParts builds the parts that hand state over, as buildParts does
// (same configs), without anything that serves or binds: only their
// Restore runs, in dry-run mode.
func checkParts(cfg Config, u *identity.User, log zerolog.Logger, reaper *supervisor.Reaper) ([]handoverPart, error) {
	pauses := pause.New(0, 0)
	var p Parts
	ptyCfg := cfg.PTY
	ptyCfg.User, ptyCfg.Pause = u, pauses
	ptys, err := pty.NewManager(ptyCfg, log, reaper)
	if err != nil {
		return nil, err
	}
	pcfg := cfg.Processes
	pcfg.User, pcfg.Pause = u, pauses
	procs, err := process.New(pcfg, log, reaper)
	if err != nil {
		return nil, err
	}
	svcs, _ := services.Load(services.Dir)
	p.Caps = []Capability{ptys, procs}
	p.Boot = services.New(svcs, procs, log)
	return handoverParts(p), nil
}
