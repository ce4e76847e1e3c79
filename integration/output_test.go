package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
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
