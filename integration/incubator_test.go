package integration

import (
	"strconv"
	"strings"
	"testing"
)

// TestIncubatorStubNS: the real agent as PID 1 starts commands through
// the incubator stub (a sealed memfd it holds, /proc/1/fd) and, with
// --incubator go, through the Go incubator (no memfd). Either way a
// command reads its raised oom_score_adj (PID 1's + 100) as its first
// program, sees the fds a plain exec would (neither the incubator's fd 3
// nor the stub's fd 4), a script whose #! interpreter is missing is
// refused as before, and `tl-agent status` names the incubator.
func TestIncubatorStubNS(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		memfd bool
	}{{"stub", nil, true}, {"go", []string{"--incubator", "go"}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			s := Start(t, Options{AgentArgs: tc.args})
			checkIncubator(t, s, tc.memfd)
			// tl-agent status says which one, under headroom.
			if h := agentState(t, s).Headroom; h == nil || h.Incubator != tc.name || (tc.name == "go") != (h.IncubatorReason == "--incubator go") {
				t.Fatalf("status headroom %+v; want incubator %q", h, tc.name)
			}
		})
	}
}

// TestIncubatorStubPodman: the same in a podman container (runc, its
// default seccomp profile and capabilities), where the memfd's exec must
// be allowed as well.
func TestIncubatorStubPodman(t *testing.T) {
	s, _ := pressureSandbox(t)
	checkIncubator(t, s, true)
}

// checkIncubator runs the checks of TestIncubatorStubNS on s; memfd says
// whether PID 1 should hold the stub's memfd.
func checkIncubator(t *testing.T, s *System, memfd bool) {
	// One start first: the stub is made and probed at the first.
	r := run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "cat /proc/self/oom_score_adj /proc/1/oom_score_adj; ls /proc/self/fd"}, "user": "root"})
	if len(r.stdout) < 2 {
		t.Fatalf("run: %v %v", r.stdout, r.end)
	}
	child, _ := strconv.Atoi(r.stdout[0])
	agent, _ := strconv.Atoi(r.stdout[1])
	if child != min(agent+100, 1000) {
		t.Errorf("the child's oom_score_adj %d, PID 1's %d: want +100", child, agent)
	}
	// ls's own fds: stdin, stdout, stderr and the folder it reads.
	if fds := strings.Join(r.stdout[2:], " "); fds != "0 1 2 3" {
		t.Errorf("the program's fds: %q, want 0 1 2 3 (the folder ls reads is 3)", fds)
	}
	links := run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "for f in /proc/1/fd/*; do readlink $f; done"}, "user": "root"})
	held := strings.Contains(strings.Join(links.stdout, "\n"), "memfd:tl-agent-incubator")
	if held != memfd {
		t.Errorf("PID 1 holds the stub's memfd: %v, want %v; its fds:\n%s", held, memfd, strings.Join(links.stdout, "\n"))
	}
	// The incubator's own exec fails: the error os/exec would give.
	run(t, s, map[string]any{"command": "sh", "args": []string{"-c", `printf '#!/nonexistent/sh\n' >/tmp/nointerp; chmod +x /tmp/nointerp`}, "user": "root"})
	var e struct{ Code, Error string }
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "/tmp/nointerp", "user": "root"}, 400, &e)
	if e.Code != "COMMAND_NOT_FOUND" || !strings.Contains(e.Error, "interpreter") {
		t.Errorf("a script without its interpreter: %+v, want COMMAND_NOT_FOUND naming the interpreter", e)
	}
}
