package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/tensorlake/tl-agent/agent"
)

// logLevelCmd is `tl-agent log-level [LEVEL]`: without LEVEL it prints the
// running agent's log level; with one it sets it, at once and without a
// restart. The agent refuses a level it does not know (debug, info, warn,
// error) and keeps its own; that is exit 1 with the agent's reason, as is
// an agent that cannot be reached.
func logLevelCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tl-agent log-level", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("socket", agent.Defaults().ControlSocket, "control socket `path`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 1 {
		fmt.Fprintln(stderr, "tl-agent log-level: want at most one level (debug, info, warn or error)")
		return 2
	}
	client := controlClient(*sock)
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout+time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/log-level", nil)
	if fs.NArg() == 1 {
		body, _ := json.Marshal(agent.LogLevel{Level: fs.Arg(0)})
		req, _ = http.NewRequestWithContext(ctx, http.MethodPut, "http://agent/log-level", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "tl-agent log-level: cannot reach the agent at %s: %v\n", *sock, err)
		return 1
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("status %d", resp.StatusCode)
		}
		fmt.Fprintln(stderr, "tl-agent log-level:", e.Error)
		return 1
	}
	var lv agent.LogLevel
	if err := json.Unmarshal(data, &lv); err != nil {
		fmt.Fprintf(stderr, "tl-agent log-level: bad answer: %v\n", err)
		return 1
	}
	if lv.Previous != "" {
		fmt.Fprintf(stdout, "%s (was %s)\n", lv.Level, lv.Previous)
		return 0
	}
	fmt.Fprintln(stdout, lv.Level)
	return 0
}

// controlClient talks HTTP to the agent's control socket at sock, each
// call bounded by statusTimeout.
func controlClient(sock string) *http.Client {
	return &http.Client{
		Timeout: statusTimeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}
