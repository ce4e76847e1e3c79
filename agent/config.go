// Package agent wires tl-agent together: configuration, the uplink client,
// the dispatch of uplink streams to capabilities, the HTTP API router and
// the operator's control socket. Capabilities (pty, processes, files,
// forwards, ssh) live in their own packages and never import this one.
package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/internal/logx"
	"github.com/tensorlake/tl-agent/process"
	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/sshd"
)

// Config is everything the agent can be told. cmd/tl-agent binds each field
// to a flag and an environment variable; Defaults gives the values used when
// neither is set.
type Config struct {
	// Uplink: exactly one of ProxyAddr (dial out) and Listen (accept in).
	ProxyAddr  string // host:port of the proxy's uplink port
	Listen     string // unix:/path, tcp:host:port or vsock:port
	TLS        bool   // dial with TLS
	CAFile     string // PEM bundle to verify the proxy with (pinned CA)
	ServerName string // expected name in the proxy's certificate
	SandboxID  string
	Token      string // the sandbox's uplink secret
	TokenFile  string // file holding Token (keeps it off command lines); read by ResolveToken

	// Streams the agent serves at once per uplink, in all and of kind api
	// (each API stream is an HTTP connection with its buffers); above them
	// a stream is answered "unavailable" with the reason.
	MaxStreams    int
	MaxAPIStreams int

	ControlSocket string // root-only unix socket for operators
	LogLevel      string
	// Level is the logger's level while it runs (LogLevel at start), read
	// and set on the control socket (tl-agent log-level); nil: fixed.
	Level *logx.Level

	// Sandbox preparation.
	User      string // the sandbox user, tl-user
	UID, GID  int
	Hostname  string
	Provision bool // create the user and set the host name at start
	Mount     bool // mount /proc, /sys, /dev... when missing (PID 1 in a VM)

	ShutdownGrace time.Duration
	// HookTimeout is each image hook's deadline (package services).
	HookTimeout time.Duration
	// Incubator is what every command starts as before its program
	// (launch): "auto", the stub where it runs, or "go", the agent's own
	// binary always.
	Incubator string

	// PTY sessions: the manager's own config (its User and Pause are set
	// when the agent wires it).
	PTY pty.Config

	// SSH: the server always serves uplink SSH streams; SSH.Listen adds a
	// TCP listener inside the sandbox (e.g. 0.0.0.0:22) that checks the
	// sandbox user's ~/.ssh/authorized_keys. Empty: none. Its User and
	// SFTP are set when the agent wires it.
	SSH sshd.Config
	// Processes: output kept per process, exited processes kept
	// (docs/processes.md); its User and Pause are set when wired.
	Processes process.Config

	// Lifecycle (docs/lifecycle.md): OwnsClock lets a resume step
	// CLOCK_REALTIME (only a VM's agent owns the kernel's clock);
	// FreezeFS are the mount points a prepare freezes when its call names
	// none (comma-separated); ThawAfter thaws a prepare no resume followed.
	OwnsClock bool
	FreezeFS  string
	ThawAfter time.Duration

	// Main command run after `--`, and whether its exit ends the sandbox.
	Main         []string
	ExitWithMain bool
}

// Defaults returns the configuration used when nothing is set.
func Defaults() Config {
	return Config{
		MaxStreams:    1024,
		MaxAPIStreams: 512,
		ControlSocket: "/run/tl-agent.sock",
		LogLevel:      "info",
		User:          identity.DefaultUser,
		UID:           1000,
		GID:           1000,
		Hostname:      "tl-sbx",
		Provision:     true,
		Mount:         true,
		ShutdownGrace: 10 * time.Second,
		HookTimeout:   services.DefaultHookTimeout,
		Incubator:     "auto",
		PTY:           pty.DefaultConfig(),
		SSH:           sshd.DefaultConfig(),
		Processes:     process.DefaultConfig(),
		ThawAfter:     60 * time.Second,
	}
}

