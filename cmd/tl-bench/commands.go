package main

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/tensorlake/tl-agent/integration"
)

func init() { register("commands", benchCommands) }

// benchCommands measures a command's round trip through the proxy, as an
// SDK's run call makes it: POST /api/v1/processes/run of `true` until its
// exit event, on a kept-alive connection, with the agent as PID 1 of a
// sandbox (its headroom applied to every child). Two agents side by side,
// rounds interleaved: the default (the incubator stub) and one with
// --incubator go (the Go incubator, a re-exec of the agent). The floor is
// fork+exec+wait of /bin/true in this process.
func benchCommands(e *Env) []Result {
	samples := 200
	if e.Quick {
		samples = 40
	}
	stub := e.System(integration.Options{})
	goInc := e.System(integration.Options{AgentArgs: []string{"--incubator", "go"}})
	var ds [2][]time.Duration
	var bare []time.Duration
	for i := 0; i < samples; i++ {
		for j, s := range []*integration.System{stub, goInc} {
			ds[j] = append(ds[j], runTrue(e, s))
		}
		start := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			e.Fatalf("/bin/true: %v", err)
		}
		bare = append(bare, time.Since(start))
	}
	floor50, floor90 := Percentile(bare, 50), Percentile(bare, 90)
	note := "floor: fork+exec+wait of /bin/true"
	return []Result{
		{Name: "run true through proxy, p50", Unit: "ms", Ours: Percentile(ds[0], 50), Floor: floor50, Lower: true, Note: note},
		{Name: "run true through proxy, p90", Unit: "ms", Ours: Percentile(ds[0], 90), Floor: floor90, Lower: true, Note: note},
		{Name: "run true through proxy, Go incubator, p50", Unit: "ms", Ours: Percentile(ds[1], 50), Floor: floor50, Lower: true, Note: "--incubator go"},
		{Name: "run true through proxy, Go incubator, p90", Unit: "ms", Ours: Percentile(ds[1], 90), Floor: floor90, Lower: true, Note: "--incubator go"},
	}
}

// runTrue is one run of `true` through s's proxy, to the end of its event
// stream (the exit event is its last).
func runTrue(e *Env, s *integration.System) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	req := s.Request(ctx, "POST", "/api/v1/processes/run", strings.NewReader(`{"command":"true"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.Fatalf("run true: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"exit_code":0`) {
		e.Fatalf("run true: status %d, %v: %s", resp.StatusCode, err, body)
	}
	return d
}
