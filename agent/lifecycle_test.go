package agent

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/services"
	"github.com/tensorlake/tl-agent/supervisor"
	"github.com/tensorlake/tl-agent/uplink"
)

// fakeClock stands in for CLOCK_REALTIME: this machine's clock is never
// set by a test.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	sets []time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Set(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now, c.sets = t, append(c.sets, t)
	return nil
}

func lifecycleAgent(t *testing.T, owns bool) (*Agent, *fakeClock) {
	t.Helper()
	cfg := Defaults()
	cfg.SandboxID, cfg.Token, cfg.OwnsClock = "sbx-a", "0123456789abcdef0123", owns
	a := New(cfg, zerolog.Nop(), "test", Parts{})
	clk := &fakeClock{now: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)}
	a.clock = clk
	a.seed = func([]byte) error { return nil }
	return a, clk
}

func call(t *testing.T, a *Agent, op string, req any) (int, []byte, func()) {
	t.Helper()
	raw, _ := json.Marshal(req)
	code, body, after := a.lifecycleCall(context.Background(), op, func(v any) error { return json.Unmarshal(raw, v) })
	out, _ := json.Marshal(body)
	return code, out, after
}

// The clock is stepped only past the threshold and only with --owns-clock.
func TestResumeStepsClockOnlyWhenOwned(t *testing.T) {
	host := time.Date(2020, 1, 1, 1, 0, 0, 0, time.UTC) // an hour ahead of the fake
	for _, owns := range []bool{false, true} {
		a, clk := lifecycleAgent(t, owns)
		code, body, _ := call(t, a, "resume", ResumeRequest{HostTime: host.Format(time.RFC3339Nano)})
		var res ResumeResult
		_ = json.Unmarshal(body, &res)
		if code != 200 || res.Clock == nil || res.Clock.OffsetMS != float64(time.Hour.Milliseconds()) {
			t.Fatalf("owns=%v: %d %s", owns, code, body)
		}
		if res.Clock.Stepped != owns || (len(clk.sets) == 1) != owns {
			t.Fatalf("owns=%v: stepped %v, sets %v: %s", owns, res.Clock.Stepped, clk.sets, body)
		}
		if owns && !clk.now.Equal(host) {
			t.Fatalf("clock set to %v, want %v", clk.now, host)
		}
	}
	a, clk := lifecycleAgent(t, true)
	near := clk.now.Add(50 * time.Millisecond)
	if _, body, _ := call(t, a, "resume", ResumeRequest{HostTime: near.Format(time.RFC3339Nano)}); len(clk.sets) != 0 {
		t.Fatalf("a clock 50 ms off was stepped: %s", body)
	}
}

// Bad resumes change nothing; a good one with a new identity switches
// who the agent registers as and drops the parent's link secrets.
func TestResumeIdentityAndValidation(t *testing.T) {
	a, _ := lifecycleAgent(t, false)
	for name, req := range map[string]ResumeRequest{
		"id without token": {SandboxID: "sbx-b"},
		"bad id":           {SandboxID: "SBX B", Token: "0123456789abcdef"},
		"short token":      {Token: "short"},
		"bad time":         {HostTime: "yesterday"},
		"login env":        {Env: map[string]string{"LD_PRELOAD": "/x.so"}},
		"bad env name":     {Env: map[string]string{"A=B": "1"}},
		"huge seed":        {RandomSeed: strings.Repeat("QUFB", 200)},
	} {
		code, body, _ := call(t, a, "resume", req)
		if code != http.StatusBadRequest || !strings.Contains(string(body), "INVALID_REQUEST") {
			t.Errorf("%s: %d %s", name, code, body)
		}
	}
	if id, _ := a.identity(); id != "sbx-a" {
		t.Fatalf("a refused resume changed the id to %q", id)
	}
	a.secrets.set([]byte("parent link secret"))
	code, body, after := call(t, a, "resume", ResumeRequest{SandboxID: "sbx-b", Token: "fedcba9876543210fedc", Env: map[string]string{"CLONE": "b"}})
	if code != 200 || after == nil {
		t.Fatalf("resume: %d %s", code, body)
	}
	if id, tok := a.identity(); id != "sbx-b" || tok != "fedcba9876543210fedc" || a.sandboxID() != "sbx-b" {
		t.Fatalf("identity %q %q", id, tok)
	}
	if _, link := a.secrets.pick(nil); link {
		t.Fatal("the parent's link secret survived a new identity")
	}
	after() // no live link: nothing to kick, must not panic
}

