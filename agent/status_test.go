package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"testing"

	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/sshd"
	"github.com/tensorlake/tl-agent/supervisor"
)

// TestStatusTextMatchesJSON: `tl-agent status` prints exactly the keys
// and values of the JSON form, sorted, a part's counts indented under it
// (the output users had when the CLI printed the JSON map generically).
func TestStatusTextMatchesJSON(t *testing.T) {
	full := Status{
		Goroutines: 1, HeapBytes: 12345678901, PID: 1, SandboxID: "sbx", SysBytes: 3, UptimeSecs: 4, Version: "v",
		Processes:   &ProcessCounts{Running: 5, Total: 6},
		PTYSessions: &pty.Stats{Clients: 7, ClientsDropped: 8, Kept: 9, Live: 10},
		Reaper:      &ReaperStats{Live: 11, OrphansReaped: 12, Started: 13},
		SSH:         &sshd.Stats{Connections: 14, ListenerConnections: 15},
		Headroom:    &supervisor.HeadroomStatus{AgentOOMScoreAdj: -900, ChildOOMScoreAdj: -800, LowerRefused: "x", Workload: "/w", MemoryMax: 1, WorkloadNone: "y", PidsMax: 2},
		Uplink:      UplinkStatus{ConnectedSince: "2026-01-01T00:00:00Z", LastError: "e", Reconnects: 16, Remote: "r", State: "connected"},
	}
	for name, st := range map[string]Status{"all parts": full, "no parts": {Version: "v", Uplink: UplinkStatus{State: "connecting"}}} {
		data, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		var want, got bytes.Buffer
		printJSONMap(&want, "", m)
		st.WriteText(&got)
		if got.String() != want.String() {
			t.Errorf("%s: the text form must list the JSON's keys in order:\ngot:\n%s\nwant:\n%s", name, got.String(), want.String())
		}
	}
}

// printJSONMap is how the CLI printed the status before it was typed.
func printJSONMap(w *bytes.Buffer, indent string, m map[string]any) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if sub, ok := m[k].(map[string]any); ok {
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			printJSONMap(w, indent+"  ", sub)
			continue
		}
		fmt.Fprintf(w, "%s%-18s %v\n", indent, k+":", m[k])
	}
}
