package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"time"

	"github.com/tensorlake/tl-agent/launch"
	"github.com/tensorlake/tl-agent/process"
	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/sftpd"
	"github.com/tensorlake/tl-agent/sshd"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Status is the agent's state as the operator sees it: GET /status on the
// control socket, printed by `tl-agent status` (WriteText) or as JSON
// (--json). Agent.Status is the one place it is built, and the agent's
// metrics are read from it (metrics_emit.go), so both show the same
// figures. Fields are in key order, as both forms list them; a part that
// is absent is left out.
type Status struct {
	APIRequests map[string]int64       `json:"api_requests,omitempty"` // by status code, from the API histogram
	Cgroup      *CgroupStatus          `json:"cgroup,omitempty"`
	Goroutines  int                    `json:"goroutines"`
	Headroom    *HeadroomStatus        `json:"headroom,omitempty"`
	HeapBytes   uint64                 `json:"heap_bytes"`
	Lifecycle   LifecycleStatus        `json:"lifecycle"` // prepare/resume state and last_activity_at
	OpenFDs     int                    `json:"open_fds"`  // -1: unknown
	PID         int                    `json:"pid"`
	Processes   *process.Stats         `json:"processes,omitempty"`
	PTYSessions *pty.Stats             `json:"pty_sessions,omitempty"`
	Reaper      *ReaperStats           `json:"reaper,omitempty"`
	RSSBytes    int64                  `json:"rss_bytes"` // -1: unknown
	SandboxID   string                 `json:"sandbox_id"`
	SFTP        *sftpd.Stats           `json:"sftp,omitempty"`
	SSH         *sshd.Stats            `json:"ssh,omitempty"`
	Streams     map[string]StreamStats `json:"streams"` // uplink streams by kind, over every uplink
	SysBytes    uint64                 `json:"sys_bytes"`
	Uplink      UplinkStatus           `json:"uplink"`
	Upgrade     UpgradeStatus          `json:"upgrade"` // live upgrades: state, count, the last one
	UptimeSecs  int64                  `json:"uptime_secs"`
	Version     string                 `json:"version"`
}

// CgroupStatus is the sandbox cgroup's figures and its OOM kill count (the
// reaper's OOM counter; -1 when there is none to read).
type CgroupStatus struct {
	supervisor.CgroupStats
	OOMKills int64 `json:"oom_kills"`
}

// HeadroomStatus is the headroom (PID 1's OOM score, the workload cgroup)
// and the incubator commands start through (launch.Incubator): how a
// child gets its raised score and cgroup before its program runs.
type HeadroomStatus struct {
	supervisor.HeadroomStatus
	Incubator       string `json:"incubator"`                  // stub, go, or undecided (before the first start)
	IncubatorReason string `json:"incubator_reason,omitempty"` // why the Go one: the stub is off
}

// headroomStatus adds the incubator to the headroom's status; nil without
// a headroom.
func headroomStatus(f func() supervisor.HeadroomStatus) *HeadroomStatus {
	if f == nil {
		return nil
	}
	st := HeadroomStatus{HeadroomStatus: f()}
	st.Incubator, st.IncubatorReason = launch.Incubator()
	if st.Incubator == "" {
		st.Incubator = "undecided"
	}
	return &st
}

// ReaperStats are the reaper's counts.
type ReaperStats struct {
	Live          int64 `json:"live"`           // started and not yet reaped
	OrphansReaped int64 `json:"orphans_reaped"` // reaped children nobody started through it
	Reaped        int64 `json:"reaped"`         // started through it and reaped
	Started       int64 `json:"started"`
}

// UplinkStatus is what the operator sees of the uplink.
type UplinkStatus struct {
	Connects       int     `json:"connects"`                  // uplinks established
	ConnectedSecs  float64 `json:"connected_secs"`            // time connected, in all
	ConnectedSince string  `json:"connected_since,omitempty"` // RFC 3339, UTC
	LastError      string  `json:"last_error"`
	Reconnects     int     `json:"reconnects"`
	Remote         string  `json:"remote"`
	State          string  `json:"state"` // connecting, connected, listening, refused, disconnected
}

// StatSources are the parts' counters the status shows; nil ones are left
// out of it.
type StatSources struct {
	PTY       func() pty.Stats
	SSH       func() sshd.Stats
	SFTP      func() sftpd.Stats
	Processes func() process.Stats
	Reaper    func() ReaperStats
	// Headroom: PID 1's OOM score, the workload cgroup or why none.
	Headroom func() supervisor.HeadroomStatus
	// Cgroup: the sandbox cgroup's usage and limits.
	Cgroup func() CgroupStatus
}

// part calls f when set and returns a pointer to its result, else nil.
func part[T any](f func() T) *T {
	if f == nil {
		return nil
	}
	v := f()
	return &v
}

// Status builds the agent's status.
func (a *Agent) Status() Status {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, fds := selfUsage()
	return Status{
		APIRequests: a.met.apiCounts(),
		Cgroup:      part(a.stats.Cgroup),
		Goroutines:  runtime.NumGoroutine(),
		Headroom:    headroomStatus(a.stats.Headroom),
		HeapBytes:   ms.HeapAlloc,
		OpenFDs:     fds,
		PID:         os.Getpid(),
		Processes:   part(a.stats.Processes),
		PTYSessions: part(a.stats.PTY),
		Reaper:      part(a.stats.Reaper),
		RSSBytes:    rss,
		SandboxID:   a.sandboxID(),
		Lifecycle:   a.lifecycleStatus(),
		SFTP:        part(a.stats.SFTP),
		SSH:         part(a.stats.SSH),
		Streams:     a.met.streams.snapshot(),
		SysBytes:    ms.Sys,
		Uplink:      a.link.snapshot(),
		Upgrade:     a.upg.status(),
		UptimeSecs:  int64(time.Since(a.started).Seconds()),
		Version:     a.version,
	}
}

// WriteText prints st as `tl-agent status` does: one "key: value" line
// each, in key order, a part's (or a map's) entries indented under its
// name. It prints the JSON form's keys and values, so the two cannot
// drift apart.
func (st Status) WriteText(w io.Writer) {
	data, err := json.Marshal(st)
	if err != nil {
		fmt.Fprintln(w, "status:", err)
		return
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		fmt.Fprintln(w, "status:", err)
		return
	}
	writeTree(w, "", m)
}

func writeTree(w io.Writer, indent string, m map[string]any) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if sub, ok := m[k].(map[string]any); ok {
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			writeTree(w, indent+"  ", sub)
			continue
		}
		fmt.Fprintf(w, "%s%-18s %v\n", indent, k+":", m[k])
	}
}
