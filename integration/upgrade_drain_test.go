package integration

import (
	"bufio"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// An event stream in flight does not hold a drain (a prepare's, an
// upgrade's) for its 2 s: the gate tells it by its response's
// Content-Type, so a client that sends no `Accept: text/event-stream`
// (Go's, curl's, an SDK's) counts as long-lived all the same.
func TestUpgradeDrainSkipsEventStreams(t *testing.T) {
	RequireRoot(t)
	s := Start(t, Options{})
	ensureUser(t, s)
	var p procInfo
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "sh", "args": []string{"-c", "while :; do echo tick; sleep 0.2; done"},
	}, 201, &p)
	open := func(resp *http.Response) {
		t.Helper()
		if a := resp.Request.Header.Get("Accept"); a != "" {
			t.Fatalf("the client sent Accept %q; the test needs none", a)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("%s: %d %s, want an event stream", resp.Request.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		// The first event: the stream is open and being served.
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatalf("%s: no first event: %v", resp.Request.URL.Path, err)
		}
	}
	streams := func() {
		t.Helper()
		open(s.Do("GET", fmt.Sprintf("/api/v1/processes/%d/output/follow", p.Pid), nil))
		open(s.Do("POST", "/api/v1/processes/run", map[string]any{"command": "sleep", "args": []string{"600"}}))
	}

	// The upgrade first: its exec drops the streams (a resume's redial
	// would too), so each drain gets streams of its own.
	streams()
	path := s.InstallFile(t, filepath.Join(s.bin, "tl-agent"), "/tmp/tl-agent-same")
	if out, err := upgradeCLI(s, path); err != nil {
		t.Fatalf("tl-agent upgrade: %v %s\n%s", err, out, tail(s.AgentLog(), 40))
	}
	var quiesced string
	for _, l := range strings.Split(s.AgentLog(), "\n") {
		if strings.Contains(l, "upgrade: quiesced") {
			quiesced = l
		}
	}
	if !strings.Contains(quiesced, `"api_requests_in_flight":0`) {
		t.Errorf("the upgrade's drain counted the event streams as in flight: %q", quiesced)
	}
	waitUplink(t, s)

	streams()
	code, out := controlCall(t, s, "prepare", `{}`)
	if code != 200 || out["api_requests_in_flight"] != float64(0) {
		t.Errorf("prepare with a follow and a run open: %d, api_requests_in_flight %v (want 0)\n%v", code, out["api_requests_in_flight"], out)
	}
	if code, out := controlCall(t, s, "resume", `{}`); code != 200 {
		t.Fatalf("resume: %d %v", code, out)
	}
}
