// Command tl-proxy is the reference sandbox proxy: it accepts tl-agent
// uplinks and serves users an HTTP API front door (and an SSH one) on
// localhost, routed to sandboxes over those uplinks.
//
//	tl-proxy --config proxy.json     run with a config file
//	tl-proxy --dev                   generate (once) and use a dev config
//
// Exit codes: 0 after Ctrl-C or SIGTERM; 1 when it could not run; 2 for bad
// flags or config.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tensorlake/tl-agent/internal/cli"
	"github.com/tensorlake/tl-agent/internal/logx"
	"github.com/tensorlake/tl-agent/proxy"
)

var version = "dev"

const usage = `tl-proxy: the reference sandbox proxy.

Usage:
  tl-proxy --config FILE [flags]
  tl-proxy --dev [flags]     generate a config with one sandbox and an API key
                             in --state-dir (kept for next time) and print them`

type flags struct {
	config, stateDir, devSandbox       string
	uplinkAddr, httpAddr, sshAddr      string
	operatorAddr                       string
	connect, logLevel, domain, sshKeys string
	tlsCert, tlsKey                    string
	cpuProfile                         string
	cpuProfileFor                      time.Duration
	dev                                bool
	limits                             proxy.Limits
	bodyMinBytes                       int
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	f, code := parseFlags(args)
	if code >= 0 {
		return code
	}
	log, err := logx.New(os.Stderr, f.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tl-proxy:", err)
		return 2
	}
	cfg, err := loadConfig(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tl-proxy:", err)
		return 2
	}
	var uplinkTLS *tls.Config
	if f.tlsCert != "" {
		if uplinkTLS, err = proxy.UplinkTLS(f.tlsCert, f.tlsKey); err != nil {
			fmt.Fprintln(os.Stderr, "tl-proxy:", err)
			return 2
		}
	}
	addrs := proxy.Addrs{Uplink: f.uplinkAddr, HTTP: f.httpAddr, Operator: f.operatorAddr}
	if cfg.SSHAuthorizedKeys != "" {
		addrs.SSH = f.sshAddr // no users' keys: nobody could log in
	}
	ls, err := proxy.Listen(addrs, uplinkTLS)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tl-proxy:", err)
		return 1
	}
	if f.cpuProfile != "" {
		stop, err := startCPUProfile(f.cpuProfile, f.cpuProfileFor)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tl-proxy:", err)
			return 1
		}
		defer stop()
	}
	p, err := proxy.New(cfg, log)
	if err != nil {
		ls.Close()
		fmt.Fprintln(os.Stderr, "tl-proxy:", err)
		return 2
	}
	if ls.Operator != nil {
		if err := p.CheckOperator(ls.Operator); err != nil {
			ls.Close()
			fmt.Fprintln(os.Stderr, "tl-proxy:", err)
			return 2
		}
		log.Info().Str("operator", ls.Operator.Addr().String()).Bool("open", p.OperatorOpen(ls.Operator)).Msg("operator door listening")
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if f.connect != "" {
		network, addr, _ := strings.Cut(f.connect, ":")
		p.ConnectAgent(ctx, network, addr) // Run waits for it
	}
	log.Info().Str("version", version).Str("uplink", ls.Uplink.Addr().String()).Str("http", ls.HTTP.Addr().String()).Msg("tl-proxy listening")
	if f.dev {
		printDev(cfg, ls)
	}
	if err := p.Run(ctx, ls); err != nil {
		log.Error().Err(err).Msg("tl-proxy stopped")
		return 1
	}
	return 0
}

// parseFlags returns the flags, or an exit code (>= 0) when run should stop.
func parseFlags(args []string) (flags, int) {
	var f flags
	fs := cli.New("tl-proxy", "TL_PROXY")
	fs.String(&f.config, "config", "", "config `file` (JSON: sandboxes, api_keys, domain, ssh_authorized_keys)")
	fs.Bool(&f.dev, "dev", false, "dev mode: generate the config in --state-dir if missing and print its secrets")
	fs.String(&f.devSandbox, "dev-sandbox-id", "dev-sbx", "sandbox `id` of the generated dev config")
	fs.String(&f.stateDir, "state-dir", defaultStateDir(), "`dir` for the dev config and the SSH host key")
	fs.String(&f.uplinkAddr, "uplink-addr", "127.0.0.1:7070", "`addr` where agents connect")
	fs.String(&f.httpAddr, "http-addr", "127.0.0.1:8080", "`addr` of the HTTP API front door")
	fs.String(&f.sshAddr, "ssh-addr", "127.0.0.1:2222", "`addr` of the SSH front door (empty: none)")
	fs.String(&f.operatorAddr, "operator-addr", "", "`addr` of the operator door, GET /metrics with an operator key (empty: none; docs/observability.md)")
	fs.String(&f.connect, "connect", "", "also keep an uplink to an agent in listen mode at `unix:/path` or tcp:host:port")
	fs.String(&f.domain, "domain", "", "sandbox host-name `suffix` (overrides the config)")
	fs.String(&f.sshKeys, "ssh-authorized-keys", "", "users' SSH keys `file` (overrides the config)")
	fs.String(&f.tlsCert, "uplink-tls-cert", "", "serve uplinks over TLS with this certificate `file` (PEM)")
	fs.String(&f.tlsKey, "uplink-tls-key", "", "private key `file` (PEM) of --uplink-tls-cert")
	fs.String(&f.logLevel, "log-level", "info", "`level`: debug, info, warn or error")
	fs.String(&f.cpuProfile, "cpu-profile", "", "write a Go CPU profile of the first --cpu-profile-for to `file` (benchmarks)")
	fs.Duration(&f.cpuProfileFor, "cpu-profile-for", 30*time.Second, "`duration` of --cpu-profile")
	limitFlags(fs, &f)
	fs.FlagSet.Usage = func() { fs.Usage(os.Stderr, usage) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return f, 0
		}
		fmt.Fprintln(os.Stderr, "tl-proxy:", err)
		return f, 2
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		fmt.Fprintln(os.Stderr, "tl-proxy: --uplink-tls-cert and --uplink-tls-key go together")
		return f, 2
	}
	return f, -1
}

