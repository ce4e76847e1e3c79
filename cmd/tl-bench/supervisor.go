package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tensorlake/tl-agent/integration"
)

func init() { register("supervisor", benchSupervisor) }

// benchSupervisor measures how fast a sandbox is ready and what the agent
// costs at rest:
//   - exec of tl-agent to its first health answer through the proxy, as
//     PID 1 of a fresh sandbox, against the same sandbox exec'ing /bin/true
//     (the sandbox's own set-up: namespaces, overlay, mounts) and against
//     OpenSSH's sshd from exec to its banner;
//   - the same from the sandbox script's exec of the binary (its own
//     set-up left out) against E2B's envd exec'd the same way as PID 1 of
//     the same sandbox, timed to its first GET /health answer directly (no
//     proxy, no registration), rounds interleaved: TL_BENCH_ENVD=/path to
//     an envd binary, skipped otherwise;
//   - the same for a plain tl-agent process (no sandbox, no provisioning)
//     against fork+exec+wait of /bin/true;
//   - resident memory of the idle agent against the idle sshd listener.
func benchSupervisor(e *Env) []Result {
	samples := 10
	if e.Quick {
		samples = 3
	}
	stamp := filepath.Join(e.TempDir(), "exec-stamp")
	s := e.System(integration.Options{AgentEnv: []string{"TL_SANDBOX_EXEC_STAMP=" + stamp}})
	envd := os.Getenv("TL_BENCH_ENVD")
	var inSandbox, untilLog, fromExec, envdReady []time.Duration
	for range samples {
		st := restartAgent(e, s, stamp)
		inSandbox, untilLog, fromExec = append(inSandbox, st.ready), append(untilLog, st.logged), append(fromExec, st.fromExec)
		if envd != "" {
			envdReady = append(envdReady, envdToHealth(e, envd, stamp))
		}
	}
	sandboxTrue := median(e, samples, func() time.Duration { return sandboxRun(e, "/bin/true") })
	ssh := e.OpenSSH()
	sshdStart := median(e, samples, func() time.Duration { return sshdToBanner(e, ssh) })

	plain := e.System(integration.Options{NoSandbox: true})
	plainStart := median(e, samples, func() time.Duration { return restartAgent(e, plain, "").ready })
	bareTrue := median(e, samples*5, func() time.Duration {
		start := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			e.Fatalf("/bin/true: %v", err)
		}
		return time.Since(start)
	})

	time.Sleep(2 * time.Second) // idle: the start-up garbage collected
	agentRSS := rssMiB(e, s.AgentPid())
	sshdPid, _ := os.ReadFile(filepath.Join(ssh.Dir, "sshd.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(sshdPid)))
	envdNote := "floor: E2B's envd exec'd the same way, GET /health direct (set TL_BENCH_ENVD)"
	if envd == "" {
		envdNote = "TL_BENCH_ENVD unset: no envd contestant"
	}
	return []Result{
		{Name: "exec to serving through proxy, PID 1 of a sandbox", Unit: "ms", Ours: Percentile(inSandbox, 50), OpenSSH: ms(sshdStart), Floor: ms(sandboxTrue), Lower: true,
			Note: "floor: same sandbox running /bin/true; ssh: sshd exec to banner"},
		{Name: "exec to the agent's first log line, PID 1 of a sandbox", Unit: "ms", Ours: Percentile(untilLog, 50), Floor: ms(sandboxTrue), Lower: true,
			Note: "the sandbox's set-up is in both"},
		{Name: "binary's exec to serving through proxy, PID 1", Unit: "ms", Ours: Percentile(fromExec, 50), Floor: Percentile(envdReady, 50), Lower: true,
			Note: envdNote},
		{Name: "exec to serving through proxy, plain process", Unit: "ms", Ours: ms(plainStart), OpenSSH: ms(sshdStart), Floor: ms(bareTrue), Lower: true,
			Note: "floor: fork+exec+wait of /bin/true"},
		{Name: "idle agent resident memory", Unit: "MiB", Ours: agentRSS, OpenSSH: rssMiB(e, pid), Lower: true,
			Note: "ssh: the idle sshd listener"},
	}
}

// startTimes are one agent start's figures.
type startTimes struct {
	ready    time.Duration // StartAgent to the first health 200 through the proxy
	logged   time.Duration // StartAgent to the first log line
	fromExec time.Duration // the sandbox script's exec of the binary to that 200
}

// restartAgent stops the system's agent, starts it again and times it
// until the first 200 from /api/v1/health through the proxy. stamp is the
// file the sandbox script writes its exec time to ("": not asked for).
func restartAgent(e *Env, s *integration.System, stamp string) startTimes {
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		e.Fatalf("stop agent: %v", err)
	}
	s.WaitAgentExit(20 * time.Second)
	if stamp != "" {
		_ = os.Remove(stamp)
	}
	start := time.Now()
	s.StartAgent()
	client := &http.Client{Timeout: time.Second}
	ok := pollHealth(func(ctx context.Context) *http.Request { return s.Request(ctx, "GET", "/api/v1/health", nil) }, client, 200)
	if !ok {
		e.Fatalf("agent not serving 30s after start\n%s", s.AgentLog())
	}
	now := time.Now()
	st := startTimes{ready: now.Sub(start), logged: firstLogLine(s.AgentLog()).Sub(start)}
	if stamp != "" {
		execAt := readStamp(e, stamp)
		st.fromExec = now.Sub(execAt)
		if os.Getenv("TL_BENCH_STARTLOG") != "" {
			printStartLog(e, s.AgentLog(), execAt, now)
		}
	}
	return st
}

