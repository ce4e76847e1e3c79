// Package integration drives the real system end to end: it builds
// tl-agent and tl-proxy, starts the proxy on loopback and the agent as PID 1
// in fresh namespaces over a throwaway root (scripts/sandbox-init.sh), and
// talks to the sandbox only through the proxy, with real clients.
//
// The harness lives in a non-test file so that benchmarks (cmd/tl-bench)
// start the system the same way the tests do.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TB is the subset of testing.TB the harness uses, so benchmarks outside
// `go test` can drive it too.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

var _ TB = (testing.TB)(nil)

// Root is the module's root folder.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds tl-agent and tl-proxy once per process and returns the
// folder holding them.
func Binaries(t TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "tl-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/tl-agent", "./cmd/tl-proxy")
		cmd.Dir = Root()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("%v", buildErr)
	}
	return binDir
}

// Options shape a System.
type Options struct {
	// AgentArgs are appended to the agent's flags (e.g. --pty-idle-timeout).
	AgentArgs []string
	// AgentEnv is added to the agent's environment.
	AgentEnv []string
	// Main is a main command run by the agent after `--`.
	Main []string
	// Bare leaves the API filesystems unmounted (TL_SANDBOX_BARE).
	Bare bool
	// NoSandbox runs the agent as a plain child process instead of PID 1
	// in namespaces (for tests that must run without root).
	NoSandbox bool
	// SSHKeys is an authorized-keys file for the proxy's SSH front door.
	SSHKeys string
	// ProxyArgs are appended to tl-proxy's flags (e.g. uplink TLS).
	ProxyArgs []string
	// SandboxUser is the sandbox's "user" in the proxy config (the
	// agent's --user, for the SSH front door's port routes).
	SandboxUser string
	// NoAgent starts only the proxy: the test runs its own agent (in a
	// container, say) with AgentFlags and waits with WaitConnected.
	NoAgent bool
	// CgroupV1, when set, gives the namespace sandbox a v1 memory and
	// pids cgroup of its own with these limits (cgroup.go).
	CgroupV1 *CgroupV1
	// EtcTLAgent is a folder copied to the sandbox's /etc/tl-agent (boot
	// services and hooks, as an image declares them).
	EtcTLAgent string
	// ProxyConfig edits the proxy's JSON config, as the file holds it,
	// before it is first written: more sandboxes, scoped keys,
	// ssh_limits. ReconfigureProxy edits it later.
	ProxyConfig func(cfg map[string]any)
	// BinDir runs tl-agent and tl-proxy from this folder instead of the
	// ones built from this tree (benchmarks: A/B rounds against another
	// build in one run).
	BinDir string
}

// System is a running proxy plus a sandbox whose agent is connected to it.
type System struct {
	t         TB
	opts      Options
	bin       string
	dir       string
	cfgPath   string
	SandboxID string
	Token     string
	// TokenFile holds Token (0600): agents get --token-file, never the
	// token on a command line others can read in ps.
	TokenFile string
	APIKey    string

	UplinkAddr string
	HTTPAddr   string
	SSHAddr    string

	mu        sync.Mutex
	proxy     *exec.Cmd
	proxyDone chan struct{}
	agent     *exec.Cmd
	agentDone chan struct{}
	agentErr  error
	agentLog  *syncBuffer
	proxyLog  *syncBuffer
	cgroup    string // the sandbox's v1 cgroups' name (Options.CgroupV1)
}

// RequireRoot skips a test that needs root (namespaces, mounts), with the
// reason. CI runs as root, so there these tests always run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs tl-agent as PID 1 in fresh namespaces")
	}
}

