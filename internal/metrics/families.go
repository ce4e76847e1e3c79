// Package metrics is the one list of tl-agent's metric families (name,
// type, help, labels) and the agent's writer of them in Prometheus' text
// format (text.go). The proxy, which scrapes agents over the uplink and
// cannot trust what comes back (a sandbox's root may replace the agent),
// keeps only what Agent declares (package scrape). docs/observability.md
// lists every family.
//
// It imports no Prometheus library: the agent binary links this package,
// and client_golang's package initialisation (its default registry's
// collectors, procfs, protobuf) cost 1-2 ms of every exec of tl-agent
// (the agent's start, each incubator and sftp re-exec).
package metrics

// Type is a family's metric type, as the text format names it.
type Type string

// The types an agent exports.
const (
	Counter   Type = "counter"
	Gauge     Type = "gauge"
	Histogram Type = "histogram"
)

// Family is one metric family an agent exports.
type Family struct {
	Name   string
	Type   Type
	Help   string
	Labels []string // exactly these, in this order
}

const (
	counter   = Counter
	gauge     = Gauge
	histogram = Histogram
)

// Names of the agent's families that its code refers to by name.
const (
	APIRequestDuration = "tl_agent_api_request_duration_seconds"
)

// Agent is every family tl-agent exports. Label values come from small
// fixed sets (stream kinds, route patterns, reasons), never from requests,
// pids or paths, so each agent has a bounded number of series.
var Agent = []Family{
	{"tl_agent_info", gauge, "Always 1; the agent's version.", []string{"version"}},
	{"tl_agent_start_time_seconds", gauge, "When the agent started, Unix seconds.", nil},
	{"tl_agent_last_activity_time_seconds", gauge, "When a user last used the sandbox (API request, PTY or SSH session, tunnel), Unix seconds; 0: never.", nil},
	{"tl_agent_uplink_up", gauge, "1 while the uplink is connected (or listening in --listen mode).", nil},
	{"tl_agent_uplink_state", gauge, "1 for the uplink's current state (connecting, connected, listening, refused, disconnected).", []string{"state"}},
	{"tl_agent_uplink_connects_total", counter, "Uplinks established (handshake passed).", nil},
	{"tl_agent_uplink_reconnects_total", counter, "Uplinks established after the first.", nil},
	{"tl_agent_uplink_connected_seconds_total", counter, "Time the uplink has been connected, in all.", nil},
	{"tl_agent_streams_open", gauge, "Uplink streams open, by kind.", []string{"kind"}},
	{"tl_agent_streams_opened_total", counter, "Uplink streams accepted, by kind.", []string{"kind"}},
	{"tl_agent_stream_bytes_total", counter, "Bytes on uplink streams by kind; direction in is from the proxy.", []string{"kind", "direction"}},
	{APIRequestDuration, histogram, "API requests by route pattern and status code, and how long they took (WebSockets and event streams: their whole life).", []string{"route", "code"}},
	{"tl_agent_pty_sessions_live", gauge, "PTY sessions running.", nil},
	{"tl_agent_pty_sessions_created_total", counter, "PTY sessions started.", nil},
	{"tl_agent_pty_sessions_ended_total", counter, "PTY sessions ended, by reason (exit, oom_killed, idle, deleted, shutdown).", []string{"reason"}},
	{"tl_agent_pty_clients", gauge, "WebSocket clients attached to PTY sessions.", nil},
	{"tl_agent_pty_clients_dropped_total", counter, "PTY clients the agent dropped (too slow, no pong, shutdown).", nil},
	{"tl_agent_processes_live", gauge, "Processes of the process API running.", nil},
	{"tl_agent_processes_started_total", counter, "Processes started through the process API (runs included).", nil},
	{"tl_agent_processes_exited_total", counter, "Processes ended, by outcome (success, error: exit code 1-255, signal, oom_killed).", []string{"outcome"}},
	{"tl_agent_processes_restarts_total", counter, "Restarts of supervised processes (policy or API).", nil},
	{"tl_agent_processes_health_check_failures_total", counter, "Failed health checks of supervised processes.", nil},
	{"tl_agent_ssh_connections", gauge, "SSH connections open.", nil},
	{"tl_agent_ssh_connections_total", counter, "SSH connections served.", nil},
	{"tl_agent_ssh_channels_total", counter, "SSH channels opened by clients, by type.", []string{"type"}},
	{"tl_agent_sftp_sessions", gauge, "SFTP sessions open.", nil},
	{"tl_agent_sftp_sessions_total", counter, "SFTP sessions served.", nil},
	{"tl_agent_reaper_children_live", gauge, "Children started through the reaper and not yet reaped.", nil},
	{"tl_agent_reaper_children_reaped_total", counter, "Children started through the reaper and reaped.", nil},
	{"tl_agent_reaper_orphans_reaped_total", counter, "Orphans adopted by PID 1 (or the subreaper) and reaped.", nil},
	{"tl_agent_headroom_failures_total", counter, "Children whose OOM score or workload cgroup could not be set.", nil},
	{"tl_agent_upgrades_total", counter, "Live upgrades done in the sandbox's life (carried across the exec).", nil},
	{"tl_agent_cgroup_cpu_seconds_total", counter, "CPU time used by the sandbox's cgroup.", nil},
	{"tl_agent_cgroup_memory_bytes", gauge, "Memory used by the sandbox's cgroup.", nil},
	{"tl_agent_cgroup_memory_limit_bytes", gauge, "The sandbox cgroup's memory limit (absent when unlimited).", nil},
	{"tl_agent_cgroup_pids", gauge, "Tasks in the sandbox's cgroup.", nil},
	{"tl_agent_cgroup_pids_limit", gauge, "The sandbox cgroup's task limit (absent when unlimited).", nil},
	{"tl_agent_cgroup_oom_kills_total", counter, "OOM kills in the sandbox's cgroup (and the workload's).", nil},
	{"tl_agent_resident_memory_bytes", gauge, "The agent's own resident memory.", nil},
	{"tl_agent_heap_bytes", gauge, "The agent's Go heap in use.", nil},
	{"tl_agent_goroutines", gauge, "The agent's goroutines.", nil},
	{"tl_agent_open_fds", gauge, "The agent's open file descriptors.", nil},
}

// APIBuckets are the API latency histogram's buckets, in seconds.
var APIBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

var agentByName = func() map[string]*Family {
	m := make(map[string]*Family, len(Agent))
	for i := range Agent {
		m[Agent[i].Name] = &Agent[i]
	}
	return m
}()

// Lookup returns the family called name, or nil.
func Lookup(name string) *Family { return agentByName[name] }
