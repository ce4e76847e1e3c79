package integration

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// controlCall is a lifecycle call on the agent's control socket, as a
// runtime on the host makes it (`tl-agent lifecycle` does the same).
func controlCall(t *testing.T, s *System, op string, body string) (int, map[string]any) {
	t.Helper()
	c := &http.Client{Timeout: 100 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", s.ControlSocket())
	}}}
	resp, err := c.Post("http://agent/lifecycle/"+op, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("lifecycle %s on the control socket: %v", op, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("lifecycle %s: %d, not JSON: %q", op, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

// contiguous reports whether the numbers after prefix in out run 0..n
// without a gap, and n.
func contiguous(out, prefix string) (bool, int) {
	re := regexp.MustCompile(regexp.QuoteMeta(prefix) + `(\d+)`)
	want := 0
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		if n != want {
			return false, n
		}
		want++
	}
	return want > 0, want - 1
}

// TestSuspendResume is a platform's suspend and resume of a namespace
// sandbox: prepare on the control socket, the cgroup freezer over the
// whole sandbox (what `podman pause` does) for twice the PTY idle
// timeout, thaw, resume on the control socket with the host's time. A
// detached PTY session, an attached one printing ticks, a background
// process writing a counter and a health-checked service all come back:
// alive, no output lost, health checks did not count the pause; the
// uplink's return is logged.
func TestSuspendResume(t *testing.T) {
	RequireRoot(t)
	f := newFreezer(t)
	const idle, frozen = 3 * time.Second, 6 * time.Second
	s := ptySystem(t, Options{AgentArgs: []string{"--pty-idle-timeout", idle.String()}})
	f.addTree(s.AgentPid())

	ticker := ptyCreate(t, s, map[string]any{"command": "sh", "args": []string{"-c",
		"i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.2; done"}})
	attached := ptyDial(t, s, ticker)
	attached.ready()
	attached.waitFor("tick-3", 10*time.Second)
	s.JSON("POST", "/api/v1/processes", map[string]any{"name": "counter", "command": "sh", "args": []string{"-c",
		"i=0; while :; do echo count-$i >> /tmp/counter; i=$((i+1)); sleep 0.1; done"}}, 201, nil)
	svc := startFreezeServices(t, s)
	// Last, so that its idle clock (it is never attached) has run little
	// before the pause: only the pause would exceed the idle timeout.
	detached := ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1001"}})

	code, out := controlCall(t, s, "prepare", `{"timeout_ms": 20000}`)
	if code != http.StatusOK || out["state"] != "prepared" || out["synced"] != true {
		t.Fatalf("prepare: %d %v", code, out)
	}
	f.freeze()
	time.Sleep(frozen)
	if err := f.thaw(); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	thawed := time.Now()
	code, out = controlCall(t, s, "resume", `{"host_time": "`+time.Now().UTC().Format(time.RFC3339Nano)+`", "paused_ms": `+strconv.FormatInt(frozen.Milliseconds(), 10)+`}`)
	resumed := time.Since(thawed)
	if code != http.StatusOK || out["was_prepared"] != true {
		t.Fatalf("resume: %d %v", code, out)
	}
	if c, _ := out["clock"].(map[string]any); c == nil || c["stepped"] != false {
		t.Fatalf("the clock was stepped in a sandbox that does not own it: %v", out["clock"])
	}
	back := waitHealthy(s, thawed, 30*time.Second)
	if back < 0 {
		t.Fatalf("no health answer through the proxy within 30 s of the thaw\nagent log:\n%s", tail(s.AgentLog(), 30))
	}
	t.Logf("uplink: health answered through the proxy %v after the thaw (the resume call answered %v after it)",
		back.Round(time.Millisecond), resumed.Round(time.Millisecond))

	rule(t, s, "sessions outlive a pause longer than the idle timeout", func(t *testing.T) {
		for _, p := range []ptyCreated{detached, ticker} {
			if !ptyGet(t, s, p.SessionID).IsAlive {
				t.Fatalf("session %s dead after the resume", p.SessionID)
			}
		}
	})
	rule(t, s, "the attached session lost no output", func(t *testing.T) {
		again := ptyDial(t, s, ticker)
		again.ready()
		_, last := contiguous(attached.out.String(), "tick-")
		again.waitFor("tick-"+strconv.Itoa(last+10), 20*time.Second)
		if ok, n := contiguous(again.out.String(), "tick-"); !ok {
			t.Fatalf("replay after the resume skips at tick-%d: %q", n, tailStr(again.out.String(), 400))
		}
	})
	rule(t, s, "the background process kept counting", func(t *testing.T) {
		first, _ := os.ReadFile(s.SandboxPath("/tmp/counter"))
		time.Sleep(500 * time.Millisecond)
		later, _ := os.ReadFile(s.SandboxPath("/tmp/counter"))
		okA, a := contiguous(string(first), "count-")
		okB, b := contiguous(string(later), "count-")
		if !okA || !okB || b <= a {
			t.Fatalf("counter: %v %d then %v %d", okA, a, okB, b)
		}
	})
	rule(t, s, "health checks did not count the pause", func(t *testing.T) {
		svc.check(t, s, thawed, frozen)
	})
	rule(t, s, "the lifecycle is running again", func(t *testing.T) {
		var st struct {
			Lifecycle struct {
				State    string `json:"state"`
				Prepares int    `json:"prepares"`
				Resumes  int    `json:"resumes"`
			} `json:"lifecycle"`
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.ControlSocket())
		}}}
		resp, err := c.Get("http://agent/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Lifecycle.State != "running" || st.Lifecycle.Prepares != 1 || st.Lifecycle.Resumes != 1 {
			t.Fatalf("status: %+v %v", st.Lifecycle, err)
		}
	})
}
