package agent

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Main runs the agent until it is told to stop and returns the process
// exit code. It is the whole of tl-agent's life after flag parsing:
//
//  1. catch every signal (nothing may kill PID 1 while it starts), mark
//     inherited fds close-on-exec and reserve OS threads;
//  2. as PID 1, mount the API file systems the runtime did not;
//  3. start the reaper, the one owner of waiting;
//  4. provision tl-user and the host name, before any capability serves;
//  5. serve, and start the main command if one was given;
//  6. on SIGTERM/SIGINT, or the main command's exit with --exit-with-main,
//     stop taking work, sweep every process in two phases (graceful:
//     SIGHUP to terminals, SIGTERM, the grace; hard: SIGKILL), close the
//     capabilities, exit.
//
// Exit codes: 0 after a shutdown by signal; the main command's code (128+
// signal when killed) when its exit ended the sandbox; 127 when that main
// command could not start; 1 when the uplink could not run; 2 when a
// capability refuses its config (bad flags are refused before Main).
func Main(cfg Config, log zerolog.Logger, version string) int {
	sigs := supervisor.HandleSignals(log)
	defer sigs.Stop()
	rs := restoreStart(log) // nil: a normal start, not a live upgrade's
	// First on a normal start: the uplink's dial and handshake (round
	// trips to the proxy) run beside everything up to Run, which serves
	// the link. A restore dials with the handed-over identity (Run).
	var early *EarlyUplink
	if rs == nil {
		early = DialEarly(cfg, version)
	}
	startupHygiene(log, early)
	pid1 := os.Getpid() == 1
	if !pid1 {
		// Orphans of our sessions reparent to us instead of escaping to
		// the host's init, so they are reaped and swept at shutdown.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			log.Warn().Err(err).Msg("cannot become child subreaper")
		}
	}
	log.Info().Str("version", version).Int("pid", os.Getpid()).Str("sandbox_id", cfg.SandboxID).Msg("tl-agent starting")
	if pid1 && cfg.Mount {
		_, _ = supervisor.Mount(log) // failures are logged; serve what we can
	}

	if cfg.Incubator == "go" {
		launch.KeepGoIncubator("--incubator go")
	}
	reaper := supervisor.NewReaper(log, true)
	// Before any user process starts: every start applies it.
	head := supervisor.SetupHeadroom(log, pid1)
	if f := head.WorkloadOOMFile(); f != "" {
		reaper.OOM().AddFile(f)
	}
	// Until reaper.Close, the last step of the shutdown. A restore adopts
	// the predecessor's children first and runs it once restored, so a
	// rollback loses no exit.
	runReaper := sync.OnceFunc(func() { go reaper.Run(nil) })
	if rs != nil {
		rs.begin(&cfg, reaper)
	} else {
		runReaper()
	}
	if cfg.Provision {
		provision(cfg, log)
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	user := sandboxUser(cfg, log)
	parts, stopParts, err := buildParts(cfg, user, log, reaper)
	if err != nil {
		// Validate has checked every field a flag sets: this is a Config
		// built by hand that a capability refuses.
		log.Error().Err(err).Msg("agent not started")
		reaper.Close()
		return 2
	}
	parts.Stats.Reaper = reaperStats(reaper)
	parts.Stats.Headroom = head.Status
	parts.Headroom = head
	parts.Uplink = early
	parts.Stats.Cgroup = cgroupStats(reaper)
	a := New(cfg, log, version, parts)
	a.upg.wire(reaper, sigs, parts, log)
	var mainProc *supervisor.Proc
	if rs != nil {
		mainProc = rs.apply(a, reaper)
	}
	runReaper()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()

	bootCtx, stopBoot := context.WithCancel(context.Background())
	booted := make(chan struct{})
	go func() {
		defer close(booted)
		if rs != nil {
			return // the services restored their state; boot hooks ran once already
		}
		parts.Hooks.Run(bootCtx, services.OnBoot)
		if bootCtx.Err() == nil {
			parts.Boot.Start()
		}
	}()
	mainExit, mainProc := startMain(cfg, user, log, reaper, sigs, mainProc)
	a.upg.setMain(mainProc)
	go func() {
		<-booted
		a.upg.markReady()
	}()
	code := 0
	select {
	case sig := <-sigs.Shutdown():
		cancel(errors.New("signal " + unix.SignalName(sig.(syscall.Signal))))
	case code = <-mainExit:
		cancel(errors.New("main command exited"))
	case err = <-runErr:
		runErr <- err
		cancel(errors.New("agent stopped"))
		if err != nil {
			code = 1
		}
	}
	log.Info().Str("reason", context.Cause(ctx).Error()).Msg("shutting down")
	// One grace for everything: pre-shutdown hooks, then the boot
	// services in reverse order, then the sweep of every process (they get
	// their signals while the API winds down). The capabilities' Close
	// (stopParts) runs no grace of its own.
	deadline := time.Now().Add(cfg.ShutdownGrace)
	stopBoot()
	<-booted
	hookCtx, hookDone := context.WithDeadline(context.Background(), deadline)
	parts.Hooks.Run(hookCtx, services.PreShutdown)
	hookDone()
	parts.Boot.Stop(deadline)
	res := supervisor.Sweep(reaper, max(time.Until(deadline), 0), pid1, log)
	err = <-runErr
	stopParts()
	// Last: the capabilities' Close may still wait on their processes.
	reaper.Close()
	if err != nil {
		log.Error().Err(err).Msg("agent stopped")
	}
	log.Info().Int("exit_code", code).Int("hung_up", res.HungUp).Int("terminated", res.Termed).Int("killed", res.Killed).
		Dur("took", res.Took).Msg("tl-agent stopped")
	if pid1 {
		// The init of a VM must not exit: the kernel panics. Power off.
		supervisor.PowerOffIfVM(log)
	}
	return code
}

