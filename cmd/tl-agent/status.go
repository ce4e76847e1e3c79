package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/tensorlake/tl-agent/agent"
)

// statusTimeout bounds asking the agent: a container HEALTHCHECK runs
// `status --check` and must get an answer (unhealthy) from a wedged agent
// rather than hang until the engine's own timeout.
const statusTimeout = 5 * time.Second

// statusCmd asks a running agent over its control socket.
func statusCmd(args []string) int {
	fs := flag.NewFlagSet("tl-agent status", flag.ContinueOnError)
	sock := fs.String("socket", agent.Defaults().ControlSocket, "control socket `path`")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	check := fs.Bool("check", false, "health check: exit 0 only while the uplink is up (connected, or listening in --listen mode)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	resp, err := controlClient(*sock).Get("http://agent/status")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tl-agent status: cannot reach the agent at %s: %v\n", *sock, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if *check {
		return healthCheck(body)
	}
	if *asJSON {
		os.Stdout.Write(body)
		return 0
	}
	var st agent.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(os.Stderr, "tl-agent status: bad answer: %v\n", err)
		return 1
	}
	st.WriteText(os.Stdout)
	return 0
}

// controlClient talks HTTP to the agent's control socket at sock.
func controlClient(sock string) *http.Client {
	return &http.Client{
		Timeout: statusTimeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

// metricsCmd prints a running agent's metrics in Prometheus text format,
// as the control socket serves them.
func metricsCmd(args []string) int {
	fs := flag.NewFlagSet("tl-agent metrics", flag.ContinueOnError)
	sock := fs.String("socket", agent.Defaults().ControlSocket, "control socket `path`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	resp, err := controlClient(*sock).Get("http://agent/metrics")
	if err != nil {
		fmt.Fprintf(os.Stderr, "tl-agent metrics: cannot reach the agent at %s: %v\n", *sock, err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "tl-agent metrics: the agent answered %s\n", resp.Status)
		return 1
	}
	if _, err := io.Copy(os.Stdout, io.LimitReader(resp.Body, 8<<20)); err != nil {
		fmt.Fprintf(os.Stderr, "tl-agent metrics: %v\n", err)
		return 1
	}
	return 0
}

// healthCheck is `tl-agent status --check`, the container HEALTHCHECK: one
// line, exit 0 when the uplink is usable, 1 otherwise (container engines
// read any non-zero code as unhealthy).
func healthCheck(body []byte) int {
	var st agent.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(os.Stderr, "tl-agent status: bad answer: %v\n", err)
		return 1
	}
	switch st.Uplink.State {
	case "connected", "listening":
		fmt.Println("healthy: uplink", st.Uplink.State)
		return 0
	}
	fmt.Printf("unhealthy: uplink %s %s\n", st.Uplink.State, st.Uplink.LastError)
	return 1
}
