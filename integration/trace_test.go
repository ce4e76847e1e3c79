package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/textproto"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tensorlake/tl-agent/internal/reqid"
)

// TestRequestIDsAcrossHops follows request ids from a real client (curl,
// OpenSSH) through tl-proxy into tl-agent and back: the id a client sends
// or is given comes back in the response's headers and is on the events
// of that request in both logs.
func TestRequestIDsAcrossHops(t *testing.T) {
	RequireRoot(t)
	key := NewSSHKey(t, "trace-test")
	s := Start(t, Options{SSHKeys: WriteAuthorizedKeys(t, key.Public)})
	ensureUser(t, s)
	httpIDRules(t, s)
	sshIDRules(t, s, key)
}

// httpIDRules are the HTTP front door's rules of TestRequestIDsAcrossHops.
func httpIDRules(t *testing.T, s *System) {
	rule(t, s, "a client's X-Request-Id comes back and is on the request's events in both logs", func(t *testing.T) {
		rid := "trace-test-" + randHex(8)
		h, pid := curlStart(t, s, "X-Request-Id: "+rid)
		if got := h.Get("X-Request-Id"); got != rid {
			t.Fatalf("response X-Request-Id %q, want the client's %q", got, rid)
		}
		if len(h.Values("X-Request-Id")) != 1 || len(h.Values("Traceparent")) != 1 {
			t.Fatalf("want one X-Request-Id and one traceparent in the response, got %q and %q", h.Values("X-Request-Id"), h.Values("Traceparent"))
		}
		trace, _, _, err := reqid.ParseTraceparent(h.Get("Traceparent"))
		if err != nil {
			t.Fatalf("response traceparent %q: %v", h.Get("Traceparent"), err)
		}
		waitEvents(t, "proxy", s.ProxyLog, "request_id", rid, "request")
		agent := waitEvents(t, "agent", s.AgentLog, "request_id", rid, "api request", "process started")
		for _, ev := range agent {
			if ev["trace_id"] != trace {
				t.Fatalf("agent event %v: trace_id is not the response's %s", ev, trace)
			}
			if ev["message"] == "process started" && ev["pid"] != float64(pid) {
				t.Fatalf("agent event %v: not the started process %d", ev, pid)
			}
		}
		everyEventHasID(t, "agent", s.AgentLog(), "api request", "process started")
		everyEventHasID(t, "proxy", s.ProxyLog(), "request")
	})

	rule(t, s, "a run's events, its process's exit included, carry the run request's id", func(t *testing.T) {
		rid := "trace-run-" + randHex(8)
		out, err := exec.Command("curl", "-sS", "--max-time", "20", "-D", "-", "-N",
			"-H", "Host: "+s.SandboxID+".local", "-H", "Authorization: Bearer "+s.APIKey,
			"-H", "Content-Type: application/json", "-H", "X-Request-Id: "+rid,
			"--data", `{"command":"/bin/echo","args":["`+rid+`"]}`, s.BaseURL()+"/api/v1/processes/run").Output()
		if err != nil || !strings.Contains(string(out), "X-Request-Id: "+rid) || !strings.Contains(string(out), rid) {
			t.Fatalf("curl run: %v\n%s", err, out)
		}
		evs := waitEvents(t, "agent", s.AgentLog, "request_id", rid, "api request", "process started", "process ended")
		var pids []any
		for _, ev := range evs {
			if ev["pid"] != nil {
				pids = append(pids, ev["pid"])
			}
		}
		if len(pids) != 2 || pids[0] != pids[1] {
			t.Fatalf("want the start and the exit of one process with the run's id, got %v", evs)
		}
	})

	rule(t, s, "a valid traceparent keeps its trace-id, gets the proxy's parent-id and names the request", func(t *testing.T) {
		const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
		h, _ := curlStart(t, s, "traceparent: 00-"+trace+"-"+parent+"-01")
		gotTrace, gotParent, flags, err := reqid.ParseTraceparent(h.Get("Traceparent"))
		if err != nil || gotTrace != trace || gotParent == parent || flags != 1 {
			t.Fatalf("response traceparent %q (%v): want trace %s kept, a new parent-id, flags 01", h.Get("Traceparent"), err, trace)
		}
		if got := h.Get("X-Request-Id"); got != trace {
			t.Fatalf("response X-Request-Id %q: with no X-Request-Id sent, want the trace id %s", got, trace)
		}
		waitEvents(t, "proxy", s.ProxyLog, "trace_id", trace, "request")
		waitEvents(t, "agent", s.AgentLog, "trace_id", trace, "api request", "process started")
	})

	rule(t, s, "a malformed traceparent gets a new valid one", func(t *testing.T) {
		bad := "00-" + strings.Repeat("0", 32) + "-00f067aa0ba902b7-01"
		h, _ := curlStart(t, s, "traceparent: "+bad)
		trace, _, _, err := reqid.ParseTraceparent(h.Get("Traceparent"))
		if err != nil {
			t.Fatalf("response traceparent %q: %v", h.Get("Traceparent"), err)
		}
		waitEvents(t, "agent", s.AgentLog, "trace_id", trace, "api request", "process started")
	})

	rule(t, s, "an X-Request-Id that is too long or not printable is replaced", func(t *testing.T) {
		for _, bad := range []string{strings.Repeat("x", reqid.MaxRequestID+1), "two words"} {
			h, _ := curlStart(t, s, "X-Request-Id: "+bad)
			got := h.Get("X-Request-Id")
			if got == bad || !reqid.ValidRequestID(got) {
				t.Fatalf("X-Request-Id %q came back as %q: want a new, valid one", bad, got)
			}
			waitEvents(t, "agent", s.AgentLog, "request_id", got, "api request")
		}
	})

}

