package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// sseEvent is one server-sent event.
type sseEvent struct {
	Name string
	Data map[string]any
}

// readSSE reads events until the stream ends.
func readSSE(t testing.TB, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var cur sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.Data != nil || cur.Name != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			cur.Name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.Data); err != nil {
				t.Fatalf("bad SSE data %q: %v", line, err)
			}
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	return out
}

// ensureUser checks that the agent's provisioning created tl-user in the
// sandbox: every process and file test acts as that user.
func ensureUser(t *testing.T, s *System) {
	t.Helper()
	if out, err := s.Exec("id", "tl-user"); err != nil {
		t.Fatalf("tl-user missing in the sandbox (provisioning): %v: %s", err, out)
	}
}

// runResult is what one /processes/run stream said.
type runResult struct {
	started map[string]any
	stdout  []string
	stderr  []string
	end     map[string]any
}

func run(t testing.TB, s *System, body map[string]any) runResult {
	t.Helper()
	resp := s.Do("POST", "/api/v1/processes/run", body)
	if resp.StatusCode != 200 {
		data, _ := io.ReadAll(resp.Body)
		t.Fatalf("run %v: status %d: %s", body, resp.StatusCode, data)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("run content type %q", ct)
	}
	return parseRun(t, readSSE(t, resp.Body))
}

func parseRun(t testing.TB, evs []sseEvent) runResult {
	t.Helper()
	var r runResult
	for i, ev := range evs {
		switch {
		case i == 0:
			r.started = ev.Data
		case ev.Data["line"] != nil:
			if ev.Data["timestamp"] == nil {
				t.Fatalf("line event without timestamp: %v", ev.Data)
			}
			if ev.Data["stream"] == "stderr" {
				r.stderr = append(r.stderr, ev.Data["line"].(string))
			} else {
				r.stdout = append(r.stdout, ev.Data["line"].(string))
			}
		default:
			if i != len(evs)-1 {
				t.Fatalf("end event %v is not last", ev.Data)
			}
			r.end = ev.Data
		}
	}
	if r.started == nil || r.started["pid"] == nil || r.started["handle"] == nil || r.started["started_at"] == nil {
		t.Fatalf("no start event: %v", evs)
	}
	if r.end == nil {
		t.Fatalf("no exit event: %v", evs)
	}
	return r
}

func TestProcessRun(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	r := run(t, s, map[string]any{
		"command": "sh", "args": []string{"-c", `echo out1; echo err1 >&2; id -un; pwd; echo "$HOME $FOO"; exit 3`},
		"env": map[string]string{"FOO": "bar"},
	})
	if r.end["exit_code"] != 3.0 || r.end["signal"] != nil {
		t.Fatalf("end = %v", r.end)
	}
	want := []string{"out1", "tl-user", "/home/tl-user", "/home/tl-user bar"}
	if strings.Join(r.stdout, "|") != strings.Join(want, "|") {
		t.Fatalf("stdout %q, want %q", r.stdout, want)
	}
	if len(r.stderr) != 1 || r.stderr[0] != "err1" {
		t.Fatalf("stderr %q", r.stderr)
	}
	started := r.started["started_at"].(float64)
	if now := float64(time.Now().UnixMilli()); started < now-60000 || started > now+1000 {
		t.Fatalf("started_at %v is not ms since epoch", started)
	}

	// The user field in its forms, and the working directory.
	for _, u := range []any{"root", "0", "0:0", map[string]any{"uid": 0, "gid": 0}, map[string]any{"name": "root"}} {
		r := run(t, s, map[string]any{"command": "id", "args": []string{"-u"}, "user": u, "working_dir": "/tmp"})
		if len(r.stdout) != 1 || r.stdout[0] != "0" || r.end["exit_code"] != 0.0 {
			t.Fatalf("user %v: %v %v", u, r.stdout, r.end)
		}
	}
	// A uid without a passwd entry runs as that uid, from /.
	r = run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "id -u; id -g; pwd"}, "user": "4242:4343"})
	if strings.Join(r.stdout, " ") != "4242 4343 /" {
		t.Fatalf("bare uid:gid: %v %v", r.stdout, r.end)
	}
	r = run(t, s, map[string]any{"command": "/bin/pwd", "working_dir": "/tmp"})
	if r.stdout[0] != "/tmp" {
		t.Fatalf("pwd in /tmp: %v", r.stdout)
	}

	// A killed command reports its signal.
	r = run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "kill -TERM $$"}})
	if r.end["signal"] != 15.0 || r.end["exit_code"] != nil {
		t.Fatalf("signaled end = %v", r.end)
	}

	// A long line is split, not kept whole.
	r = run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "head -c 200000 /dev/zero | tr '\\0' x; echo; echo done"}})
	if len(r.stdout) != 5 || len(r.stdout[0]) != 64<<10 || r.stdout[4] != "done" {
		t.Fatalf("long line: %d lines, first %d bytes", len(r.stdout), len(r.stdout[0]))
	}
}

