package agent

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/process"
	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/sshd"
	"github.com/tensorlake/tl-agent/supervisor"
)

// TestStatusText: `tl-agent status` prints every key of the JSON form in
// key order, a part's and a map's entries indented under its name.
func TestStatusText(t *testing.T) {
	st := Status{
		Goroutines: 1, HeapBytes: 12345678901, PID: 1, SandboxID: "sbx", SysBytes: 3, UptimeSecs: 4, Version: "v",
		Processes:   &process.Stats{Running: 5, Total: 6, Exited: map[string]int64{"success": 2, "error": 1}},
		PTYSessions: &pty.Stats{Clients: 7, ClientsDropped: 8, Kept: 9, Live: 10},
		Reaper:      &ReaperStats{Live: 11, OrphansReaped: 12, Started: 13},
		SSH:         &sshd.Stats{Connections: 14, ListenerConnections: 15},
		Headroom:    &HeadroomStatus{HeadroomStatus: supervisor.HeadroomStatus{AgentOOMScoreAdj: -900}, Incubator: "go", IncubatorReason: "--incubator go"},
		Streams:     map[string]StreamStats{"api": {Opened: 3}},
		Uplink:      UplinkStatus{ConnectedSince: "2026-01-01T00:00:00Z", LastError: "e", Reconnects: 16, Remote: "r", State: "connected"},
	}
	var b bytes.Buffer
	st.WriteText(&b)
	out := b.String()
	for _, want := range []string{
		"goroutines:        1\n",
		"headroom:\n  agent_oom_score_adj: -900\n",
		"  incubator:         go\n  incubator_reason:  --incubator go\n",
		"heap_bytes:        12345678901\n", // a number, not 1.2345678901e+10
		"processes:\n  exited:\n    error:             1\n    success:           2\n  health_failures:   0\n",
		"streams:\n  api:\n    bytes_in:          0\n",
		"uplink:\n  connected_secs:    0\n  connected_since:   2026-01-01T00:00:00Z\n",
		"version:           v\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\ncgroup:") || strings.Contains(out, "\nsftp:") {
		t.Errorf("an absent part is printed:\n%s", out)
	}
	if i, j := strings.Index(out, "goroutines:"), strings.Index(out, "version:"); i < 0 || j < i {
		t.Errorf("keys out of order:\n%s", out)
	}
}

// TestStatusIncubator: the status' headroom part says which incubator
// starts commands and why (launch.Incubator), "undecided" before the
// first start; no headroom, no part.
func TestStatusIncubator(t *testing.T) {
	a, _ := lifecycleAgent(t, false)
	if a.Status().Headroom != nil {
		t.Fatal("a headroom part without a headroom")
	}
	a.stats.Headroom = func() supervisor.HeadroomStatus {
		return supervisor.HeadroomStatus{AgentOOMScoreAdj: -900, Workload: "/w"}
	}
	h := a.Status().Headroom
	kind, why := launch.Incubator()
	if kind == "" {
		kind = "undecided"
	}
	if h == nil || h.Incubator != kind || h.IncubatorReason != why || h.AgentOOMScoreAdj != -900 || h.Workload != "/w" {
		t.Fatalf("headroom %+v; want the headroom's figures and incubator %q (%q)", h, kind, why)
	}
	var b bytes.Buffer
	a.Status().WriteText(&b)
	if !strings.Contains(b.String(), "\nheadroom:\n") || !strings.Contains(b.String(), "\n  incubator:         "+kind+"\n") {
		t.Fatalf("tl-agent status does not show the incubator under headroom:\n%s", b.String())
	}
}
