package process

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestValidName(t *testing.T) {
	for _, n := range []string{"web", "my app", "a-1", "1a", "ünïcode"} {
		if err := validName(n); err != nil {
			t.Errorf("%q refused: %v", n, err)
		}
	}
	for _, n := range []string{"", "123", "0", "a/b", "/"} {
		if validName(n) == nil {
			t.Errorf("%q accepted", n)
		}
	}
}

func codeOf(err error) string {
	if err == nil {
		return ""
	}
	_, code := wireError(err)
	return code
}

func TestNormalizeRestartAndHealth(t *testing.T) {
	r, err := normalizeRestart(nil)
	if err != nil || r.Policy != PolicyOnFailure || r.InitialBackoffMs != 500 || r.MaxBackoffMs != 30000 || r.MaxRestarts != nil {
		t.Fatalf("defaults: %+v %v", r, err)
	}
	if _, err := normalizeRestart(&RestartPolicy{Policy: "sometimes"}); codeOf(err) != codeInvalidRestart {
		t.Fatalf("bad policy: %v", err)
	}
	neg := -1
	if _, err := normalizeRestart(&RestartPolicy{MaxRestarts: &neg}); err == nil {
		t.Fatal("negative max_restarts accepted")
	}
	h, err := normalizeHealth(&HealthCheck{Type: "http", Port: 80})
	if err != nil || h.Path != "/" || h.InitialDelayMs != 5000 || h.IntervalMs != 1000 || h.TimeoutMs != 500 || h.FailureThreshold != 3 {
		t.Fatalf("health defaults: %+v %v", h, err)
	}
	for _, bad := range []HealthCheck{{Type: "udp", Port: 1}, {Type: "tcp"}, {Type: "tcp", Port: 70000}, {Type: "tcp", Port: 1, IntervalMs: -1}} {
		if _, err := normalizeHealth(&bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestUserSpecForms(t *testing.T) {
	for body, want := range map[string]string{
		`"tl-user"`:          "tl-user",
		`"1000"`:             "1000",
		`"1000:1000"`:        "1000:1000",
		`{"name":"tl-user"}`: "tl-user",
	} {
		var u UserSpec
		if err := json.Unmarshal([]byte(body), &u); err != nil || u.Name != want {
			t.Errorf("%s: %+v %v", body, u, err)
		}
	}
	var u UserSpec
	if err := json.Unmarshal([]byte(`{"uid":5,"gid":6}`), &u); err != nil || *u.UID != 5 || *u.GID != 6 {
		t.Fatalf("object form: %+v %v", u, err)
	}
	if json.Unmarshal([]byte(`[1]`), &u) == nil {
		t.Fatal("array accepted")
	}
}

// TestHealthPath: a path that would change the probe's host (user info,
// another authority) or break its request line is refused.
func TestHealthPath(t *testing.T) {
	for _, bad := range []string{"@example.com/", "example.com/", "healthz", "/a b", "/a\r\nHost: x", "/\x7f", "/" + strings.Repeat("a", 2048)} {
		if _, err := normalizeHealth(&HealthCheck{Type: "http", Port: 80, Path: bad}); codeOf(err) != codeBadHealthPath {
			t.Errorf("path %q: %v", bad, err)
		}
	}
	for _, good := range []string{"/", "/healthz", "/a?b=c&d=%20", "//double"} {
		if _, err := normalizeHealth(&HealthCheck{Type: "http", Port: 80, Path: good}); err != nil {
			t.Errorf("path %q: %v", good, err)
		}
	}
}

// The restart waits the SDKs document: initial_backoff_ms doubling per
// consecutive quick exit, capped at max_backoff_ms, no jitter.
func TestRestartBackoffIsThePolicys(t *testing.T) {
	p, err := normalizeRestart(&RestartPolicy{InitialBackoffMs: 300, MaxBackoffMs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	b := p.backoff()
	for i, want := range []time.Duration{300, 600, 1000, 1000} {
		if got := b.Next(); got != want*time.Millisecond {
			t.Fatalf("restart %d waits %v, want %v", i+1, got, want*time.Millisecond)
		}
	}
	b.Reset()
	if got := b.Next(); got != 300*time.Millisecond {
		t.Fatalf("after a stable run the wait is %v, want initial_backoff_ms (300ms)", got)
	}
	d, _ := normalizeRestart(nil)
	b = d.backoff()
	if got := b.Next(); got != 500*time.Millisecond || b.Peek() != time.Second {
		t.Fatalf("default policy: first wait %v, next %v; want 500ms then 1s", got, b.Peek())
	}
}
