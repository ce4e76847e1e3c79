// Command tl-agent is the agent that runs as the first process of every
// sandbox: init, provisioning, and the server of everything users do with
// the sandbox over one uplink to the sandbox proxy.
//
//	tl-agent [flags] [-- main command...]   run the agent
//	tl-agent status [--json|--check]         ask a running agent (control socket)
//	tl-agent log-level [LEVEL]               print or set a running agent's log level
//	tl-agent metrics [--socket P]            its metrics, Prometheus text format
//	tl-agent lifecycle OP [--socket P] [JSON] prepare, resume or status (docs/lifecycle.md)
//	tl-agent upgrade PATH [--sha256 SUM]     live upgrade of the running agent (docs/upgrade.md)
//	tl-agent provision [--root DIR]          create tl-user and host name files, then exit
//	tl-agent version                         print the version
//
// Every flag has an environment variable twin; see `tl-agent --help`.
//
// Exit codes: 0 after an orderly shutdown; 1 when the agent could not run;
// 2 for bad flags; with --exit-with-main, the main command's exit code
// (128+signal when it was killed by a signal, 127 when it could not start).
// See docs/supervisor.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/tensorlake/tl-agent/agent"
	"github.com/tensorlake/tl-agent/internal/cli"
	"github.com/tensorlake/tl-agent/internal/logx"
	"github.com/tensorlake/tl-agent/sftpd"
)

// version is stamped at build time: -ldflags "-X main.version=...".
var version = "dev"

const usage = `tl-agent: the sandbox agent (init, provisioning, uplink server).

Usage:
  tl-agent [flags] [-- command args...]   run as the sandbox's first process
  tl-agent status [--json] [--socket P]   print a running agent's state
  tl-agent status --check                 exit 0 only while the uplink is up
  tl-agent log-level [--socket P] [LEVEL] print, or set without a restart, the log level
  tl-agent metrics [--socket P]           print a running agent's metrics (Prometheus text)
  tl-agent lifecycle prepare|resume|status [--socket P] [JSON]
                                          a platform call on a running agent (docs/lifecycle.md)
  tl-agent upgrade PATH [--sha256 SUM] [--socket P]
                                          replace the running agent in place (docs/upgrade.md)
  tl-agent provision [--root DIR]         provision tl-user and the host name, then exit
  tl-agent version                        print the version`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "status":
			return statusCmd(args[1:])
		case "log-level":
			return logLevelCmd(args[1:], os.Stdout, os.Stderr)
		case "metrics":
			return metricsCmd(args[1:])
		case "provision":
			return provisionCmd(args[1:])
		case "lifecycle":
			return lifecycleCmd(args[1:])
		case "upgrade":
			return upgradeCmd(args[1:])
		case "upgrade-check":
			// Hidden: a live upgrade's pre-flight, run by the old agent.
			return upgradeCheckCmd(args[1:])
		case sftpd.Subcommand:
			// Hidden: the SFTP subsystem, started by the SSH server as the
			// sandbox user with the folder to start in.
			dir := ""
			if len(args) > 1 {
				dir = args[1]
			}
			return sftpd.Serve(dir)
		case "version":
			fmt.Println(version)
			return 0
		}
	}
	cfg := agent.Defaults()
	fs := cli.New("tl-agent", "TL_AGENT")
	bindFlags(fs, &cfg)
	fs.FlagSet.Usage = func() { fs.Usage(os.Stderr, usage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "tl-agent:", err)
		return 2
	}
	cfg.Main = fs.Args()
	log, level, err := logx.NewLeveled(os.Stderr, cfg.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tl-agent:", err)
		return 2
	}
	cfg.Level = level
	// A live upgrade's new binary takes the token from the state: the
	// token file's fd was closed (and its number may be a kept fd now).
	if !agent.Restoring() {
		if err := cfg.ResolveToken(); err != nil {
			fmt.Fprintln(os.Stderr, "tl-agent:", err)
			return 2
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "tl-agent:", err)
		return 2
	}
	return agent.Main(cfg, log, version)
}

