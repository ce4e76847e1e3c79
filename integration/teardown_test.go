package integration

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShutdownHangsUpPTYShells: idle interactive shells on PTY sessions,
// one with a client attached and one detached, and an SSH login shell on
// a terminal, do not hold the shutdown for the grace. An interactive bash ignores SIGTERM (checked first); the
// sweep's graceful phase hangs up their terminals (SIGHUP), on which a
// shell exits. Before, the agent waited out the whole grace and SIGKILLed
// them (Ctrl-C of `make run` took 10 s).
func TestShutdownHangsUpPTYShells(t *testing.T) {
	const grace = 8 * time.Second
	ss := startSSH(t, Options{AgentArgs: []string{"--shutdown-grace", grace.String()}})
	s := ss.System
	attached := ptyCreate(t, s, map[string]any{"command": "bash"})
	c := ptyDial(t, s, attached)
	c.ready()
	c.input("echo up-$((6*7))\n")
	c.waitFor("up-42", 20*time.Second)

	detached := ptyCreate(t, s, map[string]any{"command": "bash"})
	d := ptyDial(t, s, detached)
	d.ready()
	d.input("echo up-$((7*7))\n")
	d.waitFor("up-49", 20*time.Second)
	d.c.CloseNow()

	// And an interactive login shell over SSH, on the SSH server's PTY.
	cmd := exec.Command("ssh", append(ss.SSHArgs(ss.key.Private), "-tt", ss.SSHDest())...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	_, _ = io.WriteString(stdin, "echo ssh-$((8*8))\n")
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "ssh-64"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no SSH shell: %q", out.String())
		}
	}

	// The premise: an idle interactive shell survives SIGTERM.
	pid := ptyGet(t, s, attached.SessionID).PID
	if out, err := s.Exec("kill", "-TERM", strconv.Itoa(pid)); err != nil {
		t.Fatalf("kill -TERM %d: %v %s", pid, err, out)
	}
	time.Sleep(300 * time.Millisecond)
	if !ptyGet(t, s, attached.SessionID).IsAlive {
		t.Fatal("the interactive shell ended on SIGTERM: the test proves nothing")
	}

	start := time.Now()
	if err := s.SignalAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := s.WaitAgentExit(3 * grace)
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("exit code %d, want 0\n%s", code, tail(s.AgentLog(), 20))
	}
	t.Logf("shutdown with idle shells (PTY attached, PTY detached, SSH) took %v (grace %v)", took, grace)
	if took >= grace {
		t.Fatalf("shutdown took %v: the shells held it for the %v grace\n%s", took, grace, tail(s.AgentLog(), 20))
	}
	if log := s.AgentLog(); !strings.Contains(log, `"killed":0`) {
		t.Errorf("a process needed SIGKILL:\n%s", tail(log, 20))
	}
}

// TestOOMKilledInContainer: a process and a PTY session killed by the
// OOM killer are reported as such (the process's status oom_killed, the
// session's oom_killed), by the one detector, under whatever cgroup
// version the machine has. Under cgroup v1 in a container
// /proc/self/cgroup names the host's path while the container's mount
// shows its own cgroup at the root: before, the process table looked for
// the host's path and the PTY read only cgroup v2, so neither saw an OOM
// kill there.
func TestOOMKilledInContainer(t *testing.T) {
	if _, err := os.Stat("oom"); os.IsNotExist(err) {
		// podman's conmon leaves an empty "oom" marker in its working
		// folder (this one) when a container's cgroup saw an OOM kill.
		t.Cleanup(func() { _ = os.Remove("oom") })
	}
	s, _ := pressureSandbox(t, "--memory", "96m", "--memory-swap", "96m")
	// tail keeps the last line of input, and /dev/zero has no newline:
	// it grows until the OOM killer ends it.
	hog := map[string]any{"command": "tail", "args": []string{"/dev/zero"}, "user": "root"}
	var started struct{ Pid int }
	s.JSON("POST", "/api/v1/processes", hog, http.StatusCreated, &started)
	var p map[string]any
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s.JSON("GET", "/api/v1/processes/"+strconv.Itoa(started.Pid), nil, http.StatusOK, &p)
		if p["status"] != "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the memory hog still runs after 60 s: %v", p)
		}
	}
	if p["status"] != "oom_killed" || p["oom_killed"] != true {
		t.Errorf("process: %v, want status oom_killed", p)
	}

	sess := ptyCreate(t, s, hog)
	var in map[string]any
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s.JSON("GET", "/api/v1/pty/"+sess.SessionID, nil, http.StatusOK, &in)
		if in["is_alive"] != true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the memory hog still runs after 60 s: %v", in)
		}
	}
	if in["oom_killed"] != true || in["exit_code"] != float64(137) {
		t.Errorf("pty session: %v, want oom_killed and exit code 137", in)
	}
}