// Start starts the proxy and the sandbox and waits until the agent's
// uplink is connected.
func Start(t TB, opts Options) *System {
	t.Helper()
	s := &System{t: t, opts: opts, bin: opts.BinDir, dir: t.TempDir(), SandboxID: "sbx-test"}
	if s.bin == "" {
		s.bin = Binaries(t)
	}
	s.Token = randHex(32)
	s.APIKey = "tl_test_" + randHex(16)
	s.UplinkAddr, s.HTTPAddr, s.SSHAddr = freeAddr(t), freeAddr(t), freeAddr(t)
	sandbox := map[string]string{"token": s.Token}
	if opts.SandboxUser != "" {
		sandbox["user"] = opts.SandboxUser
	}
	cfg := map[string]any{
		"sandboxes": map[string]any{s.SandboxID: sandbox},
		"api_keys":  map[string]string{s.APIKey: "tester"},
		"domain":    "sandbox.localhost",
	}
	if opts.SSHKeys != "" {
		cfg["ssh_authorized_keys"] = opts.SSHKeys
		cfg["ssh_host_key"] = filepath.Join(s.dir, "ssh_host_key")
	}
	s.cfgPath = filepath.Join(s.dir, "proxy.json")
	s.writeProxyConfig(cfg, opts.ProxyConfig)
	s.TokenFile = filepath.Join(s.dir, "agent.token")
	if err := os.WriteFile(s.TokenFile, []byte(s.Token+"\n"), 0o600); err != nil {
		t.Fatalf("write token file: %v", err)
	}
	s.agentLog, s.proxyLog = &syncBuffer{}, &syncBuffer{}
	if opts.CgroupV1 != nil && !opts.NoSandbox {
		s.cgroup = makeCgroupV1(t, *opts.CgroupV1) // removed after Stop
	}
	s.StartProxy()
	t.Cleanup(s.Stop)
	if opts.NoAgent {
		return s
	}
	s.StartAgent()
	s.WaitConnected(20 * time.Second)
	s.WaitHealthy(20 * time.Second)
	return s
}

// StartProxy starts (or restarts) tl-proxy on the system's fixed ports.
func (s *System) StartProxy() {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, "tl-proxy"), "--config", s.cfgPath,
		"--uplink-addr", s.UplinkAddr, "--http-addr", s.HTTPAddr, "--ssh-addr", s.SSHAddr,
		"--state-dir", s.dir, "--log-level", "debug")
	cmd.Args = append(cmd.Args, s.opts.ProxyArgs...)
	cmd.Stdout = s.proxyLog
	cmd.Stderr = s.proxyLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start proxy: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.proxy, s.proxyDone = cmd, done
	s.mu.Unlock()
	waitTCP(s.t, s.HTTPAddr, 10*time.Second)
}

// writeProxyConfig writes cfg, after edit (if any), as the proxy's config.
// The round trip through JSON gives edit the map it would read from the
// file (nested maps as map[string]any).
func (s *System) writeProxyConfig(cfg map[string]any, edit func(map[string]any)) {
	s.t.Helper()
	if edit != nil {
		data, _ := json.Marshal(cfg)
		cfg = nil
		if err := json.Unmarshal(data, &cfg); err != nil {
			s.t.Fatalf("proxy config: %v", err)
		}
		edit(cfg)
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		s.t.Fatalf("proxy config: %v", err)
	}
	if err := os.WriteFile(s.cfgPath, data, 0o600); err != nil {
		s.t.Fatalf("write proxy config: %v", err)
	}
}

