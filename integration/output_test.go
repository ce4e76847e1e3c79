package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStalledStdinUploadBlocksNobody: a client that announces a 1000-byte
// stdin body and sends 6 bytes holds nothing but its own request: the
// process list answers, another client's stdin write goes through, and
// the process's kill and exit are recorded (all three hung behind the
// stalled upload when the stdin lock was held while reading the body).
func TestStalledStdinUploadBlocksNobody(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "cat", "stdin_mode": "pipe"}, 201, &p)
	pid := fmt.Sprint(p.Pid)

	c, err := net.Dial("tcp", s.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /api/v1/processes/%s/stdin HTTP/1.1\r\nHost: %s.local\r\nAuthorization: Bearer %s\r\n"+
		"Content-Length: 1000\r\n\r\nstall\n", pid, s.SandboxID, s.APIKey)
	time.Sleep(500 * time.Millisecond) // let the agent start reading the body

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/processes", nil))
	if err != nil {
		t.Fatalf("the process list hangs behind a stalled stdin upload: %v", err)
	}
	resp.Body.Close()
	resp, err = http.DefaultClient.Do(s.Request(ctx, "POST", "/api/v1/processes/"+pid+"/stdin", strings.NewReader("hello\n")))
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("another client's stdin write: %v %v", err, resp)
	}
	resp.Body.Close()
	for i := 0; i < 100; i++ {
		var out struct {
			Lines []string `json:"lines"`
		}
		s.JSON("GET", "/api/v1/processes/"+pid+"/stdout", nil, 200, &out)
		if strings.Join(out.Lines, ",") == "hello" {
			break
		}
		if i == 99 {
			t.Fatalf("stdout %v, want the other client's line", out.Lines)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err = http.DefaultClient.Do(s.Request(ctx, "DELETE", "/api/v1/processes/"+pid, nil))
	if err != nil || resp.StatusCode != 204 {
		t.Fatalf("kill: %v %v", err, resp)
	}
	resp.Body.Close()
	waitStatus(t, s, pid, "signaled")
}

// TestHealthCheckPathRefused: a health_check.path that does not start with
// '/' is refused (with "@example.com/" the probe's URL named another host).
func TestHealthCheckPathRefused(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	for _, path := range []string{"@example.com/", "healthz", "/a b"} {
		s.WantError(t, "POST", "/api/v1/processes", map[string]any{
			"command": "sleep", "args": []string{"30"}, "name": "svc",
			"health_check": map[string]any{"type": "http", "port": 8080, "path": path},
		}, 400, "INVALID_HEALTH_CHECK")
	}
	var list struct {
		Processes []procInfo `json:"processes"`
	}
	s.JSON("GET", "/api/v1/processes", nil, 200, &list)
	if len(list.Processes) != 0 {
		t.Fatalf("refused requests started %v", list.Processes)
	}
}

// eachEvent calls fn with each server-sent event's name and data until the
// stream ends or fn returns false; it returns the read error, if any.
func eachEvent(r io.Reader, fn func(name, data string) bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var name, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != "" && !fn(name, data) {
				return nil
			}
			name, data = "", ""
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		}
	}
	return sc.Err()
}

// lineOf returns a line event's text, fast for the plain lines these tests
// print (no escapes); ok is false for other events.
func lineOf(data string) (string, bool) {
	const key = `{"line":"`
	if !strings.HasPrefix(data, key) {
		return "", false
	}
	rest := data[len(key):]
	end := strings.IndexByte(rest, '"')
	if end < 0 {
		return "", false
	}
	return rest[:end], true
}

// lineChecker checks that lines arrive in order with no silent gap: line
// i is want(i), and a skipped event moves i on by its count.
type lineChecker struct {
	t         testing.TB
	want      func(i int) string
	next      int
	delivered int
	skipped   int
	skips     int
}