// TestProcessRunTimeoutKillsTree checks the timeout reaches the whole
// tree, including a child that left the group with setsid.
func TestProcessRunTimeoutKillsTree(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	start := time.Now()
	r := run(t, s, map[string]any{
		"command": "sh", "args": []string{"-c", "setsid sleep 4321 & sleep 4322 & echo started; sleep 4323"},
		"timeout": 1,
	})
	if r.end["signal"] != 9.0 {
		t.Fatalf("timeout end = %v", r.end)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("timeout of 1 s took %v", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := s.Exec("sh", "-c", "ps -eo args | grep '^sleep 432' || true")
		if strings.TrimSpace(out) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("survivors after the timeout:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestProcessErrors(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	if _, err := s.Exec("sh", "-c", "printf '#!/bin/sh\\n' > /tmp/noexec && chmod 644 /tmp/noexec && printf 'echo hi\\n' > /tmp/noshebang && chmod 755 /tmp/noshebang"); err != nil {
		t.Fatal(err)
	}
	var p struct {
		Pid int `json:"pid"`
	}
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sleep", "args": []string{"30"}}, 201, &p)
	sleeper := fmt.Sprint(p.Pid)
	cases := []struct {
		name, method, path string
		body               any
		status             int
		code               string
	}{
		{"missing command", "POST", "/api/v1/processes", map[string]any{"args": []string{"x"}}, 400, "INVALID_REQUEST"},
		{"bad json", "POST", "/api/v1/processes", "{", 400, "INVALID_REQUEST"},
		{"unknown user", "POST", "/api/v1/processes", map[string]any{"command": "true", "user": "nobody-here"}, 400, "UNKNOWN_USER"},
		{"not found", "POST", "/api/v1/processes", map[string]any{"command": "no-such-cmd"}, 400, "COMMAND_NOT_FOUND"},
		{"not executable", "POST", "/api/v1/processes", map[string]any{"command": "/tmp/noexec"}, 400, "NOT_EXECUTABLE"},
		{"folder", "POST", "/api/v1/processes", map[string]any{"command": "/tmp"}, 400, "NOT_EXECUTABLE"},
		{"no shebang", "POST", "/api/v1/processes", map[string]any{"command": "/tmp/noshebang"}, 400, "NOT_EXECUTABLE"},
		{"bad dir", "POST", "/api/v1/processes", map[string]any{"command": "true", "working_dir": "/nope"}, 400, "INVALID_WORKING_DIR"},
		{"dir of a file", "POST", "/api/v1/processes", map[string]any{"command": "true", "working_dir": "/etc/passwd"}, 400, "INVALID_WORKING_DIR"},
		{"dir not for tl-user", "POST", "/api/v1/processes", map[string]any{"command": "true", "working_dir": "/root"}, 400, "INVALID_WORKING_DIR"},
		{"bad stdin mode", "POST", "/api/v1/processes", map[string]any{"command": "true", "stdin_mode": "tty"}, 400, "INVALID_REQUEST"},
		{"digit name", "POST", "/api/v1/processes", map[string]any{"command": "true", "name": "123"}, 400, "INVALID_NAME"},
		{"slash name", "POST", "/api/v1/processes", map[string]any{"command": "true", "name": "a/b"}, 400, "INVALID_NAME"},
		{"empty name", "POST", "/api/v1/processes", map[string]any{"command": "true", "name": ""}, 400, "INVALID_NAME"},
		{"bad policy", "POST", "/api/v1/processes", map[string]any{"command": "true", "restart": map[string]any{"policy": "sometimes"}}, 400, "INVALID_RESTART"},
		{"run unknown user", "POST", "/api/v1/processes/run", map[string]any{"command": "true", "user": "nobody-here"}, 400, "UNKNOWN_USER"},
		{"run missing command", "POST", "/api/v1/processes/run", map[string]any{}, 400, "INVALID_REQUEST"},
		{"unknown pid", "GET", "/api/v1/processes/999999", nil, 404, "NOT_FOUND"},
		{"unknown name", "GET", "/api/v1/processes/ghost", nil, 404, "NOT_FOUND"},
		{"kill unknown", "DELETE", "/api/v1/processes/999999", nil, 404, "NOT_FOUND"},
		{"signal unknown", "POST", "/api/v1/processes/999999/signal", map[string]any{"signal": 15}, 404, "NOT_FOUND"},
		{"bad signal", "POST", "/api/v1/processes/" + sleeper + "/signal", map[string]any{"signal": 99}, 400, "INVALID_SIGNAL"},
		{"no signal", "POST", "/api/v1/processes/" + sleeper + "/signal", map[string]any{}, 400, "INVALID_SIGNAL"},
		{"stdin not pipe", "POST", "/api/v1/processes/" + sleeper + "/stdin", "data", 400, "STDIN_NOT_WRITABLE"},
		{"stdin close not pipe", "POST", "/api/v1/processes/" + sleeper + "/stdin/close", nil, 400, "STDIN_NOT_WRITABLE"},
		{"stdout unknown", "GET", "/api/v1/processes/999999/stdout", nil, 404, "NOT_FOUND"},
		{"follow unknown", "GET", "/api/v1/processes/ghost/output/follow", nil, 404, "NOT_FOUND"},
		{"restart unknown", "POST", "/api/v1/processes/ghost/restart", nil, 404, "NOT_FOUND"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.WantError(t, c.method, c.path, c.body, c.status, c.code)
		})
	}
	// A process that is no longer running cannot be signaled.
	s.JSON("DELETE", "/api/v1/processes/"+sleeper, nil, 204, nil)
	waitStatus(t, s, sleeper, "signaled")
	resp := s.Do("POST", "/api/v1/processes/"+sleeper+"/signal", map[string]any{"signal": 15})
	if resp.StatusCode != 400 {
		t.Fatalf("signal to an exited process: %d", resp.StatusCode)
	}
}

// procInfo is the API's P, as much as the tests look at.
type procInfo struct {
	Handle        int      `json:"handle"`
	Pid           int      `json:"pid"`
	Status        string   `json:"status"`
	ExitCode      *int     `json:"exit_code"`
	Signal        *int     `json:"signal"`
	StdinWritable bool     `json:"stdin_writable"`
	Command       string   `json:"command"`
	Args          []string `json:"args"`
	StartedAt     int64    `json:"started_at"`
	EndedAt       *int64   `json:"ended_at"`
	Managed       *struct {
		ID                        string  `json:"id"`
		Name                      *string `json:"name"`
		Status                    string  `json:"status"`
		RestartCount              int     `json:"restart_count"`
		HealthStatus              string  `json:"health_status"`
		ConsecutiveHealthFailures int     `json:"consecutive_health_failures"`
		LastError                 *string `json:"last_error"`
		NextRestartAt             *int64  `json:"next_restart_at"`
		LastExit                  *struct {
			ExitCode *int `json:"exit_code"`
		} `json:"last_exit"`
		Restart struct {
			Policy           string `json:"policy"`
			InitialBackoffMs int    `json:"initial_backoff_ms"`
			MaxBackoffMs     int    `json:"max_backoff_ms"`
		} `json:"restart"`
	} `json:"managed"`
}

func getProc(t testing.TB, s *System, key string) procInfo {
	t.Helper()
	var p procInfo
	s.JSON("GET", "/api/v1/processes/"+key, nil, 200, &p)
	return p
}

func waitStatus(t testing.TB, s *System, key, status string) procInfo {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := getProc(t, s, key)
		if p.Status == status {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s: status %q, want %q", key, p.Status, status)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestProcessBackground is the contract of a plain background process:
// stdin, captured output and its follow, exit, signals, list and restart.
func TestProcessBackground(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)

	var p procInfo
	var pid string
	rule(t, s, "a pipe-mode process starts running, stdin writable, unmanaged", func(t *testing.T) {
		s.JSON("POST", "/api/v1/processes", map[string]any{
			"command": "sh", "args": []string{"-c", "echo ready; while read l; do echo got:$l; echo e:$l >&2; done; echo bye"},
			"stdin_mode": "pipe",
		}, 201, &p)
		if p.Status != "running" || !p.StdinWritable || p.Command != "sh" || p.Pid == 0 || p.ExitCode != nil || p.Managed != nil {
			t.Fatalf("started: %+v", p)
		}
		pid = fmt.Sprint(p.Pid)
	})
	rule(t, s, "follow streams both outputs in order, stdin reaches the process, eof ends it", func(t *testing.T) {
		follow := s.Do("GET", "/api/v1/processes/"+pid+"/output/follow", nil)
		if follow.StatusCode != 200 || follow.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("follow: %d %s, want 200 text/event-stream", follow.StatusCode, follow.Header.Get("Content-Type"))
		}
		evc := make(chan []sseEvent, 1)
		go func() { evc <- readSSE(t, follow.Body) }()
		s.JSON("POST", "/api/v1/processes/"+pid+"/stdin", "one\n", 204, nil)
		s.JSON("POST", "/api/v1/processes/"+pid+"/stdin", []byte("two\n"), 204, nil)
		s.JSON("POST", "/api/v1/processes/"+pid+"/stdin/close", nil, 204, nil)
		var evs []sseEvent
		select {
		case evs = <-evc:
		case <-time.After(15 * time.Second):
			t.Fatal("follow did not end after the process exited")
		}
		last := evs[len(evs)-1]
		if last.Name != "eof" || len(last.Data) != 0 {
			t.Fatalf("last event %+v, want eof {}", last)
		}
		// Order holds within a stream; two pipes may interleave either way.
		got := map[any][]string{}
		for _, ev := range evs[:len(evs)-1] {
			if ev.Name != "output" || ev.Data["timestamp"] == nil {
				t.Fatalf("event %+v, want output with a timestamp", ev)
			}
			got[ev.Data["stream"]] = append(got[ev.Data["stream"]], ev.Data["line"].(string))
		}
		if o, e := strings.Join(got["stdout"], " "), strings.Join(got["stderr"], " "); o != "ready got:one got:two bye" || e != "e:one e:two" {
			t.Fatalf("followed stdout %q, stderr %q", o, e)
		}
	})
	rule(t, s, "an exited process keeps its exit code and end time, stdin no longer writable", func(t *testing.T) {
		done := waitStatus(t, s, pid, "exited")
		if *done.ExitCode != 0 || done.EndedAt == nil || done.StdinWritable {
			t.Fatalf("ended: %+v", done)
		}
	})
	rule(t, s, "stdout, stderr and output keep the lines, each stream in order", func(t *testing.T) {
		var out struct {
			Pid       int      `json:"pid"`
			Lines     []string `json:"lines"`
			LineCount int      `json:"line_count"`
		}
		s.JSON("GET", "/api/v1/processes/"+pid+"/stdout", nil, 200, &out)
		if out.Pid != p.Pid || strings.Join(out.Lines, ",") != "ready,got:one,got:two,bye" || out.LineCount != 4 {
			t.Fatalf("stdout: %+v", out)
		}
		s.JSON("GET", "/api/v1/processes/"+pid+"/stderr", nil, 200, &out)
		if strings.Join(out.Lines, ",") != "e:one,e:two" {
			t.Fatalf("stderr: %+v", out)
		}
		s.JSON("GET", "/api/v1/processes/"+pid+"/output", nil, 200, &out)
		if out.LineCount != 6 {
			t.Fatalf("output: %+v, want 6 lines", out)
		}
	})
	rule(t, s, "follow of an exited process replays and ends; stdout alone has no stream tag", func(t *testing.T) {
		resp := s.Do("GET", "/api/v1/processes/"+pid+"/stdout/follow", nil)
		evs := readSSE(t, resp.Body)
		if len(evs) != 5 || evs[0].Data["line"] != "ready" || evs[0].Data["stream"] != nil || evs[4].Name != "eof" {
			t.Fatalf("stdout follow after exit: %+v", evs)
		}
	})
	rule(t, s, "stdin after close is refused with 400", func(t *testing.T) {
		resp := s.Do("POST", "/api/v1/processes/"+pid+"/stdin", "late")
		if resp.StatusCode != 400 {
			t.Fatalf("stdin after close: %d", resp.StatusCode)
		}
	})
	var sl procInfo
	rule(t, s, "a signal reaches the process and its status names it", func(t *testing.T) {
		s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sleep", "args": []string{"60"}, "stdout_mode": "discard"}, 201, &sl)
		var ok map[string]bool
		s.JSON("POST", fmt.Sprintf("/api/v1/processes/%d/signal", sl.Pid), map[string]any{"signal": 15}, 200, &ok)
		if !ok["success"] {
			t.Fatalf("signal answer %v", ok)
		}
		sig := waitStatus(t, s, fmt.Sprint(sl.Pid), "signaled")
		if sig.Signal == nil || *sig.Signal != 15 {
			t.Fatalf("signaled: %+v, want signal 15", sig)
		}
	})
	rule(t, s, "list and info count every process, in start order", func(t *testing.T) {
		var list struct {
			Processes []procInfo `json:"processes"`
		}
		s.JSON("GET", "/api/v1/processes", nil, 200, &list)
		if len(list.Processes) != 2 || list.Processes[0].Pid != p.Pid || list.Processes[1].Pid != sl.Pid {
			t.Fatalf("list: %+v", list.Processes)
		}
		var info map[string]any
		s.JSON("GET", "/api/v1/info", nil, 200, &info)
		if info["total_processes"] != 2.0 || info["running_processes"] != 0.0 {
			t.Fatalf("info counts: %v, want 2 total, 0 running", info)
		}
	})
	rule(t, s, "a plain process restarts with the same command and a new pid", func(t *testing.T) {
		var again procInfo
		s.JSON("POST", fmt.Sprintf("/api/v1/processes/%d/restart", sl.Pid), nil, 200, &again)
		if again.Pid == sl.Pid || again.Status != "running" || again.Args[0] != "60" {
			t.Fatalf("restart: %+v", again)
		}
		s.JSON("DELETE", fmt.Sprintf("/api/v1/processes/%d", again.Pid), nil, 204, nil)
		waitStatus(t, s, fmt.Sprint(again.Pid), "signaled")
	})
}

// TestProcessSupervised is the supervision contract of named processes:
// restart policies, their back-off, health checks, restart and kill by name.
func TestProcessSupervised(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)

	var p procInfo
	rule(t, s, "a named process with a restart policy has a managed block", func(t *testing.T) {
		s.JSON("POST", "/api/v1/processes", map[string]any{
			"command": "sh", "args": []string{"-c", "sleep 0.1; exit 7"}, "name": "crasher",
			"restart": map[string]any{"max_restarts": 3, "initial_backoff_ms": 200, "max_backoff_ms": 1000},
		}, 201, &p)
		if p.Managed == nil || p.Managed.ID != "crasher" || *p.Managed.Name != "crasher" || p.Managed.Restart.Policy != "on_failure" {
			t.Fatalf("managed block: %+v (want id and name crasher, policy on_failure by default)", p.Managed)
		}
	})
	var gaps []int64
	seen := map[int]bool{p.Pid: true}
	rule(t, s, "on_failure restarts until max_restarts, then stops with the last exit", func(t *testing.T) {
		var lastEnd int64
		deadline := time.Now().Add(20 * time.Second)
		for {
			c := getProc(t, s, "crasher")
			seen[c.Pid] = true
			m := c.Managed
			if m.Status == "backing_off" && m.NextRestartAt != nil && c.EndedAt != nil && *c.EndedAt != lastEnd {
				gaps = append(gaps, *m.NextRestartAt-*c.EndedAt)
				lastEnd = *c.EndedAt
			}
			if m.Status == "stopped" {
				if m.RestartCount != 3 || m.LastExit == nil || *m.LastExit.ExitCode != 7 || m.LastError == nil {
					t.Fatalf("stopped crasher: %+v (want restart_count 3, last exit 7, a last_error)", m)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("crasher never stopped: %+v", m)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	rule(t, s, "each restart is a new instance", func(t *testing.T) {
		if len(seen) != 4 {
			t.Fatalf("saw pids %v, want 4 instances (the first and 3 restarts)", seen)
		}
	})
	rule(t, s, "the back-off grows from restart to restart", func(t *testing.T) {
		t.Logf("back-off gaps (ms): %v", gaps)
		if len(gaps) < 2 || gaps[len(gaps)-1] <= gaps[0] {
			t.Fatalf("back-off did not grow: %v", gaps)
		}
	})
	rule(t, s, "policy never does not restart", func(t *testing.T) {
		s.JSON("POST", "/api/v1/processes", map[string]any{
			"command": "sh", "args": []string{"-c", "exit 2"}, "name": "once", "restart": map[string]any{"policy": "never"},
		}, 201, &p)
		time.Sleep(1500 * time.Millisecond)
		once := getProc(t, s, "once")
		if once.Pid != p.Pid || once.Managed.Status != "stopped" || once.Managed.RestartCount != 0 {
			t.Fatalf("never: %+v %+v (want the same pid, stopped, no restarts)", once, once.Managed)
		}
	})
	rule(t, s, "a failing health check restarts the process, saying why", func(t *testing.T) {
		s.JSON("POST", "/api/v1/processes", map[string]any{
			"command": "sleep", "args": []string{"300"}, "name": "unhealthy",
			"health_check": map[string]any{"type": "tcp", "port": 1, "initial_delay_ms": 100, "interval_ms": 100, "failure_threshold": 2},
			"restart":      map[string]any{"initial_backoff_ms": 100},
		}, 201, &p)
		if p.Managed.Status != "starting" || p.Managed.HealthStatus != "starting" {
			t.Fatalf("health-checked start: %+v (want status and health starting)", p.Managed)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			u := getProc(t, s, "unhealthy")
			if u.Managed.RestartCount >= 1 && u.Pid != p.Pid {
				if u.Managed.LastError == nil || !strings.Contains(*u.Managed.LastError, "health") {
					t.Fatalf("restarted without a health error: %+v", u.Managed)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("unhealthy process not restarted: %+v", u.Managed)
			}
			time.Sleep(50 * time.Millisecond)
		}
		s.JSON("DELETE", "/api/v1/processes/unhealthy", nil, 204, nil)
	})

	// The checked server is the test's own (the sandbox shares this
	// machine's network).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hits := make(chan string, 100)
	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case hits <- r.URL.Path:
		default:
		}
	})}
	go web.Serve(ln)
	defer web.Close()
	rule(t, s, "an http health check asks its path and reports healthy", func(t *testing.T) {
		s.JSON("POST", "/api/v1/processes", map[string]any{
			"command": "sleep", "args": []string{"300"}, "name": "web",
			"health_check": map[string]any{"type": "http", "port": ln.Addr().(*net.TCPAddr).Port, "path": "/healthz", "initial_delay_ms": 100, "interval_ms": 100},
		}, 201, &p)
		deadline := time.Now().Add(15 * time.Second)
		for getProc(t, s, "web").Managed.HealthStatus != "healthy" {
			if time.Now().After(deadline) {
				t.Fatalf("web never healthy: %+v", getProc(t, s, "web").Managed)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if path := <-hits; path != "/healthz" {
			t.Fatalf("health check asked for %q, want /healthz", path)
		}
	})
	rule(t, s, "restart by name starts a new instance and counts it", func(t *testing.T) {
		var np procInfo
		s.JSON("POST", "/api/v1/processes/web/restart", nil, 200, &np)
		if np.Pid == p.Pid || np.Managed.RestartCount != 1 || np.Status != "running" {
			t.Fatalf("restart by name: %+v (want a new pid, running, restart_count 1)", np)
		}
	})
	rule(t, s, "kill by name stops it for good", func(t *testing.T) {
		s.JSON("DELETE", "/api/v1/processes/web", nil, 204, nil)
		time.Sleep(700 * time.Millisecond)
		w := getProc(t, s, "web")
		if w.Status == "running" || w.Managed.Status != "stopped" {
			t.Fatalf("killed web: %s %+v (want not running, managed stopped)", w.Status, w.Managed)
		}
	})
	rule(t, s, "a stopped name is free again", func(t *testing.T) {
		s.JSON("POST", "/api/v1/processes", map[string]any{"command": "true", "name": "web"}, 201, nil)
	})
}

// TestThousandConcurrentRuns: 1,000 short commands started through the
// proxy, 100 at a time, all report their true exit codes while the agent
// is PID 1 reaping everything.
func TestThousandConcurrentRuns(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	const total, parallel = 1000, 100
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: parallel, MaxConnsPerHost: parallel}}
	var wrong atomic.Int64
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			want := i % 256
			body := fmt.Sprintf(`{"command":"sh","args":["-c","exit %d"]}`, want)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			req := s.Request(ctx, "POST", "/api/v1/processes/run", strings.NewReader(body))
			resp, err := client.Do(req)
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				wrong.Add(1)
				return
			}
			defer resp.Body.Close()
			r := parseRun(t, readSSE(t, resp.Body))
			if r.end["exit_code"] != float64(want) {
				mu.Lock()
				firstErr = fmt.Errorf("command %d: end %v, want exit_code %d", i, r.end, want)
				mu.Unlock()
				wrong.Add(1)
			}
		}(i)
	}
	wg.Wait()
	t.Logf("%d runs, %d at a time, in %v", total, parallel, time.Since(start))
	if n := wrong.Load(); n > 0 {
		t.Fatalf("%d of %d runs wrong; e.g. %v", n, total, firstErr)
	}
}

