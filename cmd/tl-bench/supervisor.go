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
//   - the same for a plain tl-agent process (no sandbox, no provisioning)
//     against fork+exec+wait of /bin/true;
//   - resident memory of the idle agent against the idle sshd listener.
func benchSupervisor(e *Env) []Result {
	samples := 10
	if e.Quick {
		samples = 3
	}
	s := e.System(integration.Options{})
	var untilLog []time.Duration
	inSandbox := median(e, samples, func() time.Duration {
		ready, logged := restartAgent(e, s)
		untilLog = append(untilLog, logged)
		return ready
	})
	sandboxTrue := median(e, samples, func() time.Duration { return sandboxRun(e, "/bin/true") })
	ssh := e.OpenSSH()
	sshdStart := median(e, samples, func() time.Duration { return sshdToBanner(e, ssh) })

	plain := e.System(integration.Options{NoSandbox: true})
	plainStart := median(e, samples, func() time.Duration { ready, _ := restartAgent(e, plain); return ready })
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
	return []Result{
		{Name: "exec to serving through proxy, PID 1 of a sandbox", Unit: "ms", Ours: ms(inSandbox), OpenSSH: ms(sshdStart), Floor: ms(sandboxTrue), Lower: true,
			Note: "floor: same sandbox running /bin/true; ssh: sshd exec to banner"},
		{Name: "exec to the agent's first log line, PID 1 of a sandbox", Unit: "ms", Ours: Percentile(untilLog, 50), Floor: ms(sandboxTrue), Lower: true,
			Note: "the sandbox's set-up is in both"},
		{Name: "exec to serving through proxy, plain process", Unit: "ms", Ours: ms(plainStart), OpenSSH: ms(sshdStart), Floor: ms(bareTrue), Lower: true,
			Note: "floor: fork+exec+wait of /bin/true"},
		{Name: "idle agent resident memory", Unit: "MiB", Ours: agentRSS, OpenSSH: rssMiB(e, pid), Lower: true,
			Note: "ssh: the idle sshd listener"},
	}
}

// restartAgent stops the system's agent, starts it again and returns the
// time from its exec to the first 200 from /api/v1/health through the
// proxy, and to its first log line.
func restartAgent(e *Env, s *integration.System) (ready, logged time.Duration) {
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		e.Fatalf("stop agent: %v", err)
	}
	s.WaitAgentExit(20 * time.Second)
	start := time.Now()
	s.StartAgent()
	client := &http.Client{Timeout: time.Second}
	for time.Since(start) < 30*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := client.Do(s.Request(ctx, "GET", "/api/v1/health", nil))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				cancel()
				ready = time.Since(start)
				return ready, firstLogLine(s.AgentLog()).Sub(start)
			}
		}
		cancel()
		time.Sleep(500 * time.Microsecond)
	}
	e.Fatalf("agent not serving 30s after start\n%s", s.AgentLog())
	return 0, 0
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
