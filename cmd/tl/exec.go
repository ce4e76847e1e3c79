package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// maxEventLine bounds one server-sent event line (a line of output, JSON
// encoded); the agent's lines are far shorter.
const maxEventLine = 4 << 20

func runExec(cfg config, args []string) error {
	fs := newFlags("exec", &cfg)
	timeout := fs.Float64("timeout", 0, "seconds before the command is killed (0: none)")
	workdir := fs.String("workdir", "", "the command's working directory (default: the home of tl-user)")
	env := envFlag{}
	fs.Var(env, "env", "KEY=VALUE added to the command's environment (repeatable)")
	pos, command, err := parseArgs(fs, args, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 || len(command) == 0 {
		return usageErrorf("usage: tl sbx %s", verbHelp["exec"])
	}
	if *timeout < 0 {
		return usageErrorf("--timeout must be 0 (none) or more seconds")
	}
	t, err := cfg.sandbox(pos[0])
	if err != nil {
		return err
	}
	body := map[string]any{"command": command[0], "args": command[1:]}
	if len(env) > 0 {
		body["env"] = env
	}
	if *workdir != "" {
		body["working_dir"] = *workdir
	}
	if *timeout > 0 {
		body["timeout"] = *timeout
	}
	// Ctrl-C ends the request; the agent kills a run whose client is gone.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	data, _ := json.Marshal(body)
	req, err := t.request(ctx, http.MethodPost, "/api/v1/processes/run", bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	start := time.Now()
	resp, err := t.do(req, "start process")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	end, err := streamRun(resp.Body)
	if ctx.Err() != nil {
		return exitCode{130, "interrupted: the command was killed"}
	}
	if err != nil {
		return fmt.Errorf("failed to stream process output: %v", err)
	}
	return end.result(*timeout, time.Since(start))
}

// runEnd is run's last event.
type runEnd struct {
	ExitCode  *int `json:"exit_code"`
	Signal    *int `json:"signal"`
	OOMKilled bool `json:"oom_killed"`
}

// streamRun writes each output line to stdout or stderr as its stream
// says, until the exit event.
func streamRun(body io.Reader) (runEnd, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), maxEventLine)
	for sc.Scan() {
		payload, ok := strings.CutPrefix(sc.Text(), "data:")
		if !ok {
			continue // event names, comments, the blank line between events
		}
		var ev struct {
			Line         *string `json:"line"`
			Stream       string  `json:"stream"`
			SkippedLines uint64  `json:"skipped_lines"`
			runEnd
		}
		if err := json.Unmarshal([]byte(payload), &ev); err != nil {
			return runEnd{}, fmt.Errorf("bad event %q: %v", payload, err)
		}
		// One write per line, unbuffered: lines show as they come and the
		// two streams keep the order they were sent in.
		switch {
		case ev.Line != nil && ev.Stream == "stderr":
			fmt.Fprintln(os.Stderr, *ev.Line)
		case ev.Line != nil:
			if _, err := fmt.Fprintln(os.Stdout, *ev.Line); err != nil {
				return runEnd{}, err
			}
		case ev.SkippedLines > 0:
			fmt.Fprintf(os.Stderr, "tl: %d lines of output were dropped before they could be sent\n", ev.SkippedLines)
		case ev.ExitCode != nil || ev.Signal != nil:
			return ev.runEnd, nil
		}
	}
	if err := sc.Err(); err != nil {
		return runEnd{}, err
	}
	return runEnd{}, io.ErrUnexpectedEOF
}

// result is the CLI's exit: the command's code, or 128+signal as shells
// report a killed command.
func (e runEnd) result(timeout float64, took time.Duration) error {
	switch {
	case e.Signal != nil && timeout > 0 && took.Seconds() >= timeout:
		return exitCode{124, fmt.Sprintf("Command timed out after %vs", timeout)}
	case e.Signal != nil && e.OOMKilled:
		return exitCode{128 + *e.Signal, "the command was killed: out of memory"}
	case e.Signal != nil:
		return exitCode{code: 128 + *e.Signal}
	case *e.ExitCode != 0:
		return exitCode{code: *e.ExitCode & 0xff}
	}
	return nil
}
