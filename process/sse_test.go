package process

import (
	"bufio"
	"bytes"
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
	tb := New(cfg, zerolog.Nop(), r)
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
	_, srv := newHTTPTable(t, Config{ExitGrace: 100 * time.Millisecond, StopGrace: time.Second, MaxLines: 100})
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