// ReconfigureProxy edits the proxy's config (as Options.ProxyConfig
// does), restarts tl-proxy with it and, when the harness runs an agent,
// waits until it has reconnected.
func (s *System) ReconfigureProxy(edit func(cfg map[string]any)) {
	s.t.Helper()
	data, err := os.ReadFile(s.cfgPath)
	if err != nil {
		s.t.Fatalf("read proxy config: %v", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		s.t.Fatalf("proxy config: %v", err)
	}
	s.writeProxyConfig(cfg, edit)
	s.KillProxy()
	s.StartProxy()
	s.mu.Lock()
	running := s.agent != nil
	s.mu.Unlock()
	if running {
		s.WaitConnected(30 * time.Second)
	}
}

// KillProxy kills tl-proxy abruptly (SIGKILL) and waits for it.
func (s *System) KillProxy() {
	s.mu.Lock()
	cmd, done := s.proxy, s.proxyDone
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// AgentFlags are the flags that connect an agent to this system's proxy.
func (s *System) AgentFlags() []string {
	return []string{"--proxy", s.UplinkAddr, "--sandbox-id", s.SandboxID, "--token-file", s.TokenFile, "--log-level", "debug"}
}

// agentArgs are the agent flags the harness passes to its own agent.
func (s *System) agentArgs() []string {
	args := append(s.AgentFlags(), s.opts.AgentArgs...)
	if len(s.opts.Main) > 0 {
		args = append(append(args, "--"), s.opts.Main...)
	}
	return args
}

// StartAgent starts the sandbox: tl-agent as PID 1 in new namespaces.
func (s *System) StartAgent() {
	s.t.Helper()
	var cmd *exec.Cmd
	agentBin := filepath.Join(s.bin, "tl-agent")
	if s.opts.NoSandbox {
		// These flags go first: agentArgs ends with `-- main command`, and a
		// flag after it would be the main command's, leaving provisioning
		// on, on this machine's own /etc.
		args := append([]string{"--control-socket", filepath.Join(s.dir, "agent.sock"), "--provision=false", "--mount=false"}, s.agentArgs()...)
		cmd = exec.Command(agentBin, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	} else {
		root := filepath.Join(s.dir, "sandbox")
		if err := os.MkdirAll(root, 0o755); err != nil {
			s.t.Fatalf("sandbox dir: %v", err)
		}
		args := append([]string{filepath.Join(Root(), "scripts", "sandbox-init.sh"), agentBin}, s.agentArgs()...)
		cmd = exec.Command("/bin/bash", args...)
		cmd.Env = append(os.Environ(), "TL_SANDBOX_DIR="+root)
		if s.opts.Bare {
			cmd.Env = append(cmd.Env, "TL_SANDBOX_BARE=1")
		}
		if s.cgroup != "" {
			cmd.Env = append(cmd.Env, "TL_SANDBOX_CGROUP_V1="+s.cgroup)
		}
		if s.opts.EtcTLAgent != "" {
			cmd.Env = append(cmd.Env, "TL_SANDBOX_ETC_TL_AGENT="+s.opts.EtcTLAgent)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
			Pdeathsig:  syscall.SIGKILL,
		}
	}
	cmd.Env = append(cmd.Environ(), s.opts.AgentEnv...)
	if !s.opts.NoSandbox {
		// The sandbox's /tmp is its own: the token file is handed over as
		// fd 3 (the agent reads /dev/fd/3 and closes it).
		f, err := os.Open(s.TokenFile)
		if err != nil {
			s.t.Fatalf("token file: %v", err)
		}
		defer f.Close()
		cmd.ExtraFiles = []*os.File{f}
		for i, a := range cmd.Args {
			if a == s.TokenFile {
				cmd.Args[i] = "/dev/fd/3"
			}
		}
	}
	cmd.Stdout = s.agentLog
	cmd.Stderr = s.agentLog
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start agent: %v", err)
	}
	done := make(chan struct{})
	s.mu.Lock()
	s.agent, s.agentDone = cmd, done
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.agentErr = err
		s.mu.Unlock()
		close(done)
	}()
}

// ProxyPid is tl-proxy's pid.
func (s *System) ProxyPid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proxy.Process.Pid
}

// AgentPid is the agent's pid as this machine sees it.
func (s *System) AgentPid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.agent.Process.Pid
}

// SignalAgent sends sig to the agent (PID 1 of the sandbox).
func (s *System) SignalAgent(sig syscall.Signal) error {
	return syscall.Kill(s.AgentPid(), sig)
}

