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
	allowCut  bool // the last line may be cut short (its writer was killed)
	cut       bool
}

func (c *lineChecker) event(name, data string) {
	c.t.Helper()
	if line, ok := lineOf(data); ok {
		w := c.want(c.next)
		switch {
		case c.cut:
			c.t.Fatalf("line %d (%q) after a cut line", c.next, line)
		case line != w && c.allowCut && strings.HasPrefix(w, line):
			c.cut = true // the last line of a killed writer
		case line != w:
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

// follow opens a follow stream of pid (stream: stdout, stderr, output).
func follow(t testing.TB, s *System, ctx context.Context, pid, stream string) *http.Response {
	t.Helper()
	resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/processes/"+pid+"/"+stream+"/follow", nil))
	if err != nil {
		t.Fatalf("follow: %v", err)
	}
	return resp
}

// followAll reads a follow stream to its eof event, checking the lines.
func followAll(t testing.TB, body io.Reader, want func(i int) string) (*lineChecker, bool) {
	t.Helper()
	c := &lineChecker{t: t, want: want}
	eof := false
	err := eachEvent(body, func(name, data string) bool {
		if name == "eof" {
			eof = true
			return false
		}
		c.event(name, data)
		return true
	})
	if err != nil {
		t.Fatalf("follow stream after %d lines: %v", c.delivered, err)
	}
	return c, eof
}

// startGated starts `seq args` behind a `read` on stdin, so followers can
// be in place before the first line; go() lets it run.
func startGated(t testing.TB, s *System, args string) (pid string, goOn func()) {
	t.Helper()
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "sh", "args": []string{"-c", "read go; exec seq " + args}, "stdin_mode": "pipe",
	}, 201, &p)
	pid = fmt.Sprint(p.Pid)
	return pid, func() { s.JSON("POST", "/api/v1/processes/"+pid+"/stdin", "go\n", 204, nil) }
}

// TestFollowFastProducerNoSilentGap: a follower reading flat out while
// `seq 1 1000000` writes gets every line or an explicit skipped count,
// never a silent gap, and all lines are accounted for at eof. Before, it
// skipped 2.1 M of 3 M lines without a word.
func TestFollowFastProducerNoSilentGap(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	const n = 1000000
	pid, goOn := startGated(t, s, "1 "+fmt.Sprint(n))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, stream := range []string{"output", "stdout"} {
		resp := follow(t, s, ctx, pid, stream)
		defer resp.Body.Close()
		if stream == "output" {
			goOn()
			c, eof := followAll(t, resp.Body, func(i int) string { return strconv.Itoa(i + 1) })
			if !eof || c.next != n {
				t.Fatalf("eof %v; accounted for %d of %d lines", eof, c.next, n)
			}
			t.Logf("live follower: %d lines delivered, %d skipped in %d skipped events", c.delivered, c.skipped, c.skips)
			continue
		}
	}
	// A late follower of the ended process: the kept 10,000 lines, after
	// a skipped event for the 990,000 no longer kept.
	resp := follow(t, s, ctx, pid, "stdout")
	defer resp.Body.Close()
	c, eof := followAll(t, resp.Body, func(i int) string { return strconv.Itoa(i + 1) })
	if !eof || c.next != n || c.delivered != 10000 || c.skipped != n-10000 || c.skips != 1 {
		t.Fatalf("late follower: eof %v, next %d, delivered %d, skipped %d in %d events", eof, c.next, c.delivered, c.skipped, c.skips)
	}
}

// TestStalledFollowerDoesNotSlowFastOne: beside a follower that reads
// nothing, a fast follower reads to eof with every line accounted for and
// the process ends; the stalled follower is dropped after the stall
// timeout; the agent's memory stays bounded (logged).
func TestStalledFollowerDoesNotSlowFastOne(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--proc-stall-timeout", "3s"}})
	ensureUser(t, s)
	agent := s.AgentPid()
	before := vmKB(t, agent, "VmRSS")
	const n = 500000
	pid, goOn := startGated(t, s, "1 "+fmt.Sprint(n))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stalled := follow(t, s, ctx, pid, "output") // never read until the end
	defer stalled.Body.Close()
	fast := follow(t, s, ctx, pid, "output")
	defer fast.Body.Close()
	goOn()
	c, eof := followAll(t, fast.Body, func(i int) string { return strconv.Itoa(i + 1) })
	if !eof || c.next != n {
		t.Fatalf("fast follower: eof %v, accounted for %d of %d", eof, c.next, n)
	}
	waitStatus(t, s, pid, "exited")
	t.Logf("fast follower: %d delivered, %d skipped; agent RSS %d KiB before, peak %d KiB", c.delivered, c.skipped, before, vmKB(t, agent, "VmHWM"))
	for i := 0; i < 200 && !strings.Contains(s.AgentLog(), `"follower dropped"`); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(s.AgentLog(), `"follower dropped"`) {
		t.Fatal("the stalled follower was not dropped after the stall timeout")
	}
	// What reached it before it stalled is in order; it has no eof.
	sc, eof := func() (*lineChecker, bool) {
		c := &lineChecker{t: t, want: func(i int) string { return strconv.Itoa(i + 1) }}
		eof := false
		_ = eachEvent(stalled.Body, func(name, data string) bool {
			if name == "eof" {
				eof = true
			}
			c.event(name, data)
			return true
		})
		return c, eof
	}()
	if eof {
		t.Fatal("the stalled follower got to eof: it was not dropped")
	}
	t.Logf("stalled follower got %d lines before it was dropped", sc.delivered)
	if grown := vmKB(t, agent, "VmHWM") - before; grown > 64<<10 {
		t.Fatalf("agent peak RSS grew by %d KiB", grown)
	}
}

// TestRunStalledClientDropped: a run client that stops reading is dropped
// after the stall timeout: the tree is killed, and when it reads again it
// gets the lines queued so far, in order, then a final event saying why
// (CLIENT_TOO_SLOW, with the kill's signal 9).
func TestRunStalledClientDropped(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--proc-stall-timeout", "2s"}})
	ensureUser(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream := runStream(t, s, ctx, map[string]any{"command": "seq", "args": []string{"1", "100000000"}})
	defer stream.Close()
	br := bufio.NewReader(stream)
	first, err := br.ReadString('\n')
	if err != nil || !strings.Contains(first, `"pid"`) {
		t.Fatalf("start event %q: %v", first, err)
	}
	var started struct {
		Pid int `json:"pid"`
	}
	_ = json.Unmarshal([]byte(strings.TrimPrefix(first, "data: ")), &started)
	// The writes block once the transport is full (well under a second),
	// the stall is found 2 s + 1 s later; reading again at 6 s is within
	// the 5 s final grace after that.
	time.Sleep(6 * time.Second)
	c := &lineChecker{t: t, want: func(i int) string { return strconv.Itoa(i + 1) }, allowCut: true}
	var last map[string]any
	err = eachEvent(br, func(name, data string) bool {
		if _, ok := lineOf(data); ok || name == "skipped" {
			c.event(name, data)
			return true
		}
		last = nil
		_ = json.Unmarshal([]byte(data), &last)
		return true
	})
	if err != nil {
		t.Fatalf("after %d lines: %v", c.delivered, err)
	}
	if last["code"] != "CLIENT_TOO_SLOW" || last["signal"] != float64(9) || last["error"] == "" || c.skipped != 0 {
		t.Fatalf("final event %v after %d lines (%d skipped)", last, c.delivered, c.skipped)
	}
	t.Logf("stalled run client: %d lines in order, then %v", c.delivered, last)
	waitStatus(t, s, fmt.Sprint(started.Pid), "signaled")
}

// TestFollowerCaps: follow streams are capped per process and overall;
// past either, 429 TOO_MANY_FOLLOWERS, and a closed stream frees its slot.
func TestFollowerCaps(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{AgentArgs: []string{"--proc-max-followers", "3", "--proc-max-followers-per-process", "2"}})
	ensureUser(t, s)
	var a, b procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sleep", "args": []string{"60"}}, 201, &a)
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sleep", "args": []string{"60"}}, 201, &b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func(p procInfo) *http.Response {
		resp := follow(t, s, ctx, fmt.Sprint(p.Pid), "output")
		if resp.StatusCode != 200 {
			t.Fatalf("follow %d: status %d", p.Pid, resp.StatusCode)
		}
		return resp
	}
	a1, a2 := open(a), open(a)
	defer a2.Body.Close()
	s.WantError(t, "GET", fmt.Sprintf("/api/v1/processes/%d/stdout/follow", a.Pid), nil, 429, "TOO_MANY_FOLLOWERS")
	b1 := open(b)
	defer b1.Body.Close()
	s.WantError(t, "GET", fmt.Sprintf("/api/v1/processes/%d/output/follow", b.Pid), nil, 429, "TOO_MANY_FOLLOWERS")
	a1.Body.Close()
	for i := 0; ; i++ {
		resp := follow(t, s, ctx, fmt.Sprint(b.Pid), "output")
		resp.Body.Close()
		if resp.StatusCode == 200 {
			break
		}
		if i == 100 {
			t.Fatalf("a closed follower's slot was not freed: %d", resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFollowerDefaultCapAndMemory: with the defaults, 32 follow streams
// may be open on one process and the 33rd is refused; the agent's memory
// per open follower is measured (logged).
func TestFollowerDefaultCapAndMemory(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{"command": "sh", "args": []string{"-c", "echo ready; sleep 60"}}, 201, &p)
	pid := fmt.Sprint(p.Pid)
	agent := s.AgentPid()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := vmKB(t, agent, "VmRSS")
	for i := 0; i < 32; i++ {
		resp := follow(t, s, ctx, pid, "output")
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("follower %d: status %d", i+1, resp.StatusCode)
		}
		got := false
		_ = eachEvent(resp.Body, func(name, data string) bool {
			got = strings.Contains(data, "ready")
			return !got
		})
		if !got {
			t.Fatalf("follower %d: no replay", i+1)
		}
	}
	after := vmKB(t, agent, "VmRSS")
	s.WantError(t, "GET", "/api/v1/processes/"+pid+"/output/follow", nil, 429, "TOO_MANY_FOLLOWERS")
	t.Logf("32 open followers: agent RSS %d KiB before, %d KiB after (%d KiB each)", before, after, (after-before)/32)
}
