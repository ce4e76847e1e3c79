package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tensorlake/tl-agent/internal/metrics"
)

// The metrics proof: Debian's Prometheus server scrapes tl-proxy's
// operator door while the real binaries serve traffic, and its query API
// shows every metric family with the values the traffic implies.

const prometheusBin = "/usr/bin/prometheus" // Debian's prometheus package

// startPrometheus runs a Prometheus server that scrapes target every
// second with the operator key, and returns its base URL.
func startPrometheus(t *testing.T, target, key string) string {
	t.Helper()
	if _, err := os.Stat(prometheusBin); err != nil {
		t.Skipf("no %s (scripts/deps.sh installs the prometheus package)", prometheusBin)
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: tl-proxy
    authorization:
      type: Bearer
      credentials_file: %s/key
    static_configs:
      - targets: ['%s']
`, dir, target)
	if err := os.WriteFile(filepath.Join(dir, "key"), []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cmd := exec.Command(prometheusBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("prometheus log:\n%s", tail(log.String(), 20))
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready: %v\n%s", err, tail(log.String(), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// promQuery runs an instant query and returns each series' value by its
// labels (sorted name=value pairs, __name__ left out).
func promQuery(t *testing.T, base, q string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &r); err != nil || r.Status != "success" {
		t.Fatalf("query %s: %v %s", q, err, body)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		var ls []string
		for k, v := range s.Metric {
			if k != "__name__" {
				ls = append(ls, k+"="+v)
			}
		}
		sort.Strings(ls)
		var v float64
		fmt.Sscan(fmt.Sprint(s.Value[1]), &v)
		out[strings.Join(ls, ",")] = v
	}
	return out
}

// promScalar is the single value of q (a query that sums to one series),
// and whether there was one.
func promScalar(t *testing.T, base, q string) (float64, bool) {
	t.Helper()
	for _, v := range promQuery(t, base, q) {
		return v, true
	}
	return 0, false
}

// waitProm polls q until ok accepts its value, for at most d; it returns
// the last value.
func waitProm(t *testing.T, base, q string, d time.Duration, ok func(float64) bool) (float64, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		v, found := promScalar(t, base, q)
		if found && ok(v) {
			return v, true
		}
		if time.Now().After(deadline) {
			return v, found
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// metricsSystem is a sandbox whose proxy has an operator door with a key
// and an SSH front door.
func metricsSystem(t *testing.T) (s *System, opAddr, opKey, sshKey string) {
	t.Helper()
	RequireRoot(t)
	key := NewSSHKey(t, "prom-tester")
	opAddr, opKey = freeAddr(t), "tl_op_"+randHex(16)
	s = Start(t, Options{
		SSHKeys:     WriteAuthorizedKeys(t, key.Public),
		ProxyArgs:   []string{"--operator-addr", opAddr},
		ProxyConfig: func(cfg map[string]any) { cfg["operator_keys"] = map[string]string{opKey: "prometheus"} },
	})
	ensureUser(t, s)
	return s, opAddr, opKey, key.Private
}

// driveTraffic is the traffic the proof expects to see counted: four runs
// (two succeed, one fails, one is signalled), a PTY session deleted
// through the API, a 200 KiB file written and read back, an SSH login.
func driveTraffic(t *testing.T, s *System, sshKey string) {
	t.Helper()
	for _, cmd := range []string{"true", "true", "exit 3", "kill -TERM $$"} {
		run(t, s, map[string]any{"command": "sh", "args": []string{"-c", cmd}})
	}
	p := ptyCreate(t, s, map[string]any{"command": "sh"})
	c := ptyDial(t, s, p)
	c.ready()
	c.input("echo metrics-$((6*7))\n")
	c.waitFor("metrics-42", 20*time.Second)
	s.JSON("DELETE", "/api/v1/pty/"+p.SessionID, nil, http.StatusNoContent, nil)
	waitEnded(t, s, p.SessionID, 20*time.Second)

	body := strings.Repeat("0123456789abcdef", 200<<10/16)
	s.JSON("PUT", filePath("metrics.bin"), body, http.StatusNoContent, nil)
	resp := s.Do("GET", filePath("metrics.bin"), nil)
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != body {
		t.Fatalf("file read back: %d bytes, want %d", len(got), len(body))
	}

	out, err := exec.Command("ssh", append(s.SSHArgs(sshKey), s.SSHDest(), "echo ssh-ok")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ssh-ok") {
		t.Fatalf("ssh login: %v: %s", err, out)
	}
}

// cutUplink freezes the agent past the pause detector's threshold: it
// redials at once when it thaws (the proxy's side of the link is dead).
func cutUplink(t *testing.T, s *System) {
	t.Helper()
	if err := s.SignalAgent(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	_ = s.SignalAgent(syscall.SIGCONT)
	deadline := time.Now().Add(20 * time.Second)
	for agentState(t, s).Uplink.Reconnects < 1 || !proxySandbox(t, s).Connected {
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect after the cut: %+v\n%s", agentState(t, s).Uplink, tail(s.AgentLog(), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPrometheusScrape: a real Prometheus scrapes the operator door; each
// rule is a query and the value the traffic implies.
func TestPrometheusScrape(t *testing.T) {
	s, opAddr, opKey, sshKey := metricsSystem(t)
	prom := startPrometheus(t, opAddr, opKey)
	driveTraffic(t, s, sshKey)
	cutUplink(t, s)
	sel := `{sandbox="` + s.SandboxID + `"}`
	exact := func(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
	atLeast := func(want float64) func(float64) bool { return func(v float64) bool { return v >= want } }
	for _, r := range []struct {
		rule, query string
		ok          func(float64) bool
		want        string
	}{
		{"one cut is one reconnect", "tl_agent_uplink_reconnects_total" + sel, exact(1), "1"},
		{"two uplinks were established", "tl_agent_uplink_connects_total" + sel, exact(2), "2"},
		{"the uplink is up again", "tl_agent_uplink_up" + sel, exact(1), "1"},
		{"the proxy saw two good handshakes", `tl_proxy_uplink_handshakes_total{result="ok"}`, exact(2), "2"},
		{"four runs started", "tl_agent_processes_started_total" + sel, exact(4), "4"},
		{"two runs succeeded", `tl_agent_processes_exited_total{outcome="success",sandbox="` + s.SandboxID + `"}`, exact(2), "2"},
		{"one run failed", `tl_agent_processes_exited_total{outcome="error"}`, exact(1), "1"},
		{"one run was signalled", `tl_agent_processes_exited_total{outcome="signal"}`, exact(1), "1"},
		{"no run was OOM killed", `tl_agent_processes_exited_total{outcome="oom_killed"}`, exact(0), "0"},
		{"runs count under their route pattern", `tl_agent_api_request_duration_seconds_count{route="POST /api/v1/processes/run",code="200"}`, exact(4), "4"},
		{"one PTY session was created", "tl_agent_pty_sessions_created_total" + sel, exact(1), "1"},
		{"it ended as deleted", `tl_agent_pty_sessions_ended_total{reason="deleted"}`, exact(1), "1"},
		{"no PTY session is live", "tl_agent_pty_sessions_live" + sel, exact(0), "0"},
		{"the file went in over api streams", `tl_agent_stream_bytes_total{kind="api",direction="in"}`, atLeast(200 << 10), ">= 200 KiB"},
		{"and came back out", `tl_agent_stream_bytes_total{kind="api",direction="out"}`, atLeast(200 << 10), ">= 200 KiB"},
		{"the proxy relayed it", `tl_proxy_relayed_bytes_total{kind="api",direction="to_sandbox"}`, atLeast(200 << 10), ">= 200 KiB"},
		{"the file write counts under its route", `tl_agent_api_request_duration_seconds_count{route="PUT /api/v1/files",code="204"}`, exact(1), "1"},
		{"one SSH login through the front door", `tl_proxy_ssh_logins_total{result="ok"}`, exact(1), "1"},
		{"the agent served it", "tl_agent_ssh_connections_total" + sel, exact(1), "1"},
		{"on a session channel", `tl_agent_ssh_channels_total{type="session"}`, atLeast(1), ">= 1"},
		{"front door requests count by route kind", `sum(tl_proxy_http_request_duration_seconds_count{route="api"})`, atLeast(8), ">= 8"},
		{"the sandbox is known and connected", `tl_proxy_sandbox_connected{sandbox="` + s.SandboxID + `"}`, exact(1), "1"},
		{"the agent answered the scrape", `tl_proxy_agent_up{sandbox="` + s.SandboxID + `"}`, exact(1), "1"},
		{"the reaper reaped what it started", "tl_agent_reaper_children_reaped_total" + sel, atLeast(4), ">= 4"},
		{"the agent's RSS is read", "tl_agent_resident_memory_bytes" + sel, atLeast(1 << 20), ">= 1 MiB"},
	} {
		t.Run(r.rule, func(t *testing.T) {
			if v, ok := waitProm(t, prom, r.query, 30*time.Second, r.ok); !ok || !r.ok(v) {
				t.Fatalf("%s = %v (found %v), want %s", r.query, v, ok, r.want)
			}
		})
	}
	t.Run("every agent family is in Prometheus", func(t *testing.T) {
		st := agentState(t, s)
		for _, f := range metrics.Agent {
			name := f.Name
			if f.Type == metrics.Histogram {
				name += "_count"
			}
			cg := st.Cgroup
			switch {
			case strings.HasPrefix(f.Name, "tl_agent_cgroup_") && cg == nil:
				continue // no cgroup file system in this sandbox: TestCgroupInSandbox
			case f.Name == "tl_agent_cgroup_memory_limit_bytes" && cg.MemoryLimit == 0,
				f.Name == "tl_agent_cgroup_pids_limit" && cg.PidsLimit == 0,
				f.Name == "tl_agent_cgroup_oom_kills_total" && cg.OOMKills < 0:
				continue // unlimited or unreadable here: no series, by design
			}
			if _, ok := waitProm(t, prom, "count("+name+sel+")", 10*time.Second, atLeast(1)); !ok {
				t.Errorf("family %s: no series for the sandbox", f.Name)
			}
		}
	})
	t.Run("every proxy family is in Prometheus", func(t *testing.T) {
		for _, name := range []string{"tl_proxy_sandboxes_known", "tl_proxy_sandboxes_connected", "tl_proxy_sandbox_connected",
			"tl_proxy_uplink_handshakes_total", "tl_proxy_http_request_duration_seconds_count", "tl_proxy_relayed_bytes_total", "tl_proxy_spliced_bytes_total",
			"tl_proxy_ssh_logins_total", "tl_proxy_agent_up", "process_resident_memory_bytes", "go_goroutines"} {
			if _, ok := waitProm(t, prom, "count("+name+")", 10*time.Second, atLeast(1)); !ok {
				t.Errorf("family %s missing", name)
			}
		}
	})
	t.Run("the status shows the same figures", func(t *testing.T) {
		st := agentState(t, s)
		if st.Uplink.Reconnects != 1 || st.Processes == nil || st.Processes.Exited["success"] != 2 || st.Processes.Started != 4 ||
			st.PTYSessions == nil || st.PTYSessions.Ended["deleted"] != 1 {
			t.Fatalf("status: uplink %+v processes %+v pty %+v", st.Uplink, st.Processes, st.PTYSessions)
		}
	})
}