// limitFlags binds the front doors' bounds (docs/proxy.md); 0 turns one off.
func limitFlags(fs *cli.FlagSet, f *flags) {
	d, l := proxy.DefaultLimits(), &f.limits
	fs.Duration(&l.HTTPHeaderTimeout, "http-header-timeout", d.HTTPHeaderTimeout, "close an HTTP connection whose request header has not arrived within this `duration`")
	fs.Duration(&l.HTTPIdleTimeout, "http-idle-timeout", d.HTTPIdleTimeout, "close a keep-alive HTTP connection idle this `duration`")
	fs.Int(&f.bodyMinBytes, "http-body-min-bytes", int(d.BodyMinBytes), "cut (408) a request body that sends fewer than `n` bytes in --http-body-window")
	fs.Duration(&l.BodyWindow, "http-body-window", d.BodyWindow, "`duration` of the request body's minimum-progress window")
	fs.Duration(&l.WriteStallTimeout, "http-write-stall-timeout", d.WriteStallTimeout, "drop an HTTP client that takes none of a response write (or WebSocket frame) within this `duration`")
	fs.Int(&l.HTTPConns, "http-max-conns", d.HTTPConns, "live HTTP connections in all (`n`)")
	fs.Int(&l.HTTPConnsPerSource, "http-max-conns-per-source", d.HTTPConnsPerSource, "live HTTP connections from one IP address (`n`)")
	fs.Int(&l.UplinkConns, "uplink-max-conns", d.UplinkConns, "live uplink connections in all (`n`)")
	fs.Int(&l.UplinkConnsPerSource, "uplink-max-conns-per-source", d.UplinkConnsPerSource, "live uplink connections from one IP address (`n`)")
	fs.Int(&l.SSHConns, "ssh-max-conns", d.SSHConns, "live SSH front-door connections in all (`n`)")
	fs.Int(&l.SSHConnsPerSource, "ssh-max-conns-per-source", d.SSHConnsPerSource, "live SSH front-door connections from one IP address (`n`)")
	fs.Int(&l.BrowserSessions, "browser-max-sessions", d.BrowserSessions, "live browser logins (`n`; past it the oldest is logged out)")
	fs.Duration(&l.BrowserSessionTTL, "browser-session-ttl", d.BrowserSessionTTL, "a browser login lasts this `duration` from login")
	fs.Int(&l.LoginFailures, "browser-login-failures", d.LoginFailures, "failed browser logins one source (IP, IPv6 /64) may make per --browser-login-window (`n`; then 429)")
	fs.Duration(&l.LoginWindow, "browser-login-window", d.LoginWindow, "the `duration` in which a source's --browser-login-failures refill")
	fs.Int(&l.LoginSources, "browser-login-sources", d.LoginSources, "sources whose failed logins are tracked (`n`; past it they share one bucket)")
	fs.Int(&l.RequestsPerSandbox, "max-requests-per-sandbox", d.RequestsPerSandbox, "concurrent proxied HTTP requests and streams to one sandbox (`n`; 429 past it)")
}

// startCPUProfile profiles the process for d or until the returned stop,
// whichever comes first (the benchmarks' view of where the proxy spends
// its time; they end the proxy with SIGKILL).
func startCPUProfile(path string, d time.Duration) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	stop := func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }
	time.AfterFunc(d, stop)
	return stop, nil
}

func defaultStateDir() string {
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "tl-proxy")
	}
	return ".tl-proxy"
}

func loadConfig(f flags) (*proxy.Config, error) {
	var cfg *proxy.Config
	var err error
	switch {
	case f.config != "":
		cfg, err = proxy.LoadConfig(f.config)
	case f.dev:
		path := filepath.Join(f.stateDir, "proxy.json")
		cfg, err = proxy.LoadConfig(path)
		if errors.Is(err, os.ErrNotExist) {
			cfg = proxy.DevConfig(f.devSandbox)
			// Refused before it is saved: a bad id must not stay on disk.
			if err = cfg.Validate(); err == nil {
				err = cfg.Save(path)
			}
		}
	default:
		return nil, errors.New("--config or --dev is required")
	}
	if err != nil {
		return nil, err
	}
	if f.domain != "" {
		cfg.Domain = f.domain
	}
	if f.sshKeys != "" {
		cfg.SSHAuthorizedKeys = f.sshKeys
	}
	cfg.Limits = f.limits
	cfg.Limits.BodyMinBytes = int64(f.bodyMinBytes)
	if cfg.SSHHostKey == "" {
		cfg.SSHHostKey = filepath.Join(f.stateDir, "ssh_host_ed25519_key")
	}
	return cfg, cfg.Validate()
}

func printDev(cfg *proxy.Config, ls proxy.Listeners) {
	var keys, ids []string
	for k := range cfg.APIKeys {
		keys = append(keys, k)
	}
	for id := range cfg.Sandboxes {
		ids = append(ids, id)
	}
	sort.Strings(keys)
	sort.Strings(ids)
	fmt.Printf("tl-proxy dev mode\n  API key:    %s\n  uplink:     %s\n  http:       %s\n", keys[0], ls.Uplink.Addr(), ls.HTTP.Addr())
	for _, id := range ids {
		fmt.Printf("  sandbox %s token %s\n", id, cfg.Sandboxes[id].Token)
	}
}