func bindFlags(fs *cli.FlagSet, c *agent.Config) {
	d := agent.Defaults()
	fs.String(&c.ProxyAddr, "proxy", d.ProxyAddr, "dial the proxy's uplink port at `host:port`")
	fs.String(&c.Listen, "listen", d.Listen, "accept the uplink instead of dialing: `unix:/path`, tcp:host:port or vsock:port")
	fs.Bool(&c.TLS, "tls", d.TLS, "dial the proxy with TLS")
	fs.String(&c.CAFile, "ca-file", d.CAFile, "PEM `file` of the CA that signs the proxy's certificate (pins it)")
	fs.String(&c.ServerName, "server-name", d.ServerName, "`name` expected in the proxy's certificate (default: the proxy host)")
	fs.String(&c.SandboxID, "sandbox-id", d.SandboxID, "this sandbox's `id`")
	fs.String(&c.Token, "token", d.Token, "this sandbox's uplink `secret` (visible in ps: prefer --token-file or the env twin)")
	fs.String(&c.TokenFile, "token-file", d.TokenFile, "read the uplink secret from this `file` (first line)")
	fs.Int(&c.MaxStreams, "uplink-max-streams", d.MaxStreams, "streams served at once per uplink; more are refused with a reason")
	fs.Int(&c.MaxAPIStreams, "uplink-max-api-streams", d.MaxAPIStreams, "API (HTTP) streams served at once per uplink; more are refused with a reason")
	fs.String(&c.ControlSocket, "control-socket", d.ControlSocket, "`path` of the operator's root-only control socket (empty: none)")
	fs.String(&c.LogLevel, "log-level", d.LogLevel, "`level`: debug, info, warn or error")
	fs.String(&c.User, "user", d.User, "sandbox user `name`")
	fs.Int(&c.UID, "uid", d.UID, "uid of the sandbox user when it is created")
	fs.Int(&c.GID, "gid", d.GID, "gid of the sandbox user's group when it is created")
	fs.String(&c.Hostname, "hostname", d.Hostname, "host `name` of the sandbox")
	fs.Bool(&c.Provision, "provision", d.Provision, "create the sandbox user and set the host name at start")
	fs.Bool(&c.Mount, "mount", d.Mount, "as PID 1, mount /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp when missing")
	fs.Duration(&c.ShutdownGrace, "shutdown-grace", d.ShutdownGrace, "time between SIGTERM and SIGKILL at shutdown")
	fs.Duration(&c.HookTimeout, "hook-timeout", d.HookTimeout, "deadline of each image hook (/etc/tl-agent/hooks)")
	fs.String(&c.Incubator, "incubator", d.Incubator, "what each command starts as before its program: auto (the stub where it runs) or go (the agent's binary)")
	fs.Duration(&c.PTY.IdleTimeout, "pty-idle-timeout", d.PTY.IdleTimeout, "kill a PTY session after this long with no client attached")
	fs.Int(&c.PTY.MaxSessions, "pty-max-sessions", d.PTY.MaxSessions, "maximum live PTY sessions")
	fs.String(&c.SSH.Listen, "ssh-listen", d.SSH.Listen, "also serve SSH on this TCP `addr` inside the sandbox, for keys in the user's ~/.ssh/authorized_keys")
	fs.Int(&c.Processes.MaxLines, "proc-max-lines", d.Processes.MaxLines, "output lines kept per process (oldest dropped)")
	fs.Int(&c.Processes.MaxBytes, "proc-max-bytes", d.Processes.MaxBytes, "output bytes kept per process (oldest lines dropped)")
	fs.Int(&c.Processes.TotalBytes, "proc-total-bytes", d.Processes.TotalBytes, "output bytes kept by all processes together (each keeps at least 64 KiB)")
	fs.Int(&c.Processes.MaxLineBytes, "proc-max-line-bytes", d.Processes.MaxLineBytes, "longer output lines are split at this many bytes")
	fs.Duration(&c.Processes.KeepExited, "proc-keep-exited", d.Processes.KeepExited, "how long an exited process stays queryable")
	fs.Int(&c.Processes.MaxExited, "proc-max-exited", d.Processes.MaxExited, "exited processes kept at most")
	fs.Int(&c.Processes.MaxLive, "proc-max-live", d.Processes.MaxLive, "running API processes at most")
	fs.Duration(&c.Processes.StallTimeout, "proc-stall-timeout", d.Processes.StallTimeout, "drop a run or follow client that takes no output events for this long (a run's tree is killed)")
	fs.Int(&c.Processes.MaxFollowers, "proc-max-followers", d.Processes.MaxFollowers, "output follow streams open at once, all processes together")
	fs.Int(&c.Processes.MaxFollowersPerProcess, "proc-max-followers-per-process", d.Processes.MaxFollowersPerProcess, "output follow streams open at once on one process")
	fs.Bool(&c.OwnsClock, "owns-clock", d.OwnsClock, "a resume may step the wall clock (only a VM's agent owns it; never in a container, whose clock is the host's)")
	fs.String(&c.FreezeFS, "freeze-fs", d.FreezeFS, "comma-separated mount `points` a prepare freezes (FIFREEZE) when its call names none; only whole block-device file systems the sandbox owns")
	fs.Duration(&c.ThawAfter, "lifecycle-thaw-after", d.ThawAfter, "thaw a prepared sandbox when no resume comes within this")
	fs.Bool(&c.ExitWithMain, "exit-with-main", d.ExitWithMain, "end the sandbox when the main command (after --) exits, with its exit code")
}
