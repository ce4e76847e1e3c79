package process

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/supervisor"
)

func newHTTPTable(t *testing.T, cfg Config) (*Table, *httptest.Server) {
	t.Helper()
	r := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	tb, err := New(cfg, zerolog.Nop(), r)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	tb.Routes(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() { srv.Close(); tb.Close(); close(stop) })
	return tb, srv
}

// TestRunSlowReaderAfterExit: a run client slower than the exit grace
// still gets every line: what was in the pipe when the leader exited is
// read at the client's pace, not cut after ExitGrace.
func TestRunSlowReaderAfterExit(t *testing.T) {
	_, srv := newHTTPTable(t, Config{ExitGrace: 100 * time.Millisecond, MaxLines: 100})
	body, _ := json.Marshal(map[string]any{"command": "seq", "args": []string{"1", "100000"}, "user": strconv.Itoa(uidSelf()), "working_dir": "/"})
	resp, err := http.Post(srv.URL+"/api/v1/processes/run", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	n, last := 0, ""
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		var ev struct {
			Line *string `json:"line"`
		}
		data := strings.TrimPrefix(line, "data: ")
		_ = json.Unmarshal([]byte(data), &ev)
		if ev.Line == nil {
			last = data
			continue
		}
		n++
		if *ev.Line != strconv.Itoa(n) {
			t.Fatalf("line %d is %q", n, *ev.Line)
		}
		if n%1000 == 0 {
			time.Sleep(20 * time.Millisecond) // after the exit, ~128 KiB wait in the pipe and buffer: 0.4 s
		}
	}
	if n != 100000 || !strings.Contains(last, `"exit_code":0`) {
		t.Fatalf("%d lines, last event %s", n, last)
	}
}

func uidSelf() int { u, _ := strconv.Atoi(self().Name); return u }

// TestExitNotHeldByChattyChild: a descendant that keeps the pipe open and
// writes without end does not hold back the exit: once what was in the
// pipe at the exit is read, the grace applies.
func TestExitNotHeldByChattyChild(t *testing.T) {
	tb := newTestTable(t)
	for _, quiet := range []bool{false, true} {
		script := "yes & exit 0"
		if quiet {
			script = "sleep 300 & exit 0"
		}
		p, err := tb.Start(&StartRequest{Command: "sh", Args: []string{"-c", script}, User: self(), WorkingDir: "/"})
		if err != nil {
			t.Fatal(err)
		}
		waitDone(t, p)
		killTree(p.pid, p.handle)
	}
}

// TestFollowerSkipCounts: a follower is told how many of its own lines it
// missed: on /stdout only stdout's, on /output both, including lines
// dropped after the last one it got.
func TestFollowerSkipCounts(t *testing.T) {
	p := &Process{out: newOutputLog(4, 1<<20, nil)}
	for i := 0; i < 6; i++ {
		p.out.append(Stdout, "o"+strconv.Itoa(i), time.Now())
		p.out.append(Stderr, "e"+strconv.Itoa(i), time.Now())
	}
	p.out.append(Stderr, "e6", time.Now())
	p.out.append(Stderr, "e7", time.Now())
	p.out.close()
	// The ring holds the last 4 lines: o5 e5 e6 e7.
	for _, tc := range []struct{ filter, want string }{
		{Stdout, "skip5 o5"},
		{Stderr, "skip5 e5 e6 e7"},
		{"", "skip10 o5 e5 e6 e7"},
	} {
		rec := httptest.NewRecorder()
		s := newSSE(rec, time.Second)
		if err := p.stream(context.Background(), s, &follower{filter: tc.filter, name: "output"}); err != nil {
			t.Fatal(err)
		}
		if got := eventsOf(rec.Body.String()); got != tc.want {
			t.Errorf("filter %q: %q, want %q", tc.filter, got, tc.want)
		}
	}
	// Lines dropped after the last one a stdout follower saw: told at eof.
	q := &Process{out: newOutputLog(2, 1<<20, nil)}
	q.out.append(Stdout, "o0", time.Now())
	q.out.append(Stderr, "e0", time.Now())
	rec := httptest.NewRecorder()
	s := newSSE(rec, time.Second)
	f := &follower{filter: Stdout, name: "output"}
	b := q.out.read(0, 10, 1<<20, false)
	if err := f.queue(s, b); err != nil {
		t.Fatal(err)
	}
	q.out.append(Stdout, "o1", time.Now())
	q.out.append(Stderr, "e1", time.Now())
	q.out.append(Stderr, "e2", time.Now())
	q.out.close()
	if err := f.queue(s, q.out.read(b.next, 10, 1<<20, false)); err != nil {
		t.Fatal(err)
	}
	_ = s.flushNow()
	if got := eventsOf(rec.Body.String()); got != "o0 skip1" {
		t.Errorf("dropped after the last line: %q", got)
	}
}

// eventsOf renders an SSE body as "line" and "skipN" words.
func eventsOf(body string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Line    *string `json:"line"`
			Skipped uint64  `json:"skipped_lines"`
		}
		_ = json.Unmarshal([]byte(data), &ev)
		switch {
		case ev.Line != nil:
			out = append(out, *ev.Line)
		case ev.Skipped > 0:
			out = append(out, "skip"+strconv.FormatUint(ev.Skipped, 10))
		}
	}
	return strings.Join(out, " ")
}
