// Command tl is this project's client of the sandbox API, through
// tl-proxy, for a person at a terminal. It mirrors the `tl sbx` verbs of
// Tensorlake's own CLI but is not that CLI (docs/cli.md says how to keep
// both apart).
//
//	tl sbx ssh <sandbox> [--shell /bin/bash]     a shell over the PTY API
//	tl sbx attach [<session>]                    back into a detached one
//	tl sbx exec <sandbox> [--] cmd args...       run a command
//	tl sbx cp <src> <dst>                        copy a file in or out
//	tl sbx ls                                    the proxy's sandboxes
//	tl sbx tunnel <sandbox> <port>               a local port to a sandbox port
//
// Exit codes: the remote command's for ssh, attach and exec; otherwise 0
// on success, 1 for an error (connection, API, file), 2 for bad usage.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

var version = "dev"

const usage = `tl: this project's client of the sandbox API through tl-proxy
(not Tensorlake's own tl CLI; docs/cli.md).

Usage:
  tl [--api-key KEY] [--proxy-url URL] sbx <verb> [flags] [args]

Verbs:
  ssh <sandbox> [--shell /bin/bash] [--env K=V] [--detach-key ctrl-]]
                           an interactive shell over the PTY API
  attach [<session>]       reattach to a detached ssh session (none: list them)
  exec <sandbox> [--timeout S] [--workdir DIR] [--env K=V] [--] cmd args...
                           run a command; its stdout and stderr apart, its exit code
  cp <src> <dst>           copy a file; one side is <sandbox>:<path>
  ls                       the proxy's sandboxes and whether each is connected
  tunnel <sandbox> <port> [--local-port N]
                           serve 127.0.0.1:N (default: port) to the sandbox's port

Config: --api-key or $TENSORLAKE_API_KEY; --proxy-url or
$TENSORLAKE_SANDBOX_PROXY_URL (default ` + defaultProxyURL + `, make run's).
Exit codes: the remote command's (ssh, attach, exec); else 0, 1 error, 2 usage.`

// verbs are the `tl sbx` verbs; verbHelp their usage lines.
var verbs = map[string]func(cfg config, args []string) error{
	"ssh": runSSH, "attach": runAttach, "exec": runExec, "cp": runCp, "ls": runLs, "tunnel": runTunnel,
}

var verbHelp = map[string]string{
	"ssh":    "ssh <sandbox> [--shell /bin/bash] [--env KEY=VALUE]... [--detach-key ctrl-]]",
	"attach": "attach [<session>] [--detach-key ctrl-]]",
	"exec":   "exec <sandbox> [--timeout SECONDS] [--workdir DIR] [--env KEY=VALUE]... [--] command [args...]",
	"cp":     "cp [--quiet] <local-path> <sandbox>:<path> | cp [--quiet] <sandbox>:<path> <local-path>",
	"ls":     "ls [--json]",
	"tunnel": "tunnel <sandbox> <port> [--local-port N]",
}

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	return report(dispatch(args), stderr)
}

func dispatch(args []string) error {
	cfg := config{apiKey: os.Getenv("TENSORLAKE_API_KEY"), proxyURL: os.Getenv("TENSORLAKE_SANDBOX_PROXY_URL")}
	fs := flag.NewFlagSet("tl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	globalFlags(fs, &cfg)
	showVersion := fs.Bool("version", false, "print the version")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Println(usage)
			return nil
		}
		return usageErrorf("%v", err)
	}
	if *showVersion {
		printVersion()
		return nil
	}
	rest := fs.Args()
	switch {
	case len(rest) == 0 || rest[0] == "help":
		fmt.Println(usage)
		return nil
	case rest[0] == "version":
		printVersion()
		return nil
	case rest[0] != "sbx" && rest[0] != "sandbox":
		return usageErrorf("unknown command %q: the verbs are under `tl sbx` (tl --help)", rest[0])
	case len(rest) == 1 || rest[1] == "help" || rest[1] == "--help" || rest[1] == "-h":
		fmt.Println(usage)
		return nil
	}
	v, ok := verbs[rest[1]]
	if !ok {
		return usageErrorf("unknown verb %q: use one of ssh, attach, exec, cp, ls, tunnel (tl --help)", "sbx "+rest[1])
	}
	return v(cfg, rest[2:])
}