// printStartLog prints the last start's log lines with their time after
// the binary's exec (TL_BENCH_STARTLOG=1): where a start spends its time.
func printStartLog(e *Env, log string, execAt, ready time.Time) {
	i := strings.LastIndex(log, `"message":"tl-agent starting"`)
	if i < 0 {
		return
	}
	for _, line := range strings.Split(log[strings.LastIndex(log[:i], "\n")+1:], "\n") {
		var v struct {
			Time    time.Time `json:"time"`
			Message string    `json:"message"`
		}
		if json.Unmarshal([]byte(line), &v) == nil && !v.Time.IsZero() {
			e.Logf("%8.2f ms  %s", ms(v.Time.Sub(execAt)), v.Message)
		}
	}
	e.Logf("%8.2f ms  (health 200 through the proxy)", ms(ready.Sub(execAt)))
}

// pollHealth asks req every 0.5 ms until it answers want, for at most 30 s.
func pollHealth(req func(ctx context.Context) *http.Request, client *http.Client, want int) bool {
	start := time.Now()
	for time.Since(start) < 30*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := client.Do(req(ctx))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				cancel()
				return true
			}
		}
		cancel()
		time.Sleep(500 * time.Microsecond)
	}
	return false
}

// readStamp is the exec time sandbox-init.sh wrote ($EPOCHREALTIME).
func readStamp(e *Env, path string) time.Time {
	b, err := os.ReadFile(path)
	if err != nil {
		e.Fatalf("exec stamp: %v", err)
	}
	sec, frac, _ := strings.Cut(strings.TrimSpace(string(b)), ".")
	secs, err1 := strconv.ParseInt(sec, 10, 64)
	us, err2 := strconv.ParseInt((frac + "000000")[:6], 10, 64)
	if err1 != nil || err2 != nil {
		e.Fatalf("exec stamp %q", b)
	}
	return time.Unix(secs, us*1000)
}

// envdPort is the port envd listens on (its default).
const envdPort = 49983

// envdToHealth runs E2B's envd as PID 1 of the same sandbox the harness
// builds (outside Firecracker: -isnotfc) and returns the time from the
// script's exec of it to its first GET /health answer (204), direct.
func envdToHealth(e *Env, bin, stamp string) time.Duration {
	_ = os.Remove(stamp)
	cmd := exec.Command("/bin/bash", filepath.Join(integration.Root(), "scripts", "sandbox-init.sh"), bin, "-isnotfc")
	cmd.Env = append(os.Environ(), "TL_SANDBOX_DIR="+e.TempDir(), "TL_SANDBOX_EXEC_STAMP="+stamp)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	var out syncBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		e.Fatalf("envd: %v", err)
	}
	// PID 1 killed: the kernel kills the rest of its namespace.
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	url := fmt.Sprintf("http://127.0.0.1:%d/health", envdPort)
	client := &http.Client{Timeout: time.Second}
	ok := pollHealth(func(ctx context.Context) *http.Request {
		r, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		return r
	}, client, http.StatusNoContent)
	if !ok {
		e.Fatalf("envd not serving 30s after start\n%s", out.String())
	}
	return time.Since(readStamp(e, stamp))
}

// syncBuf is an output buffer safe for the two writers exec gives it.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// firstLogLine is the time of the last start's "tl-agent starting" line.
func firstLogLine(log string) time.Time {
	i := strings.LastIndex(log, `"message":"tl-agent starting"`)
	if i < 0 {
		return time.Time{}
	}
	line := log[strings.LastIndex(log[:i], "\n")+1:]
	line, _, _ = strings.Cut(line, "\n")
	var v struct {
		Time time.Time `json:"time"`
	}
	_ = json.Unmarshal([]byte(line), &v)
	return v.Time
}

// sandboxRun builds the same sandbox the harness builds and execs prog as
// its PID 1, returning the time until it exits.
func sandboxRun(e *Env, prog string) time.Duration {
	cmd := exec.Command("/bin/bash", filepath.Join(integration.Root(), "scripts", "sandbox-init.sh"), prog)
	cmd.Env = append(os.Environ(), "TL_SANDBOX_DIR="+e.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		e.Fatalf("sandbox %s: %v\n%s", prog, err, out)
	}
	return time.Since(start)
}

// sshdToBanner starts a second sshd with the benchmark's configuration on
// another port and returns the time from its exec to its SSH banner.
func sshdToBanner(e *Env, o *integration.OpenSSH) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.Fatalf("port: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-f", filepath.Join(o.Dir, "sshd_config"), "-p", strconv.Itoa(port), "-o", "PidFile=none")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		e.Fatalf("sshd: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for time.Since(start) < 10*time.Second {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if err == nil && strings.HasPrefix(line, "SSH-") {
				return time.Since(start)
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	e.Fatalf("sshd gave no banner within 10s")
	return 0
}

func rssMiB(e *Env, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		e.Fatalf("rss of %d: %v", pid, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func median(e *Env, n int, f func() time.Duration) time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		ds[i] = f()
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[n/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
