package process

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/supervisor"
)

// TestStdinStalledBodyTimesOut: a stdin body that stops arriving is
// answered 408 STDIN_TIMEOUT after StdinTimeout, and meanwhile the
// process's info and exit do not wait for it.
func TestStdinStalledBodyTimesOut(t *testing.T) {
	r := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	tb, err := New(Config{ExitGrace: 200 * time.Millisecond, StdinTimeout: 300 * time.Millisecond}, zerolog.Nop(), r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close(); close(stop) })
	mux := http.NewServeMux()
	tb.Routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	p, err := tb.Start(&StartRequest{Command: "cat", StdinMode: "pipe", User: self(), WorkingDir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /api/v1/processes/%d/stdin HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nstall\n", p.pid)
	if in := p.info(); !in.StdinWritable {
		t.Fatalf("info %+v", in)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer, _ := io.ReadAll(c)
	if !strings.Contains(string(answer), "408") || !strings.Contains(string(answer), "STDIN_TIMEOUT") {
		t.Fatalf("answer %q", answer)
	}
	p.kill()
	waitDone(t, p)
}
