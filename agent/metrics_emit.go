package agent

import (
	"time"

	"github.com/tensorlake/tl-agent/internal/metrics"
)

// uplinkStates are the states tl_agent_uplink_state has a series for.
var uplinkStates = []string{"connecting", "connected", "listening", "refused", "disconnected"}

// emitStatus sends st as the agent's metrics (internal/metrics.Agent).
func emitStatus(e *metrics.Emitter, st Status, started time.Time) {
	e.Gauge("tl_agent_info", 1, st.Version)
	e.Gauge("tl_agent_start_time_seconds", float64(started.UnixMilli())/1e3)
	lastActivity := 0.0
	if t, err := time.Parse(time.RFC3339Nano, st.Lifecycle.LastActivityAt); err == nil {
		lastActivity = float64(t.UnixMilli()) / 1e3
	}
	e.Gauge("tl_agent_last_activity_time_seconds", lastActivity)
	emitUplink(e, st.Uplink)
	for kind, s := range st.Streams {
		e.Gauge("tl_agent_streams_open", float64(s.Open), kind)
		e.Counter("tl_agent_streams_opened_total", float64(s.Opened), kind)
		e.Counter("tl_agent_stream_bytes_total", float64(s.BytesIn), kind, "in")
		e.Counter("tl_agent_stream_bytes_total", float64(s.BytesOut), kind, "out")
	}
	if p := st.PTYSessions; p != nil {
		e.Gauge("tl_agent_pty_sessions_live", float64(p.Live))
		e.Counter("tl_agent_pty_sessions_created_total", float64(p.Created))
		for reason, n := range p.Ended {
			e.Counter("tl_agent_pty_sessions_ended_total", float64(n), reason)
		}
		e.Gauge("tl_agent_pty_clients", float64(p.Clients))
		e.Counter("tl_agent_pty_clients_dropped_total", float64(p.ClientsDropped))
	}
	if p := st.Processes; p != nil {
		e.Gauge("tl_agent_processes_live", float64(p.Running))
		e.Counter("tl_agent_processes_started_total", float64(p.Started))
		for outcome, n := range p.Exited {
			e.Counter("tl_agent_processes_exited_total", float64(n), outcome)
		}
		e.Counter("tl_agent_processes_restarts_total", float64(p.Restarts))
		e.Counter("tl_agent_processes_health_check_failures_total", float64(p.HealthFailures))
	}
	if s := st.SSH; s != nil {
		e.Gauge("tl_agent_ssh_connections", float64(s.Connections))
		e.Counter("tl_agent_ssh_connections_total", float64(s.ConnectionsTotal))
		for typ, n := range s.Channels {
			e.Counter("tl_agent_ssh_channels_total", float64(n), typ)
		}
	}
	if s := st.SFTP; s != nil {
		e.Gauge("tl_agent_sftp_sessions", float64(s.Sessions))
		e.Counter("tl_agent_sftp_sessions_total", float64(s.SessionsTotal))
	}
	if r := st.Reaper; r != nil {
		e.Gauge("tl_agent_reaper_children_live", float64(r.Live))
		e.Counter("tl_agent_reaper_children_reaped_total", float64(r.Reaped))
		e.Counter("tl_agent_reaper_orphans_reaped_total", float64(r.OrphansReaped))
	}
	if h := st.Headroom; h != nil {
		e.Counter("tl_agent_headroom_failures_total", float64(h.Failed))
	}
	e.Counter("tl_agent_upgrades_total", float64(st.Upgrade.Upgrades))
	emitCgroup(e, st.Cgroup)
	if st.RSSBytes >= 0 {
		e.Gauge("tl_agent_resident_memory_bytes", float64(st.RSSBytes))
	}
	e.Gauge("tl_agent_heap_bytes", float64(st.HeapBytes))
	e.Gauge("tl_agent_goroutines", float64(st.Goroutines))
	if st.OpenFDs >= 0 {
		e.Gauge("tl_agent_open_fds", float64(st.OpenFDs))
	}
}

func emitUplink(e *metrics.Emitter, u UplinkStatus) {
	up := 0.0
	if u.State == "connected" || u.State == "listening" {
		up = 1
	}
	e.Gauge("tl_agent_uplink_up", up)
	for _, s := range uplinkStates {
		v := 0.0
		if s == u.State {
			v = 1
		}
		e.Gauge("tl_agent_uplink_state", v, s)
	}
	e.Counter("tl_agent_uplink_connects_total", float64(u.Connects))
	e.Counter("tl_agent_uplink_reconnects_total", float64(u.Reconnects))
	e.Counter("tl_agent_uplink_connected_seconds_total", u.ConnectedSecs)
}

// emitCgroup sends the figures that could be read; limits only when set.
func emitCgroup(e *metrics.Emitter, c *CgroupStatus) {
	if c == nil {
		return
	}
	if c.CPUSeconds >= 0 {
		e.Counter("tl_agent_cgroup_cpu_seconds_total", c.CPUSeconds)
	}
	if c.MemoryBytes >= 0 {
		e.Gauge("tl_agent_cgroup_memory_bytes", float64(c.MemoryBytes))
	}
	if c.MemoryLimit > 0 {
		e.Gauge("tl_agent_cgroup_memory_limit_bytes", float64(c.MemoryLimit))
	}
	if c.Pids >= 0 {
		e.Gauge("tl_agent_cgroup_pids", float64(c.Pids))
	}
	if c.PidsLimit > 0 {
		e.Gauge("tl_agent_cgroup_pids_limit", float64(c.PidsLimit))
	}
	if c.OOMKills >= 0 {
		e.Counter("tl_agent_cgroup_oom_kills_total", float64(c.OOMKills))
	}
}