// TestProcessBounds: the output kept per process and the exited processes
// kept are bounded by the agent's flags; dropped lines are counted.
func TestProcessBounds(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--proc-max-lines", "5", "--proc-max-exited", "3"}})
	ensureUser(t, s)
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "seq", "args": []string{"1", "20"}}, 201, &p)
	waitStatus(t, s, fmt.Sprint(p.Pid), "exited")
	var out struct {
		Lines   []string `json:"lines"`
		Dropped int      `json:"dropped_lines"`
	}
	s.JSON("GET", fmt.Sprintf("/api/v1/processes/%d/output", p.Pid), nil, 200, &out)
	if strings.Join(out.Lines, ",") != "16,17,18,19,20" || out.Dropped != 15 {
		t.Fatalf("kept %v, dropped %d", out.Lines, out.Dropped)
	}
	var pids []int
	for i := 0; i < 4; i++ {
		s.JSON("POST", "/api/v1/processes", map[string]any{"command": "true"}, 201, &p)
		waitStatus(t, s, fmt.Sprint(p.Pid), "exited")
		pids = append(pids, p.Pid)
	}
	var list struct {
		Processes []procInfo `json:"processes"`
	}
	s.JSON("GET", "/api/v1/processes", nil, 200, &list)
	var got []int
	for _, q := range list.Processes {
		got = append(got, q.Pid)
	}
	if fmt.Sprint(got) != fmt.Sprint(pids[1:]) {
		t.Fatalf("kept %v, want the newest three %v", got, pids[1:])
	}
}