// sshIDRules are the SSH front door's rules of TestRequestIDsAcrossHops.
func sshIDRules(t *testing.T, s *System, key SSHKey) {
	rule(t, s, "an SSH connection's id is on its events in both logs", func(t *testing.T) {
		marker := "trace-ssh-" + randHex(4)
		args := append(s.SSHArgs(key.Private), s.SSHDest(), "echo "+marker)
		if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil || !strings.Contains(string(out), marker) {
			t.Fatalf("ssh: %v %s", err, out)
		}
		var rid string
		for _, ev := range waitMessage(t, "proxy", s.ProxyLog, "ssh disconnected") {
			if ev["key"] == "trace-test" {
				rid, _ = ev["request_id"].(string)
			}
		}
		if !reqid.ValidRequestID(rid) {
			t.Fatalf("the proxy's ssh events carry no request id")
		}
		waitEvents(t, "proxy", s.ProxyLog, "request_id", rid, "ssh connected", "ssh disconnected")
		waitEvents(t, "agent", s.AgentLog, "request_id", rid, "stream to ssh", "ssh exec", "ssh connection ended")
		everyEventHasID(t, "agent", s.AgentLog(), "stream to ssh", "ssh exec", "ssh connection ended")
	})

	rule(t, s, "a connection's forwards log its id on the agent", func(t *testing.T) {
		args := append(s.SSHArgs(key.Private), "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", s.SSHDest(), "true")
		if out, err := exec.Command("ssh", args...).CombinedOutput(); err != nil {
			t.Fatalf("ssh -R: %v %s", err, out)
		}
		waitMessage(t, "agent", s.AgentLog, "ssh remote forward")
		everyEventHasID(t, "agent", s.AgentLog(), "ssh remote forward")
	})
}

// curlStart starts a process through the proxy with curl, with one extra
// request header, and returns the response's headers and the pid.
func curlStart(t *testing.T, s *System, header string) (http.Header, int) {
	t.Helper()
	out, err := exec.Command("curl", "-sS", "--max-time", "20", "-D", "-",
		"-H", "Host: "+s.SandboxID+".local", "-H", "Authorization: Bearer "+s.APIKey,
		"-H", "Content-Type: application/json", "-H", header,
		"--data", `{"command":"/bin/true"}`, s.BaseURL()+"/api/v1/processes").Output()
	if err != nil {
		t.Fatalf("curl: %v %s", err, out)
	}
	tp := textproto.NewReader(bufio.NewReader(strings.NewReader(string(out))))
	status, err := tp.ReadLine()
	if err != nil || !strings.Contains(status, " 201") {
		t.Fatalf("curl: status %q (%v), want 201:\n%s", status, err, out)
	}
	mh, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatalf("curl: headers: %v\n%s", err, out)
	}
	var body struct {
		Pid int `json:"pid"`
	}
	rest := string(out)
	if i := strings.Index(rest, "\r\n\r\n"); i >= 0 {
		rest = rest[i+4:]
	}
	if err := json.Unmarshal([]byte(rest), &body); err != nil || body.Pid == 0 {
		t.Fatalf("curl: body %q: %v", rest, err)
	}
	return http.Header(mh), body.Pid
}

// logEvents are the JSON events of a log (other lines skipped).
func logEvents(log string) []map[string]any {
	var evs []map[string]any
	for _, line := range strings.Split(log, "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) == nil {
			evs = append(evs, ev)
		}
	}
	return evs
}

