package agent

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/tensorlake/tl-agent/pty"
	"github.com/tensorlake/tl-agent/sftpd"
	"github.com/tensorlake/tl-agent/sshd"
	"github.com/tensorlake/tl-agent/supervisor"
)

// Status is the agent's state as the operator sees it: GET /status on the
// control socket, printed by `tl-agent status` (WriteText) or as JSON
// (--json). Agent.Status is the one place it is built. Fields are in key
// order, as both forms list them; a part that is absent is left out.
type Status struct {
	Goroutines  int                        `json:"goroutines"`
	Headroom    *supervisor.HeadroomStatus `json:"headroom,omitempty"`
	HeapBytes   uint64                     `json:"heap_bytes"`
	PID         int                        `json:"pid"`
	Processes   *ProcessCounts             `json:"processes,omitempty"`
	PTYSessions *pty.Stats                 `json:"pty_sessions,omitempty"`
	Reaper      *ReaperStats               `json:"reaper,omitempty"`
	SandboxID   string                     `json:"sandbox_id"`
	SFTP        *sftpd.Stats               `json:"sftp,omitempty"`
	SSH         *sshd.Stats                `json:"ssh,omitempty"`
	SysBytes    uint64                     `json:"sys_bytes"`
	Uplink      UplinkStatus               `json:"uplink"`
	UptimeSecs  int64                      `json:"uptime_secs"`
	Version     string                     `json:"version"`
}

// ProcessCounts are the process table's running and total processes.
type ProcessCounts struct {
	Running int `json:"running"`
	Total   int `json:"total"`
}

// ReaperStats are the reaper's counts.
type ReaperStats struct {
	Live          int64 `json:"live"`           // started and not yet reaped
	OrphansReaped int64 `json:"orphans_reaped"` // reaped children nobody started through it
	Started       int64 `json:"started"`
}

// UplinkStatus is what the operator sees of the uplink.
type UplinkStatus struct {
	ConnectedSince string `json:"connected_since,omitempty"` // RFC 3339, UTC
	LastError      string `json:"last_error"`
	Reconnects     int    `json:"reconnects"`
	Remote         string `json:"remote"`
	State          string `json:"state"` // connecting, connected, listening, refused, disconnected
}

// StatSources are the parts' counters the status shows; nil ones are left
// out of it.
type StatSources struct {
	PTY    func() pty.Stats
	SSH    func() sshd.Stats
	SFTP   func() sftpd.Stats
	Reaper func() ReaperStats
	// Headroom: PID 1's OOM score, the workload cgroup or why none.
	Headroom func() supervisor.HeadroomStatus
}

// Status builds the agent's status.
func (a *Agent) Status() Status {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := Status{
		Goroutines: runtime.NumGoroutine(),
		HeapBytes:  ms.HeapAlloc,
		PID:        os.Getpid(),
		SandboxID:  a.cfg.SandboxID,
		SysBytes:   ms.Sys,
		Uplink:     a.link.snapshot(),
		UptimeSecs: int64(time.Since(a.started).Seconds()),
		Version:    a.version,
	}
	if a.procs != nil {
		running, total := a.procs.Counts()
		st.Processes = &ProcessCounts{Running: running, Total: total}
	}
	if f := a.stats.PTY; f != nil {
		v := f()
		st.PTYSessions = &v
	}
	if f := a.stats.Reaper; f != nil {
		v := f()
		st.Reaper = &v
	}
	if f := a.stats.Headroom; f != nil {
		v := f()
		st.Headroom = &v
	}
	if f := a.stats.SSH; f != nil {
		v := f()
		st.SSH = &v
	}
	if f := a.stats.SFTP; f != nil {
		v := f()
		st.SFTP = &v
	}
	return st
}

// WriteText prints st as `tl-agent status` does: one "key: value" line
// each, in key order, a part's counts indented under its name.
func (st Status) WriteText(w io.Writer) {
	line := func(indent, k string, v any) { fmt.Fprintf(w, "%s%-18s %v\n", indent, k+":", v) }
	part := func(k string) { fmt.Fprintf(w, "%s:\n", k) }
	line("", "goroutines", st.Goroutines)
	if h := st.Headroom; h != nil {
		part("headroom")
		line("  ", "agent_oom_score_adj", h.AgentOOMScoreAdj)
		line("  ", "child_oom_score_adj", h.ChildOOMScoreAdj)
		line("  ", "headroom_failed", h.Failed)
		if h.LowerRefused != "" {
			line("  ", "lower_refused", h.LowerRefused)
		}
		line("  ", "workload_cgroup", h.Workload)
		if h.Version != "" {
			line("  ", "workload_cgroup_version", h.Version)
		}
		if h.MemoryMax > 0 {
			line("  ", "workload_memory_max", h.MemoryMax)
		}
		if h.WorkloadNone != "" {
			line("  ", "workload_none", h.WorkloadNone)
		}
		if h.PidsMax > 0 {
			line("  ", "workload_pids_max", h.PidsMax)
		}
	}
	line("", "heap_bytes", st.HeapBytes)
	line("", "pid", st.PID)
	if p := st.Processes; p != nil {
		part("processes")
		line("  ", "running", p.Running)
		line("  ", "total", p.Total)
	}
	if p := st.PTYSessions; p != nil {
		part("pty_sessions")
		line("  ", "clients", p.Clients)
		line("  ", "clients_dropped", p.ClientsDropped)
		line("  ", "kept", p.Kept)
		line("  ", "live", p.Live)
	}
	if r := st.Reaper; r != nil {
		part("reaper")
		line("  ", "live", r.Live)
		line("  ", "orphans_reaped", r.OrphansReaped)
		line("  ", "started", r.Started)
	}
	line("", "sandbox_id", st.SandboxID)
	if s := st.SFTP; s != nil {
		part("sftp")
		line("  ", "sessions", s.Sessions)
		line("  ", "sessions_total", s.SessionsTotal)
	}
	if s := st.SSH; s != nil {
		part("ssh")
		line("  ", "connections", s.Connections)
		line("  ", "connections_total", s.ConnectionsTotal)
		line("  ", "listener_connections", s.ListenerConnections)
	}
	line("", "sys_bytes", st.SysBytes)
	u := st.Uplink
	part("uplink")
	if u.ConnectedSince != "" {
		line("  ", "connected_since", u.ConnectedSince)
	}
	line("  ", "last_error", u.LastError)
	line("  ", "reconnects", u.Reconnects)
	line("  ", "remote", u.Remote)
	line("  ", "state", u.State)
	line("", "uptime_secs", st.UptimeSecs)
	line("", "version", st.Version)
}