// provision prepares the sandbox user and host name. A failure (read-only
// root, no /etc) is logged and the agent serves what it can.
func provision(cfg Config, log zerolog.Logger) {
	res, err := supervisor.Provision("/", supervisor.ProvisionOptions{
		User: cfg.User, UID: cfg.UID, GID: cfg.GID, Hostname: cfg.Hostname,
	}, log)
	ev := log.Info()
	if err != nil {
		ev = log.Error().Err(err)
	}
	ev.Str("user", res.User).Int("uid", res.UID).Int("gid", res.GID).Strs("changed", res.Changed).Msg("provisioned")
}

// startMain starts the main command, if any. The returned channel gets
// its exit code when that exit should end the sandbox (--exit-with-main);
// without a main command nothing is ever sent.
func startMain(cfg Config, u *identity.User, log zerolog.Logger, r *supervisor.Reaper, sigs *supervisor.Signals, adopted *supervisor.Proc) (<-chan int, *supervisor.Proc) {
	end := make(chan int, 1)
	if len(cfg.Main) == 0 {
		return end, nil
	}
	log = log.With().Strs("main", cfg.Main).Logger()
	fail := func(err error) (<-chan int, *supervisor.Proc) {
		log.Error().Err(err).Bool("exit_with_main", cfg.ExitWithMain).Msg("main command not started")
		if cfg.ExitWithMain {
			end <- supervisor.ExitNotRunnable
		}
		return end, nil
	}
	p := adopted // a live upgrade's: the predecessor started it, the watch is re-armed
	if p == nil {
		var err error
		if p, err = supervisor.StartMain(r, cfg.Main, u); err != nil {
			return fail(err)
		}
		log.Info().Int("pid", p.Pid).Str("user", u.Name).Msg("main command started")
	}
	sigs.ForwardTo(p)
	go func() {
		e := p.Wait()
		sigs.ForwardTo(nil)
		log.Info().Str("exit", e.String()).Int("exit_code", e.ExitCode()).Bool("exit_with_main", cfg.ExitWithMain).
			Msg("main command exited")
		if cfg.ExitWithMain {
			end <- e.ExitCode()
		}
	}()
	return end, p
}

// reaperStats are the reaper's counts in the operator's status.
func reaperStats(r *supervisor.Reaper) func() ReaperStats {
	return func() ReaperStats {
		live, started, orphans := r.Stats()
		return ReaperStats{Live: int64(live), Started: started, OrphansReaped: orphans, Reaped: started - int64(live)}
	}
}

// cgroupStats are the sandbox cgroup's figures and the reaper's OOM kill
// count (the one OOM counter), nil without a cgroup file system.
func cgroupStats(r *supervisor.Reaper) func() CgroupStatus {
	cg := supervisor.NewCgroupReader()
	if cg == nil {
		return nil
	}
	return func() CgroupStatus { return CgroupStatus{CgroupStats: cg.Read(), OOMKills: r.OOM().Count()} }
}