// One call at a time; a prepare that fails rolls back and leaves the
// gate open; a prepared sandbox holds new API requests at the gate and
// resume lets them through; status reports the state.
func TestPrepareGateAndRollback(t *testing.T) {
	a, _ := lifecycleAgent(t, false)
	a.life.take()
	if code, body, _ := call(t, a, "prepare", PrepareRequest{}); code != http.StatusConflict || !strings.Contains(string(body), "BUSY") {
		t.Fatalf("second call: %d %s", code, body)
	}
	a.life.release()

	// / of this machine is never frozen: the prepare fails and rolls back.
	code, body, _ := call(t, a, "prepare", PrepareRequest{Filesystems: []string{"/"}})
	var pr PrepareResult
	_ = json.Unmarshal(body, &pr)
	if code != http.StatusConflict || !pr.RolledBack || pr.GateClosed || pr.State != "running" {
		t.Fatalf("prepare of /: %d %s", code, body)
	}
	if !a.gate.wait(context.Background(), 0) {
		t.Fatal("a failed prepare left the gate closed")
	}
	if st := a.lifecycleStatus(); st.State != "running" || st.RolledBack != 1 {
		t.Fatalf("status after rollback %+v", st)
	}

	code, body, _ = call(t, a, "prepare", PrepareRequest{ThawAfterMS: 60000})
	if code != 200 || !strings.Contains(string(body), `"state":"prepared"`) || !strings.Contains(string(body), `"synced":true`) {
		t.Fatalf("prepare: %d %s", code, body)
	}
	if code, _, _ := call(t, a, "prepare", PrepareRequest{}); code != http.StatusConflict {
		t.Fatalf("prepare twice: %d", code)
	}
	h := a.apiDoor(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	got := make(chan int, 1)
	go func() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/files?path=/", nil))
		got <- rec.Code
	}()
	select {
	case c := <-got:
		t.Fatalf("a request passed a closed gate: %d", c)
	case <-time.After(100 * time.Millisecond):
	}
	if code, body, _ := call(t, a, "resume", ResumeRequest{}); code != 200 || !strings.Contains(string(body), `"was_prepared":true`) {
		t.Fatalf("resume: %d %s", code, body)
	}
	select {
	case c := <-got:
		if c != 204 {
			t.Fatalf("held request answered %d", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a held request was not let through by the resume")
	}
	if a.activity.Last().IsZero() {
		t.Fatal("an API request was not recorded as activity")
	}
}

// A prepare no resume follows is thawed by itself.
func TestPrepareAutoThaw(t *testing.T) {
	a, _ := lifecycleAgent(t, false)
	if code, body, _ := call(t, a, "prepare", PrepareRequest{ThawAfterMS: 50}); code != 200 {
		t.Fatalf("prepare: %d %s", code, body)
	}
	for deadline := time.Now().Add(5 * time.Second); a.lifecycleStatus().State != "running"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not thawed 5 s after a 50 ms thaw_after")
		}
	}
	if st := a.lifecycleStatus(); st.AutoThawed != 1 || !a.gate.wait(context.Background(), 0) {
		t.Fatalf("after auto-thaw: %+v", st)
	}
}

// The lifecycle stream: junk, an oversized call and an unknown op are
// answered with the reason, a status call answers; while prepared, a new
// API stream waits at the gate and the platform's own kinds do not.
func TestLifecycleStream(t *testing.T) {
	a, _ := lifecycleAgent(t, false)
	up := pipeUplink(t, a)
	callStream := func(payload string) uplink.LifecycleAnswer {
		t.Helper()
		c, err := open(t, up, uplink.Header{Kind: uplink.KindLifecycle})
		if err != nil {
			t.Fatalf("lifecycle stream refused: %v", err)
		}
		defer c.Close()
		go func() { _, _ = io.WriteString(c, payload) }()
		var ans uplink.LifecycleAnswer
		if err := json.NewDecoder(c).Decode(&ans); err != nil {
			t.Fatalf("no answer to %.40q: %v", payload, err)
		}
		return ans
	}
	for name, payload := range map[string]string{
		"junk":      "}{ not json",
		"oversized": `{"op":"resume","request":{"env":{"A":"` + strings.Repeat("x", uplink.MaxLifecycleBody) + `"}}}`,
	} {
		if ans := callStream(payload); ans.Status != http.StatusBadRequest {
			t.Errorf("%s: %d %s", name, ans.Status, ans.Body)
		}
	}
	if ans := callStream(`{"op":"reboot"}`); ans.Status != http.StatusNotFound {
		t.Errorf("unknown op: %d %s", ans.Status, ans.Body)
	}
	if ans := callStream(`{"op":"status"}`); ans.Status != 200 || !strings.Contains(string(ans.Body), `"state":"running"`) {
		t.Errorf("status: %d %s", ans.Status, ans.Body)
	}
	if ans := callStream(`{"op":"prepare","request":{}}`); ans.Status != 200 {
		t.Fatalf("prepare: %d %s", ans.Status, ans.Body)
	}
	held := make(chan error, 1)
	go func() {
		c, err := open(t, up, uplink.Header{Kind: uplink.KindAPI})
		if c != nil {
			c.Close()
		}
		held <- err
	}()
	select {
	case err := <-held:
		t.Fatalf("an api stream passed a closed gate: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if ans := callStream(`{"op":"status"}`); !strings.Contains(string(ans.Body), `"state":"prepared"`) {
		t.Fatalf("status while prepared: %s", ans.Body)
	}
	if ans := callStream(`{"op":"resume"}`); ans.Status != 200 {
		t.Fatalf("resume: %d %s", ans.Status, ans.Body)
	}
	select {
	case err := <-held:
		if err != nil {
			t.Fatalf("the held api stream was refused after the resume: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the held api stream was not let through by the resume")
	}
}

// A pre-snapshot hook that fails vetoes the prepare: nothing stays held.
func TestPrepareHookVeto(t *testing.T) {
	r := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	defer close(stop)
	dir := t.TempDir()
	phase := filepath.Join(dir, services.PreSnapshot+".d")
	if err := os.MkdirAll(phase, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(phase, "10-veto"), []byte("#!/bin/sh\nexit 4\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	a, _ := lifecycleAgent(t, false)
	a.hooks = &services.Hooks{Dir: dir, Timeout: 5 * time.Second, Reaper: r, Log: zerolog.Nop()}
	code, body, _ := call(t, a, "prepare", PrepareRequest{})
	if code != http.StatusConflict || !strings.Contains(string(body), "10-veto") || !strings.Contains(string(body), `"rolled_back":true`) {
		t.Fatalf("prepare with a failing hook: %d %s", code, body)
	}
	if !a.gate.wait(context.Background(), 0) || a.lifecycleStatus().State != "running" {
		t.Fatal("a vetoed prepare left the sandbox held")
	}
}
