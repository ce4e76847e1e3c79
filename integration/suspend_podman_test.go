package integration

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestImageSuspendResume: the sandbox image under `podman pause` for
// twice the PTY idle timeout, then `podman unpause` and a resume on the
// control socket inside the container (`tl-agent lifecycle resume`, as a
// runtime would call it): a detached PTY session and a background
// counter survive with nothing lost, and the uplink's return is logged.
// The lifecycle's prepare runs first through the same socket.
func TestImageSuspendResume(t *testing.T) {
	RequireRoot(t)
	img := buildImage(t, "sandbox")
	const idle, paused = 3 * time.Second, 6 * time.Second
	s := Start(t, Options{NoAgent: true})
	c := runContainer(t, s, img, nil, "TL_AGENT_PTY_IDLE_TIMEOUT="+idle.String())
	t.Logf("podman run to serving: %v", c.serving(s))

	s.JSON("POST", "/api/v1/processes", map[string]any{"name": "counter", "command": "sh", "args": []string{"-c",
		"i=0; while :; do echo count-$i >> /tmp/counter; i=$((i+1)); sleep 0.1; done"}}, 201, nil)
	detached := ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"1001"}})
	out, err := c.exec("tl-agent", "lifecycle", "prepare", `{"timeout_ms": 20000}`)
	if err != nil || !strings.Contains(out, `"state":"prepared"`) {
		t.Fatalf("prepare in the container: %v %s", err, out)
	}
	if out, err := podman(t, "pause", c.name); err != nil {
		t.Skipf("podman pause not available here: %v %s", err, out)
	}
	time.Sleep(paused)
	if out, err := podman(t, "unpause", c.name); err != nil {
		t.Fatalf("podman unpause: %v %s", err, out)
	}
	unpaused := time.Now()
	out, err = c.exec("tl-agent", "lifecycle", "resume",
		`{"host_time": "`+time.Now().UTC().Format(time.RFC3339Nano)+`", "paused_ms": `+strconv.FormatInt(paused.Milliseconds(), 10)+`}`)
	if err != nil || !strings.Contains(out, `"was_prepared":true`) {
		t.Fatalf("resume in the container: %v %s", err, out)
	}
	if !strings.Contains(out, `"stepped":false`) {
		t.Fatalf("a container's agent stepped the clock: %s", out)
	}
	back := waitHealthy(s, unpaused, 30*time.Second)
	if back < 0 {
		t.Fatal("no health answer through the proxy within 30 s of the unpause")
	}
	t.Logf("uplink: health answered through the proxy %v after the unpause", back.Round(time.Millisecond))
	if !ptyGet(t, s, detached.SessionID).IsAlive {
		t.Fatal("the detached session died over a pause longer than the idle timeout")
	}
	first, _ := c.exec("cat", "/tmp/counter")
	var later string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		later, _ = c.exec("cat", "/tmp/counter")
		if len(later) > len(first) || time.Now().After(deadline) {
			break
		}
	}
	okA, a := contiguous(first, "count-")
	okB, b := contiguous(later, "count-")
	if !okA || !okB || b <= a {
		t.Fatalf("counter: contiguous %v up to %d, then %v up to %d", okA, a, okB, b)
	}
	c.stop()
}
