package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Live upgrade (docs/upgrade.md) end to end: second builds of tl-agent to
// upgrade to, placed inside the sandbox's root, and the two ways an
// upgrade is asked for: `tl-agent upgrade` inside the sandbox (its control
// socket) and the platform's door on tl-proxy's operator listener (the
// test's operator client, lifecycle_test.go).

// UpgradeBuild is a tl-agent binary built for upgrade tests: its path on
// this machine and the version it reports.
type UpgradeBuild struct {
	Path    string
	Version string
}

// Upgrade builds: the second version and the build that fails its
// restore after the exec (agent.testFailRestore), so it rolls back.
const (
	UpgradeVersionB    = "upgrade-test-b"
	UpgradeVersionFail = "upgrade-test-fail-restore"
)

// failRestoreFlag is the link-time switch of the fail-restore build. The
// linker ignores -X of a symbol that does not exist, so a test that runs
// this build checks that it really rolled back (it cannot pass by the
// build simply upgrading).
const failRestoreFlag = "github.com/tensorlake/tl-agent/agent.testFailRestore=1"

var (
	upgradeMu     sync.Mutex
	upgradeBuilds = map[string]*upgradeBuildOnce{}
)

type upgradeBuildOnce struct {
	once sync.Once
	b    UpgradeBuild
	err  error
}

// UpgradeBinary builds tl-agent stamped with version (and, when
// failRestore, the fail-restore switch) once per process, as Binaries
// builds the main one, and returns it.
func UpgradeBinary(t TB, version string, failRestore bool) UpgradeBuild {
	t.Helper()
	key := fmt.Sprintf("%s/%v", version, failRestore)
	upgradeMu.Lock()
	ob := upgradeBuilds[key]
	if ob == nil {
		ob = &upgradeBuildOnce{}
		upgradeBuilds[key] = ob
	}
	upgradeMu.Unlock()
	bin := Binaries(t) // first: it may fail the test, outside the Once
	ob.once.Do(func() {
		// Beside the harness's own builds (one folder per process).
		dir, err := os.MkdirTemp(bin, "upgrade-")
		if err != nil {
			ob.err = err
			return
		}
		ldflags := "-X main.version=" + version
		if failRestore {
			ldflags += " -X " + failRestoreFlag
		}
		out := filepath.Join(dir, "tl-agent")
		cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", out, "./cmd/tl-agent")
		cmd.Dir = Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if data, err := cmd.CombinedOutput(); err != nil {
			ob.err = fmt.Errorf("go build %s: %v\n%s", ldflags, err, data)
			return
		}
		ob.b = UpgradeBuild{Path: out, Version: version}
	})
	if ob.err != nil {
		t.Fatalf("%v", ob.err)
	}
	return ob.b
}

// MainBuild is the harness's own tl-agent (the one the sandbox starts
// with) and its version.
func MainBuild(t TB) UpgradeBuild {
	t.Helper()
	bin := filepath.Join(Binaries(t), "tl-agent")
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatalf("tl-agent version: %v", err)
	}
	return UpgradeBuild{Path: bin, Version: strings.TrimSpace(string(out))}
}

// InstallFile copies host file src into the sandbox's root at path (its
// throwaway overlay), mode 0755, and returns path: a new binary where the
// agent, in its own mount namespace, can execute it.
func (s *System) InstallFile(t TB, src, path string) string {
	t.Helper()
	dst := s.SandboxPath(path)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatalf("install %s: %v", path, err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatalf("install %s: %v", path, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatalf("install %s: %v", path, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatalf("install %s: %v", path, err)
	}
	if err := out.Close(); err != nil {
		t.Fatalf("install %s: %v", path, err)
	}
	return path
}

// UpgradeInside runs `tl-agent upgrade PATH [args]` inside the sandbox
// (as an operator there would: the default control socket) and returns
// its combined output and error.
func (s *System) UpgradeInside(path string, args ...string) (string, error) {
	return s.Exec(append([]string{"/usr/local/bin/tl-agent", "upgrade", path}, args...)...)
}

// Info is /api/v1/info through the proxy, as much as upgrade checks need.
type Info struct {
	Version    string `json:"version"`
	UptimeSecs int64  `json:"uptime_secs"`
}

// TryInfo asks /api/v1/info through the proxy once; ok is false when the
// sandbox does not answer 200 (its uplink is down, say).
func (s *System) TryInfo(timeout time.Duration) (Info, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/info", nil))
	if err != nil {
		return Info{}, false
	}
	defer resp.Body.Close()
	var in Info
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&in) != nil {
		return Info{}, false
	}
	return in, true
}

// WaitServing waits until the sandbox answers through the proxy as
// version and returns how long that took from `from`; it fails t after d.
func (s *System) WaitServing(t TB, version string, from time.Time, d time.Duration) time.Duration {
	t.Helper()
	for deadline := from.Add(d); time.Now().Before(deadline); {
		if in, ok := s.TryInfo(2 * time.Second); ok && in.Version == version {
			return time.Since(from)
		}
		select {
		case <-s.agentDone:
			t.Fatalf("the agent (PID 1) exited while upgrading to %s: the sandbox is gone\nagent log:\n%s", version, tail(s.AgentLog(), 60))
		case <-time.After(10 * time.Millisecond):
		}
	}
	in, _ := s.TryInfo(2 * time.Second)
	t.Fatalf("sandbox not serving as %s within %v (it answers as %q)\nagent log:\n%s", version, d, in.Version, tail(s.AgentLog(), 60))
	return 0
}

// AgentFDs counts the agent's open fds as this machine sees them
// (/proc/PID/fd of PID 1 of the sandbox).
func (s *System) AgentFDs(t TB) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.AgentPid()))
	if err != nil {
		t.Fatalf("agent fds: %v", err)
	}
	return len(ents)
}
