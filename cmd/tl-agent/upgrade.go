package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/tensorlake/tl-agent/agent"
	"github.com/tensorlake/tl-agent/internal/cli"
	"github.com/tensorlake/tl-agent/internal/handover"
)

// upgradeCallTimeout bounds the call (the agent's verify and pre-flight:
// 10 s + 30 s, and more); upgradeWait the wait for its end, after.
const (
	upgradeCallTimeout = 60 * time.Second
	upgradeWait        = 90 * time.Second
	upgradePoll        = 200 * time.Millisecond
)

// upgradeCmd is `tl-agent upgrade PATH [--sha256 SUM]`: the agent checks
// PATH and answers 202 before it execs it; this then waits on the status
// until the new version serves (exit 0) or the upgrade is reported
// failed or rolled back (exit 1). docs/upgrade.md.
func upgradeCmd(args []string) int {
	fs := flag.NewFlagSet("tl-agent upgrade", flag.ContinueOnError)
	sock := fs.String("socket", agent.Defaults().ControlSocket, "control socket `path`")
	sum := fs.String("sha256", "", "the new binary's sha256 (hex): refused when it differs")
	wait := fs.Duration("wait", upgradeWait, "how long to wait for the new agent to serve (0: do not wait)")
	var path string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		path, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if path == "" && fs.NArg() == 1 {
		path = fs.Arg(0)
	}
	if path == "" || fs.NArg() > 1 || (fs.NArg() == 1 && fs.Arg(0) != path) {
		fmt.Fprintln(os.Stderr, "usage: tl-agent upgrade PATH [--sha256 SUM] [--socket P] [--wait D]")
		return 2
	}
	body, _ := json.Marshal(agent.UpgradeRequest{Path: path, SHA256: *sum})
	c := controlClient(*sock)
	c.Timeout = upgradeCallTimeout
	resp, err := c.Post("http://agent/upgrade", "application/json", bytes.NewReader(body))
	if err != nil {
		fmt.Fprintf(os.Stderr, "tl-agent upgrade: cannot reach the agent at %s: %v\n", *sock, err)
		return 1
	}
	// One JSON value: the agent may exec right after its answer.
	var raw json.RawMessage
	derr := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&raw)
	resp.Body.Close()
	if derr == nil {
		os.Stdout.Write(append(raw, '\n'))
	}
	if resp.StatusCode != http.StatusAccepted {
		fmt.Fprintf(os.Stderr, "tl-agent upgrade: %s\n", resp.Status)
		return 1
	}
	var ans agent.UpgradeAnswer
	if err := json.Unmarshal(raw, &ans); err != nil || ans.ID == "" {
		fmt.Fprintf(os.Stderr, "tl-agent upgrade: bad answer: %v\n", err)
		return 1
	}
	if *wait <= 0 {
		return 0
	}
	return waitUpgrade(*sock, ans.ID, *wait)
}

// waitUpgrade polls the status until the upgrade id has a result.
func waitUpgrade(sock, id string, d time.Duration) int {
	c := controlClient(sock)
	c.Timeout = 2 * time.Second
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		time.Sleep(upgradePoll)
		resp, err := c.Get("http://agent/status")
		if err != nil {
			continue // the exec: the socket is down until the new agent serves
		}
		var st agent.Status
		err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
		resp.Body.Close()
		last := st.Upgrade.Last
		if err != nil || last == nil || last.ID != id {
			continue
		}
		switch last.Result {
		case "ok":
			fmt.Printf("upgraded: %s -> %s in %d ms (pid %d)\n", last.From, st.Version, last.TookMS, st.PID)
			return 0
		case "rolled_back", "failed":
			fmt.Fprintf(os.Stderr, "tl-agent upgrade: %s: %s (version %s serves)\n", last.Result, last.Error, st.Version)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "tl-agent upgrade: no result within %v\n", d)
	return 1
}

// upgradeCheckCmd is the hidden pre-flight (`tl-agent upgrade-check
// AGENT-FLAGS...`), run by the old agent on this binary with the state as
// a memfd (its number in TL_AGENT_HANDOVER_FD, 3): it parses the old
// agent's own flags, reads the state in dry-run mode and has every part
// check it. It prints one JSON line (agent.UpgradeCheckResult) and exits
// 0 when it accepts.
func upgradeCheckCmd(args []string) int {
	res := agent.UpgradeCheckResult{Version: version}
	out := func(code int) int {
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		return code
	}
	fd := 3
	if v, ok := os.LookupEnv(handover.EnvFD); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			res.Error = handover.EnvFD + " is not an fd"
			return out(1)
		}
		fd = n
	}
	os.Unsetenv(handover.EnvFD)
	cfg := agent.Defaults()
	fs := cli.New("tl-agent", "TL_AGENT")
	bindFlags(fs, &cfg)
	fs.FlagSet.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		res.Error = "this build refuses the running agent's flags: " + err.Error()
		return out(1)
	}
	cfg.Main = fs.Args()
	// The token comes from the state; the running agent's flags passed
	// its own Validate, this build's must pass too.
	if cfg.Token == "" {
		cfg.Token, cfg.TokenFile = "-", ""
	}
	if err := cfg.Validate(); err != nil {
		res.Error = "this build refuses the running agent's flags: " + err.Error()
		return out(1)
	}
	r, err := handover.Open(fd, true)
	if err != nil {
		res.Error = err.Error()
		return out(1)
	}
	res = agent.UpgradeCheck(cfg, version, r)
	if !res.OK {
		return out(1)
	}
	return out(0)
}