// waitEvents waits (at most 20 s) until log has, with field == value, an
// event of each message in msgs, and returns the events with that value.
func waitEvents(t *testing.T, name string, log func() string, field, value string, msgs ...string) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var with []map[string]any
		seen := map[string]bool{}
		for _, ev := range logEvents(log()) {
			if ev[field] == value {
				with = append(with, ev)
				seen[fmt.Sprint(ev["message"])] = true
			}
		}
		var missing []string
		for _, m := range msgs {
			if !seen[m] {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 {
			return with
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s log: no event %q with %s=%s; events with it: %v", name, missing, field, value, with)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitMessage waits (at most 20 s) for events with message msg.
func waitMessage(t *testing.T, name string, log func() string, msg string) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if evs := messages(log, msg); len(evs) > 0 {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s log: no event %q", name, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// messages is the events with message msg so far.
func messages(log func() string, msg string) []map[string]any {
	var evs []map[string]any
	for _, ev := range logEvents(log()) {
		if ev["message"] == msg {
			evs = append(evs, ev)
		}
	}
	return evs
}

// everyEventHasID checks that no event with one of msgs lacks a
// request_id and a trace_id: these are events of requests, and every one
// names its request.
func everyEventHasID(t *testing.T, name, log string, msgs ...string) {
	t.Helper()
	for _, ev := range logEvents(log) {
		for _, m := range msgs {
			if ev["message"] != m {
				continue
			}
			if rid, _ := ev["request_id"].(string); !reqid.ValidRequestID(rid) || !reqid.ValidTraceID(fmt.Sprint(ev["trace_id"])) {
				t.Fatalf("%s log: event of a request without its ids: %v", name, ev)
			}
		}
	}
}

// TestAgentLogLevel: `tl-agent log-level` prints the running agent's
// level and changes it without a restart: debug events appear after
// `log-level debug` and stop after `log-level info`; an unknown level is
// refused with the reason and changes nothing.
func TestAgentLogLevel(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--log-level", "info"}})
	a := levelAgent{s}
	rule(t, s, "log-level prints the level the agent started with", func(t *testing.T) {
		if out, err := a.level(); err != nil || out != "info" {
			t.Fatalf("log-level: %q %v, want info", out, err)
		}
		rid := a.probe(t)
		a.settled(t, "info")
		if a.hasDebug(rid) {
			t.Fatalf("a debug event at level info")
		}
	})
	rule(t, s, "log-level debug shows debug events at once", func(t *testing.T) {
		if out, err := a.level("debug"); err != nil || out != "debug (was info)" {
			t.Fatalf("log-level debug: %q %v", out, err)
		}
		rid := a.probe(t)
		waitEvents(t, "agent", s.AgentLog, "request_id", rid, "api request")
		if out, _ := a.level(); out != "debug" {
			t.Fatalf("log-level after the change: %q", out)
		}
	})
	rule(t, s, "an unknown level is refused with the reason and changes nothing", func(t *testing.T) {
		out, err := a.level("chatty")
		if err == nil || !strings.Contains(out, "want debug, info, warn or error") {
			t.Fatalf("log-level chatty: %q %v, want a refusal naming the levels", out, err)
		}
		if out, _ := a.level(); out != "debug" {
			t.Fatalf("after a refused level: %q, want debug", out)
		}
	})
	rule(t, s, "log-level info hides debug events again", func(t *testing.T) {
		if out, err := a.level("info"); err != nil || out != "info (was debug)" {
			t.Fatalf("log-level info: %q %v", out, err)
		}
		rid := a.probe(t)
		a.settled(t, "info")
		if a.hasDebug(rid) {
			t.Fatalf("a debug event after log-level info")
		}
	})
}

// levelAgent drives the log level of a system's agent.
type levelAgent struct{ s *System }

// level runs `tl-agent log-level args...` against the agent.
func (a levelAgent) level(args ...string) (string, error) {
	bin := filepath.Join(a.s.bin, "tl-agent")
	out, err := exec.Command(bin, append([]string{"log-level", "--socket", a.s.ControlSocket()}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// probe sends a request whose debug event ("api request") carries the
// returned id.
func (a levelAgent) probe(t *testing.T) string {
	t.Helper()
	rid := "level-probe-" + randHex(6)
	req := a.s.Request(t.Context(), "GET", "/api/v1/health", nil)
	req.Header.Set("X-Request-Id", rid)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	r.Body.Close()
	return rid
}

// settled waits until the agent's log has caught up with what it wrote
// so far: setting the level again (to cur) logs a change event, at no
// level so always, after everything before it.
func (a levelAgent) settled(t *testing.T, cur string) {
	t.Helper()
	n := len(messages(a.s.AgentLog, "log level changed"))
	if out, err := a.level(cur); err != nil || !strings.HasPrefix(out, cur) {
		t.Fatalf("log-level %s: %q %v", cur, out, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(messages(a.s.AgentLog, "log level changed")) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("agent log: no \"log level changed\" event")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hasDebug reports whether the probe rid's debug event was logged.
func (a levelAgent) hasDebug(rid string) bool {
	for _, ev := range logEvents(a.s.AgentLog()) {
		if ev["request_id"] == rid && ev["message"] == "api request" {
			return true
		}
	}
	return false
}