// TestSlowFollowerDoesNotStall: a follower that reads nothing does not
// hold up a chatty process, and a stdin write is bounded per request.
func TestSlowFollowerDoesNotStall(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "sh", "args": []string{"-c", "read go; seq 1 300000"}, "stdin_mode": "pipe",
	}, 201, &p)
	pid := fmt.Sprint(p.Pid)
	follow := s.Do("GET", "/api/v1/processes/"+pid+"/output/follow", nil) // never read
	defer follow.Body.Close()
	big := strings.Repeat("x", 2<<20)
	resp := s.Do("POST", "/api/v1/processes/"+pid+"/stdin", big)
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 413 || !strings.Contains(string(data), "STDIN_TOO_LARGE") {
		t.Fatalf("2 MiB stdin: %d %s", resp.StatusCode, data)
	}
	s.JSON("POST", "/api/v1/processes/"+pid+"/stdin", "go\n", 204, nil)
	done := waitStatus(t, s, pid, "exited")
	if *done.ExitCode != 0 {
		t.Fatalf("exit %d", *done.ExitCode)
	}
	var out struct {
		Lines   []string `json:"lines"`
		Dropped int      `json:"dropped_lines"`
	}
	s.JSON("GET", "/api/v1/processes/"+pid+"/stdout", nil, 200, &out)
	if len(out.Lines) != 10000 || out.Lines[9999] != "300000" || out.Dropped != 290000 {
		t.Fatalf("kept %d lines (last %q), dropped %d", len(out.Lines), out.Lines[len(out.Lines)-1], out.Dropped)
	}
}