// freezeFS is FreezeFS as a list.
func (c *Config) freezeFS() []string {
	var out []string
	for _, p := range strings.Split(c.FreezeFS, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// ResolveToken reads TokenFile into Token: the first line, surrounding
// white space removed. Giving both is an error (which one would win is a
// surprise either way).
func (c *Config) ResolveToken() error {
	if c.TokenFile == "" {
		return nil
	}
	if c.Token != "" {
		return errors.New("--token and --token-file are exclusive")
	}
	data, err := readTokenFile(c.TokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	c.Token = strings.TrimSpace(line)
	if c.Token == "" {
		return fmt.Errorf("--token-file %s: empty", c.TokenFile)
	}
	return nil
}

// maxTokenFile bounds what is read of a token file: a token is one line.
const maxTokenFile = 4096

// readTokenFile reads a token file. /dev/fd/N and /proc/self/fd/N (a
// launcher handing the token over an inherited descriptor, as the tests
// and make run do) are read from descriptor N itself, which works before
// /dev and /proc are mounted (a bare VM's PID 1 reads its token first),
// and the descriptor is closed after, so no child the agent starts
// inherits it.
func readTokenFile(path string) ([]byte, error) {
	for _, prefix := range []string{"/dev/fd/", "/proc/self/fd/"} {
		n, ok := strings.CutPrefix(path, prefix)
		if !ok {
			continue
		}
		fd, err := strconv.Atoi(n)
		if err != nil || fd <= 2 {
			break
		}
		f := os.NewFile(uintptr(fd), path)
		defer f.Close()
		if _, err := f.Stat(); err != nil {
			return nil, fmt.Errorf("%s: descriptor %d is not open", path, fd)
		}
		return io.ReadAll(io.LimitReader(f, maxTokenFile))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxTokenFile))
}

// Validate reports the first problem in c.
func (c *Config) Validate() error {
	switch {
	case c.ProxyAddr == "" && c.Listen == "":
		return errors.New("one of --proxy or --listen is required")
	case c.ProxyAddr != "" && c.Listen != "":
		return errors.New("--proxy and --listen are exclusive")
	case c.SandboxID == "":
		return errors.New("--sandbox-id is required")
	case c.Token == "" && !Restoring(): // a live upgrade's state holds it
		return errors.New("--token-file (or --token) is required")
	case c.UID < 0 || c.GID < 0:
		return errors.New("--uid and --gid must be non-negative")
	case c.ShutdownGrace <= 0:
		return errors.New("--shutdown-grace must be positive")
	case c.HookTimeout <= 0:
		return errors.New("--hook-timeout must be positive")
	case c.Incubator != "auto" && c.Incubator != "go":
		return fmt.Errorf("--incubator %q: auto or go", c.Incubator)
	case c.PTY.MaxSessions <= 0:
		return errors.New("--pty-max-sessions must be positive")
	case c.MaxStreams <= 0 || c.MaxAPIStreams <= 0:
		return errors.New("--uplink-max-streams and --uplink-max-api-streams must be positive")
	case c.PTY.IdleTimeout <= 0:
		return errors.New("--pty-idle-timeout must be positive")
	case c.ThawAfter <= 0 || c.ThawAfter > maxThawAfter:
		return fmt.Errorf("--lifecycle-thaw-after must be in (0, %v]", maxThawAfter)
	}
	for _, p := range c.freezeFS() {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("--freeze-fs %q: mount points are absolute paths", p)
		}
	}
	if err := c.PTY.Validate(); err != nil {
		return err
	}
	if err := c.Processes.Validate(); err != nil {
		return fmt.Errorf("%w (the --proc-* flags)", err)
	}
	if c.Listen != "" {
		kind, _, ok := strings.Cut(c.Listen, ":")
		if !ok || (kind != "unix" && kind != "tcp" && kind != "vsock") {
			return fmt.Errorf("--listen %q: want unix:/path, tcp:host:port or vsock:port", c.Listen)
		}
	}
	if (c.CAFile != "" || c.ServerName != "") && !c.TLS {
		return errors.New("--ca-file and --server-name need --tls")
	}
	return nil
}