// WaitAgentExit waits for the agent to exit and returns its exit code, or
// fails the test after d.
func (s *System) WaitAgentExit(d time.Duration) int {
	s.t.Helper()
	s.mu.Lock()
	done := s.agentDone
	s.mu.Unlock()
	select {
	case <-done:
	case <-time.After(d):
		s.t.Fatalf("agent did not exit within %v\nagent log:\n%s", d, s.AgentLog())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(s.agentErr, &ee) {
		return ee.ExitCode()
	}
	if s.agentErr != nil {
		return -1
	}
	return 0
}

// SandboxPath is path inside the sandbox as seen from this machine.
func (s *System) SandboxPath(path string) string {
	if s.opts.NoSandbox {
		return path
	}
	return fmt.Sprintf("/proc/%d/root%s", s.AgentPid(), path)
}

// ControlSocket is the agent's control socket as seen from this machine.
func (s *System) ControlSocket() string {
	if s.opts.NoSandbox {
		return filepath.Join(s.dir, "agent.sock")
	}
	return s.SandboxPath("/run/tl-agent.sock")
}

// Stop ends the agent (SIGTERM, then SIGKILL) and the proxy.
func (s *System) Stop() {
	s.mu.Lock()
	agent, adone := s.agent, s.agentDone
	s.mu.Unlock()
	if agent != nil {
		terminate(agent.Process, adone, 15*time.Second)
	}
	s.KillProxy()
	if tt, ok := s.t.(testing.TB); ok && tt.Failed() {
		tt.Logf("agent log (tail):\n%s", tail(s.AgentLog(), 60))
		tt.Logf("proxy log (tail):\n%s", tail(s.ProxyLog(), 30))
	}
}

// AgentLog and ProxyLog return what each process has logged so far.
func (s *System) AgentLog() string { return s.agentLog.String() }
func (s *System) ProxyLog() string { return s.proxyLog.String() }

// WaitConnected waits until the proxy reports the sandbox connected.
func (s *System) WaitConnected(d time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if s.Connected() {
			return
		}
		select {
		case <-s.agentDone:
			s.t.Fatalf("agent exited before connecting\nagent log:\n%s", s.AgentLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.t.Fatalf("sandbox not connected within %v\nagent log:\n%s\nproxy log:\n%s", d, tail(s.AgentLog(), 40), tail(s.ProxyLog(), 40))
}

// WaitHealthy waits for the agent's first answer through the proxy (its
// health). The proxy counts a sandbox connected from the uplink's
// handshake, which the agent makes first thing at its start, before it
// has provisioned the sandbox (docs/supervisor.md, "Start-up"); requests
// sent then wait for it, but what a test reads inside the sandbox may not
// be there yet.
func (s *System) WaitHealthy(d time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Until(deadline))
		resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/health", nil))
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.agentDone:
			s.t.Fatalf("agent exited before serving\nagent log:\n%s", s.AgentLog())
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.t.Fatalf("sandbox not serving within %v\nagent log:\n%s", d, tail(s.AgentLog(), 40))
}

// Connected asks the proxy whether the sandbox's uplink is up.
func (s *System) Connected() bool { return s.ConnectedID(s.SandboxID) }

// ConnectedID asks the proxy whether sandbox id's uplink is up.
func (s *System) ConnectedID(id string) bool {
	req, _ := http.NewRequest("GET", s.BaseURL()+"/_proxy/sandboxes", nil)
	req.Header.Set("Authorization", "Bearer "+s.APIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var out struct {
		Sandboxes []struct {
			ID        string `json:"id"`
			Connected bool   `json:"connected"`
		} `json:"sandboxes"`
	}
	if json.NewDecoder(resp.Body).Decode(&out) != nil {
		return false
	}
	for _, sb := range out.Sandboxes {
		if sb.ID == id {
			return sb.Connected
		}
	}
	return false
}

// BaseURL is the proxy's HTTP front door.
func (s *System) BaseURL() string { return "http://" + s.HTTPAddr }

// WSURL is the proxy's front door with the ws scheme.
func (s *System) WSURL() string { return "ws://" + s.HTTPAddr }

// Request builds a request to the sandbox's API with auth and the
// <sandbox>.local Host the SDKs send.
func (s *System) Request(ctx context.Context, method, path string, body io.Reader) *http.Request {
	req, err := http.NewRequestWithContext(ctx, method, s.BaseURL()+path, body)
	if err != nil {
		s.t.Fatalf("request: %v", err)
	}
	req.Host = s.SandboxID + ".local"
	req.Header.Set("Authorization", "Bearer "+s.APIKey)
	return req
}

// Do sends a request to the sandbox's API; body may be nil, a []byte, a
// string or anything JSON-encodable.
func (s *System) Do(method, path string, body any) *http.Response {
	s.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(b)
	case string:
		r = strings.NewReader(b)
	case io.Reader:
		r = b
	default:
		data, _ := json.Marshal(b)
		r = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	s.t.Cleanup(cancel)
	req := s.Request(ctx, method, path, r)
	if _, ok := body.(map[string]any); ok {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	s.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// JSON sends a request and decodes a JSON answer, checking the status.
func (s *System) JSON(method, path string, body any, wantStatus int, out any) {
	s.t.Helper()
	resp := s.Do(method, path, body)
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		s.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, wantStatus, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			s.t.Fatalf("%s %s: decode %q: %v", method, path, data, err)
		}
	}
}

// Exec runs a command inside the sandbox's namespaces from this machine
// (nsenter), for checks that must not go through the agent.
func (s *System) Exec(args ...string) (string, error) {
	pid := fmt.Sprint(s.AgentPid())
	full := append([]string{"-t", pid, "-m", "-u", "-i", "-p", "-r", "-w"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	return string(out), err
}

// handedOut holds every port freeAddr returned in this test process:
// the kernel may give a just-closed port to the next bind(":0"), so
// two calls in a row (a test's --ssh-listen, then the proxy's HTTP
// port) could name the same port and one of the two binaries would
// find it taken.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

func freeAddr(t TB) string {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		addr := ln.Addr().(*net.TCPAddr)
		ln.Close()
		if !handedOut.ports[addr.Port] {
			handedOut.ports[addr.Port] = true
			return addr.String()
		}
	}
	t.Fatalf("free port: the kernel kept giving ports already handed out")
	return ""
}

func waitTCP(t TB, addr string, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not listening within %v", addr, d)
}

func randHex(n int) string {
	b := make([]byte, n)
	f, _ := os.Open("/dev/urandom")
	defer f.Close()
	_, _ = io.ReadFull(f, b)
	return fmt.Sprintf("%x", b)
}

func tail(s string, lines int) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var all []string
	for sc.Scan() {
		all = append(all, sc.Text())
	}
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// syncBuffer is a bounded, goroutine-safe log sink: it keeps the last
// 4 MiB so a chatty agent in a long test cannot grow memory.
type syncBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const logKeep = 4 << 20

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > logKeep {
		b.buf = append(b.buf[:0:0], b.buf[len(b.buf)-logKeep:]...)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// StartExtraAgent starts another agent for this system's sandbox id and
// token as a plain process, with extra flags, and returns its log. It is
// stopped at the end of t. Tests use it for refused or misconfigured
// agents beside the real one. A "--token" in extra replaces the token file.
func (s *System) StartExtraAgent(t TB, extra []string) *syncBuffer {
	t.Helper()
	cred := []string{"--token-file", s.TokenFile}
	for _, a := range extra {
		if a == "--token" {
			cred = nil
		}
	}
	args := append(append([]string{"--proxy", s.UplinkAddr, "--sandbox-id", s.SandboxID}, cred...), extra...)
	return startBareAgent(t, s.bin, args...)
}

// startBareAgent runs tl-agent (from bin) as a plain child that touches
// nothing of this machine (no control socket, provisioning or mounts)
// with args, its output in the returned buffer; it is stopped at the end
// of the test (SIGTERM, SIGKILL after 10 s).
func startBareAgent(t TB, bin string, args ...string) *syncBuffer {
	t.Helper()
	args = append([]string{"--control-socket", "", "--provision=false", "--mount=false"}, args...)
	cmd := exec.Command(filepath.Join(bin, "tl-agent"), args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { terminate(cmd.Process, done, 10*time.Second) })
	return out
}

// terminate sends p SIGTERM and, when it has not ended (done) within
// grace, SIGKILL; it returns once p has ended.
func terminate(p *os.Process, done <-chan struct{}, grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = p.Kill()
		<-done
	}
}

// tokenFile writes a fresh uplink token to a 0600 file of its own and
// returns both.
func tokenFile(t TB) (token, path string) {
	t.Helper()
	token = randHex(32)
	path = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatalf("token file: %v", err)
	}
	return token, path
}

// PortRequest builds a request to a TCP port inside the sandbox through
// the proxy's <port>-<sandbox>.local route, with auth.
func (s *System) PortRequest(ctx context.Context, method string, port int, path string, body io.Reader) *http.Request {
	req := s.Request(ctx, method, path, body)
	req.Host = fmt.Sprintf("%d-%s.local", port, s.SandboxID)
	return req
}

// WantError sends a request and checks the spec's error answer: status,
// and a JSON body {"error": non-empty, "code": code}. It reports to t, so
// table tests can call it from subtests.
func (s *System) WantError(t TB, method, path string, body any, status int, code string) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		r = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(s.Request(ctx, method, path, r))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e map[string]string
	if err := json.Unmarshal(data, &e); err != nil || resp.StatusCode != status || e["code"] != code || e["error"] == "" {
		t.Fatalf("%s %s: got %d %s, want %d %s", method, path, resp.StatusCode, data, status, code)
	}
}