func (c *lineChecker) event(name, data string) {
	c.t.Helper()
	if line, ok := lineOf(data); ok {
		if w := c.want(c.next); line != w {
			c.t.Fatalf("line %d is %q, want %q: a silent gap or disorder", c.next, line, w)
		}
		c.next++
		c.delivered++
		return
	}
	if name == "skipped" {
		var ev struct {
			N *int `json:"skipped_lines"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil || ev.N == nil || *ev.N <= 0 {
			c.t.Fatalf("bad skipped event %q", data)
		}
		c.next += *ev.N
		c.skipped += *ev.N
		c.skips++
	}
}

// runStream posts a run and returns its open event stream.
func runStream(t testing.TB, s *System, ctx context.Context, body map[string]any) io.ReadCloser {
	t.Helper()
	data, _ := json.Marshal(body)
	req := s.Request(ctx, "POST", "/api/v1/processes/run", bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("run: %d %s", resp.StatusCode, b)
	}
	return resp.Body
}

// runAll runs body and checks every line in order; it returns the last
// event (the exit) and the checker.
func runAll(t *testing.T, s *System, body map[string]any, want func(i int) string) (map[string]any, *lineChecker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	stream := runStream(t, s, ctx, body)
	defer stream.Close()
	c := &lineChecker{t: t, want: want}
	var last map[string]any
	n := 0
	err := eachEvent(stream, func(name, data string) bool {
		n++
		if _, ok := lineOf(data); ok || name == "skipped" {
			c.event(name, data)
			return true
		}
		last = nil
		if err := json.Unmarshal([]byte(data), &last); err != nil {
			t.Fatalf("event %d: %q: %v", n, data, err)
		}
		return true
	})
	if err != nil {
		t.Fatalf("run stream after %d lines: %v", c.delivered, err)
	}
	return last, c
}

// TestRunEveryLineInOrder: `seq 1 1000000` through run gets every line in
// order, then its exit, with no skip: the process's pipe is read only as
// fast as the client takes events. Before, 49,424 of 100,000 arrived and
// then exit_code 0. The agent's memory stays bounded (logged).
func TestRunEveryLineInOrder(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	pid := s.AgentPid()
	before := vmKB(t, pid, "VmRSS")
	start := time.Now()
	const n = 1000000
	end, c := runAll(t, s, map[string]any{"command": "seq", "args": []string{"1", fmt.Sprint(n)}},
		func(i int) string { return strconv.Itoa(i + 1) })
	if c.delivered != n || c.skipped != 0 || end["exit_code"] != float64(0) {
		t.Fatalf("%d lines delivered, %d skipped, end %v", c.delivered, c.skipped, end)
	}
	t.Logf("%d lines in %v; agent RSS %d KiB before, %d KiB after, peak %d KiB",
		n, time.Since(start), before, vmKB(t, pid, "VmRSS"), vmKB(t, pid, "VmHWM"))
	if grown := vmKB(t, pid, "VmHWM") - before; grown > 64<<10 {
		t.Fatalf("agent peak RSS grew by %d KiB", grown)
	}
}

// TestRunBurst200MB: a 200 MB burst (2,000,000 lines of 100 digits)
// through run arrives whole and in order.
func TestRunBurst200MB(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	pid := s.AgentPid()
	before := vmKB(t, pid, "VmRSS")
	start := time.Now()
	const n = 2000000
	end, c := runAll(t, s, map[string]any{"command": "seq", "args": []string{"-f", "%0100.0f", "1", fmt.Sprint(n)}},
		func(i int) string { return fmt.Sprintf("%0100d", i+1) })
	if c.delivered != n || c.skipped != 0 || end["exit_code"] != float64(0) {
		t.Fatalf("%d lines delivered, %d skipped, end %v", c.delivered, c.skipped, end)
	}
	t.Logf("%d MB in %v; agent RSS %d KiB before, peak %d KiB", n*101/1000000, time.Since(start), before, vmKB(t, pid, "VmHWM"))
	if grown := vmKB(t, pid, "VmHWM") - before; grown > 64<<10 {
		t.Fatalf("agent peak RSS grew by %d KiB", grown)
	}
}
