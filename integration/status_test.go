package integration

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"

	"github.com/tensorlake/tl-agent/agent"
	"github.com/tensorlake/tl-agent/proxy"
)

// agentState is `tl-agent status --json` of s's agent, decoded into the
// agent's own typed Status: what the operator sees, and what tests assert
// on instead of the wording of log lines.
func agentState(t TB, s *System) agent.Status {
	t.Helper()
	out, err := exec.Command(filepath.Join(s.bin, "tl-agent"), "status", "--json", "--socket", s.ControlSocket()).Output()
	if err != nil {
		t.Fatalf("tl-agent status: %v", err)
	}
	var st agent.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("tl-agent status %q: %v", out, err)
	}
	return st
}

// sshConnectionsTotal is the agent's count of SSH connections served.
func sshConnectionsTotal(t TB, s *System) int {
	t.Helper()
	st := agentState(t, s)
	if st.SSH == nil {
		t.Fatalf("agent status has no ssh part")
	}
	return st.SSH.ConnectionsTotal
}

// sftpSessionsTotal is the agent's count of SFTP sessions served.
func sftpSessionsTotal(t TB, s *System) int {
	t.Helper()
	st := agentState(t, s)
	if st.SFTP == nil {
		t.Fatalf("agent status has no sftp part")
	}
	return int(st.SFTP.SessionsTotal)
}

// proxySandbox is the proxy's view of s's sandbox (GET /_proxy/sandboxes).
func proxySandbox(t TB, s *System) proxy.SandboxState {
	t.Helper()
	req, _ := http.NewRequest("GET", s.BaseURL()+"/_proxy/sandboxes", nil)
	req.Header.Set("Authorization", "Bearer "+s.APIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /_proxy/sandboxes: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		Sandboxes []proxy.SandboxState `json:"sandboxes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("GET /_proxy/sandboxes: %v", err)
	}
	for _, sb := range out.Sandboxes {
		if sb.ID == s.SandboxID {
			return sb
		}
	}
	t.Fatalf("GET /_proxy/sandboxes does not list %s", s.SandboxID)
	return proxy.SandboxState{}
}
