package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tensorlake/tl-agent/agent"
)

// lifecycleTimeout bounds a call: the agent's longest prepare and more.
const lifecycleTimeout = 100 * time.Second

// lifecycleCmd makes a lifecycle call on the control socket, for a
// runtime on the host (or an operator inside): `tl-agent lifecycle
// prepare '{"freeze_workload":true}'`. It prints the agent's JSON answer
// and exits 0 on a 2xx, 1 otherwise.
func lifecycleCmd(args []string) int {
	fs := flag.NewFlagSet("tl-agent lifecycle", flag.ContinueOnError)
	sock := fs.String("socket", agent.Defaults().ControlSocket, "control socket `path`")
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(os.Stderr, "usage: tl-agent lifecycle prepare|resume|status [--socket P] [JSON body]")
		return 2
	}
	op := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	body := strings.Join(fs.Args(), " ")
	c := controlClient(*sock)
	c.Timeout = lifecycleTimeout
	var resp *http.Response
	var err error
	if op == "status" {
		resp, err = c.Get("http://agent/lifecycle/status")
	} else {
		resp, err = c.Post("http://agent/lifecycle/"+op, "application/json", strings.NewReader(body))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tl-agent lifecycle: cannot reach the agent at %s: %v\n", *sock, err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(os.Stdout, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		fmt.Fprintf(os.Stderr, "tl-agent lifecycle %s: %s\n", op, resp.Status)
		return 1
	}
	return 0
}
