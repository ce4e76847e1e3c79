package process

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/leakcheck"
	"github.com/tensorlake/tl-agent/supervisor"
)

// TestCloseLeaksNothing: after Close, the fds and goroutines of running
// processes (stdin pipe, output capture, a background child holding the
// pipes), a supervised process (restart timer, health loop), an exited
// one and an output follower are gone.
func TestCloseLeaksNothing(t *testing.T) {
	base := leakcheck.Take(t)
	r := supervisor.NewReaper(zerolog.Nop(), false)
	go r.Run(nil)
	tb, err := New(Config{ExitGrace: 200 * time.Millisecond}, zerolog.Nop(), r)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	tb.Routes(mux)
	srv := httptest.NewServer(mux)

	running, err := tb.Start(&StartRequest{Command: "sh", Args: []string{"-c", "sleep 100 & echo up; cat"}, StdinMode: "pipe", User: self(), WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	name := "svc"
	if _, err := tb.Start(&StartRequest{
		Command: "sleep", Args: []string{"100"}, User: self(), WorkingDir: "/", Name: &name,
		Restart:     &RestartPolicy{Policy: PolicyAlways},
		HealthCheck: &HealthCheck{Type: "tcp", Port: 1, InitialDelayMs: 60000},
	}); err != nil {
		t.Fatal(err)
	}
	done, err := tb.Start(&StartRequest{Command: "echo", Args: []string{"done"}, User: self(), WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, done)

	resp, err := srv.Client().Get(srv.URL + "/api/v1/processes/" + strconv.Itoa(running.pid) + "/stdout/follow")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("follow: %s", resp.Status)
	}
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
		t.Fatalf("follow: %v", err)
	}

	tb.Close()
	resp.Body.Close()
	srv.Close()
	r.Close()
	base.Check(t)
}