// TestShutdownWithSupervisedProcess: at SIGTERM the sweep ends a process
// whose policy is `always`, and the supervisor does not fight it.
func TestShutdownWithSupervisedProcess(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--shutdown-grace", "3s"}})
	ensureUser(t, s)
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "sleep", "args": []string{"300"}, "name": "forever",
		"restart": map[string]any{"policy": "always", "initial_backoff_ms": 50},
	}, 201, nil)
	start := time.Now()
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s.WaitAgentExit(30 * time.Second); code != 0 {
		t.Fatalf("agent exit %d\n%s", code, s.AgentLog())
	}
	t.Logf("agent stopped in %v", time.Since(start))
	if strings.Contains(s.AgentLog(), "restart failed") || strings.Count(s.AgentLog(), `"process started"`) != 1 {
		t.Fatalf("the supervisor restarted during shutdown:\n%s", s.AgentLog())
	}
}

// TestRunBackToBack: many quick runs on the proxy's pooled streams. The
// agent answers before the proxy's transport has finished with the
// request body; the front door must not close that body under it (it did,
// and the agent saw its client go away and killed the run).
func TestRunBackToBack(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	for i := 0; i < 300; i++ {
		resp := s.Do("POST", "/api/v1/processes/run", map[string]any{"command": "true", "user": "root"})
		data, err := io.ReadAll(resp.Body)
		if err != nil || !strings.Contains(string(data), `"exit_code":0`) {
			t.Fatalf("run %d: %v %q", i, err, data)
		}
		resp.Body.Close()
	}
}