// printVersion says whose tl this is, to tell it from Tensorlake's.
func printVersion() {
	fmt.Println("tl", version, "(the tl-agent project's client of tl-proxy; not Tensorlake's CLI)")
}

// globalFlags are accepted before `sbx` and after the verb alike.
func globalFlags(fs *flag.FlagSet, cfg *config) {
	fs.StringVar(&cfg.apiKey, "api-key", cfg.apiKey, "API key [$TENSORLAKE_API_KEY]")
	fs.StringVar(&cfg.proxyURL, "proxy-url", cfg.proxyURL, "the sandbox proxy [$TENSORLAKE_SANDBOX_PROXY_URL]")
}

// newFlags is a verb's flag set, global flags included.
func newFlags(name string, cfg *config) *flag.FlagSet {
	fs := flag.NewFlagSet("tl sbx "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	globalFlags(fs, cfg)
	return fs
}

// parseArgs parses flags anywhere among args (the seed writes them after
// the sandbox: `tl sbx ssh my-sandbox --shell /bin/sh`) and returns the
// positional ones. With stopAfter > 0, flags end after that many
// positionals (or at `--`), and the rest is returned as a command line.
func parseArgs(fs *flag.FlagSet, args []string, stopAfter int) (pos, command []string, err error) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, errHelp{fs}
			}
			return nil, nil, usageErrorf("%v", err)
		}
		rest := fs.Args()
		dashed := len(rest) < len(args) && args[len(args)-len(rest)-1] == "--"
		if dashed || (stopAfter > 0 && len(pos) == stopAfter) {
			all := append(pos, rest...)
			if stopAfter > 0 && len(all) > stopAfter {
				return all[:stopAfter], all[stopAfter:], nil
			}
			return all, nil, nil
		}
		if len(rest) == 0 {
			return pos, nil, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// wantArgs checks the count of positional arguments of a verb.
func wantArgs(name string, pos []string, min, max int) error {
	if len(pos) < min || len(pos) > max {
		return usageErrorf("usage: tl sbx %s", verbHelp[name])
	}
	return nil
}

// usageError is bad usage: exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// errHelp is -h on a verb: its flags, exit 0.
type errHelp struct{ fs *flag.FlagSet }

func (errHelp) Error() string { return "help requested" }

// exitCode ends the CLI with code; msg, when set, is said first.
type exitCode struct {
	code int
	msg  string
}

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", e.code) }

func report(err error, stderr io.Writer) int {
	var (
		ue usageError
		ec exitCode
		eh errHelp
	)
	switch {
	case err == nil:
		return 0
	case errors.As(err, &eh):
		name := strings.TrimPrefix(eh.fs.Name(), "tl sbx ")
		fmt.Fprintf(os.Stdout, "usage: tl sbx %s\n\nflags:\n", verbHelp[name])
		eh.fs.SetOutput(os.Stdout)
		eh.fs.PrintDefaults()
		return 0
	case errors.As(err, &ec):
		if ec.msg != "" {
			fmt.Fprintln(stderr, "tl:", ec.msg)
		}
		return ec.code
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "tl:", ue.msg)
		return 2
	default:
		fmt.Fprintln(stderr, "tl:", err)
		return 1
	}
}

// envFlag collects repeated --env KEY=VALUE.
type envFlag map[string]string

func (e envFlag) String() string { return "" }

func (e envFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("Invalid env format: %s. Use KEY=VALUE.", s)
	}
	e[k] = v
	return nil
}
