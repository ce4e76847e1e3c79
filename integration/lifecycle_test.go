package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// operator is a client of the proxy's operator door.
type operator struct {
	t    *testing.T
	addr string
	key  string
}

// call sends method path with body (nil: none) and returns the status
// and the decoded JSON answer.
func (o operator) call(method, path string, body any) (int, map[string]any) {
	o.t.Helper()
	var r io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		r = bytes.NewReader(data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, "http://"+o.addr+path, r)
	if o.key != "" {
		req.Header.Set("Authorization", "Bearer "+o.key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		o.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		o.t.Fatalf("%s %s: %d, not JSON: %q", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

// lifecycleSystem is a sandbox whose proxy has an operator door, with a
// second sandbox id (clone) in its config for a resume to hand out.
func lifecycleSystem(t *testing.T, opts Options, clone, cloneToken string) (*System, operator) {
	t.Helper()
	opAddr, opKey := freeAddr(t), "op_"+randHex(16)
	opts.ProxyArgs = append(opts.ProxyArgs, "--operator-addr", opAddr)
	opts.ProxyConfig = func(cfg map[string]any) {
		cfg["operator_keys"] = map[string]string{opKey: "platform"}
		cfg["sandboxes"].(map[string]any)[clone] = map[string]string{"token": cloneToken}
	}
	s := Start(t, opts)
	waitTCP(t, opAddr, 10*time.Second)
	return s, operator{t: t, addr: opAddr, key: opKey}
}

// loopExt4 gives the sandbox a file system of its own at /data: an ext4
// image made by the test (mkfs.ext4 on a file in the sandbox's throwaway
// root), loop-mounted inside the sandbox's mount namespace only (nsenter
// into it), so this machine's mount table never holds it and it ends
// with the sandbox. Cleanup thaws it (fsfreeze -u, harmless when thawed)
// and unmounts it, which frees the loop device (mount's autoclear).
func loopExt4(t *testing.T, s *System) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "fsfreeze", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/deps.sh)", tool)
		}
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no loop devices here (/dev/loop-control)")
	}
	img := s.SandboxPath("/var/tmp/data.ext4")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if err := os.MkdirAll(s.SandboxPath("/data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := s.Exec("mount", "-o", "loop", "/var/tmp/data.ext4", "/data"); err != nil {
		t.Skipf("cannot loop-mount an ext4 image in the sandbox: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_, _ = s.Exec("fsfreeze", "-u", "/data")
		_, _ = s.Exec("umount", "/data")
	})
}

// writeInSandbox starts a write to path inside the sandbox (from this
// machine, not through the agent) and returns a channel closed when it
// ends; its process is killed at the end of the test.
func writeInSandbox(t *testing.T, s *System, path string) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pid := strconv.Itoa(s.AgentPid())
	cmd := exec.CommandContext(ctx, "nsenter", "-t", pid, "-m", "-p", "-r", "-w", "sh", "-c", "echo written > "+path+" && sync "+path)
	done := make(chan struct{})
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("write in sandbox: %v", err)
	}
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return done
}

func ended(ch <-chan struct{}, within time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(within):
		return false
	}
}

// TestLifecycleThroughOperatorDoor: prepare and resume through tl-proxy's
// operator door on a sandbox given a loop-mounted ext4 at /data. The file
// system is really frozen (a write blocks until the resume thaws it); a
// prepare that fails half-way thaws what it froze; a resume with a new id
// and secret registers as that sandbox.
func TestLifecycleThroughOperatorDoor(t *testing.T) {
	RequireRoot(t)
	clone, cloneToken := "sbx-clone", randHex(32)
	s, op := lifecycleSystem(t, Options{AgentArgs: []string{"--freeze-fs", "/data"}}, clone, cloneToken)
	loopExt4(t, s)
	base := "/sandboxes/" + s.SandboxID

	rule(t, s, "the door wants the operator key", func(t *testing.T) {
		anon := operator{t: t, addr: op.addr}
		if code, out := anon.call("POST", base+"/prepare", map[string]any{}); code != http.StatusUnauthorized {
			t.Fatalf("prepare without a key: %d %v", code, out)
		}
		if code, out := op.call("POST", "/sandboxes/nosuch/prepare", nil); code != http.StatusNotFound {
			t.Fatalf("unknown sandbox: %d %v", code, out)
		}
	})

	rule(t, s, "a failed prepare thaws what it froze", func(t *testing.T) {
		// /data freezes, then / (the sandbox's overlay) is refused.
		code, out := op.call("POST", base+"/prepare", map[string]any{"filesystems": []string{"/data", "/"}})
		if code != http.StatusConflict || out["rolled_back"] != true || out["state"] != "running" {
			t.Fatalf("prepare of /data and /: %d %v", code, out)
		}
		if !ended(writeInSandbox(t, s, "/data/after-rollback"), 20*time.Second) {
			t.Fatal("a write to /data blocks after the failed prepare: left frozen")
		}
	})

	rule(t, s, "prepare freezes the file system until resume", func(t *testing.T) {
		code, out := op.call("POST", base+"/prepare", map[string]any{"timeout_ms": 20000})
		if code != http.StatusOK || out["state"] != "prepared" || out["synced"] != true {
			t.Fatalf("prepare: %d %v", code, out)
		}
		fss, _ := out["filesystems"].([]any)
		if len(fss) != 1 || fss[0].(map[string]any)["frozen"] != true {
			t.Fatalf("prepare froze %v, want /data", out["filesystems"])
		}
		t.Logf("prepare took %v ms", out["took_ms"])
		if code, st := op.call("GET", base+"/lifecycle", nil); code != 200 || st["state"] != "prepared" {
			t.Fatalf("status while prepared: %d %v", code, st)
		}
		write := writeInSandbox(t, s, "/data/during")
		if ended(write, time.Second) {
			t.Fatal("a write to /data went through while it was frozen")
		}
		hostTime := time.Now().UTC().Format(time.RFC3339Nano)
		code, out = op.call("POST", base+"/resume", map[string]any{"host_time": hostTime, "paused_ms": 1000})
		resumed := time.Now()
		if code != http.StatusOK || out["was_prepared"] != true {
			t.Fatalf("resume: %d %v", code, out)
		}
		if c, _ := out["clock"].(map[string]any); c == nil || c["stepped"] != false {
			t.Fatalf("the namespace sandbox's agent stepped the clock (it does not own it): %v", out["clock"])
		}
		if !ended(write, 20*time.Second) {
			t.Fatal("the write blocked on /data still 20 s after the resume")
		}
		back := waitHealthy(s, resumed, 20*time.Second)
		if back < 0 {
			t.Fatal("the API did not answer through the proxy within 20 s of the resume")
		}
		t.Logf("uplink: health answered through the proxy %v after the resume's answer", back.Round(time.Millisecond))
		data, err := os.ReadFile(s.SandboxPath("/data/during"))
		if err != nil || strings.TrimSpace(string(data)) != "written" {
			t.Fatalf("the held write: %q %v", data, err)
		}
	})

	rule(t, s, "a resume with a new id and secret registers as the new sandbox", func(t *testing.T) {
		code, out := op.call("POST", base+"/resume", map[string]any{"sandbox_id": clone, "token": cloneToken, "env": map[string]string{"CLONE_NAME": clone}})
		if code != http.StatusOK || out["sandbox_id"] != clone || out["new_identity"] != true {
			t.Fatalf("resume as a clone: %d %v", code, out)
		}
		for deadline := time.Now().Add(20 * time.Second); !s.ConnectedID(clone) || s.Connected(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not registered as %s within 20 s (clone connected %v, old connected %v)\nagent log:\n%s",
					clone, s.ConnectedID(clone), s.Connected(), tail(s.AgentLog(), 20))
			}
		}
		// The clone's API answers under its own id, and a new process gets
		// the resume's environment.
		old := s.SandboxID
		s.SandboxID = clone
		defer func() { s.SandboxID = old }()
		r := run(t, s, map[string]any{"command": "sh", "args": []string{"-c", "echo $CLONE_NAME"}})
		if len(r.stdout) != 1 || r.stdout[0] != clone {
			t.Fatalf("a new process's CLONE_NAME is %q, want %q", r.stdout, clone)
		}
		var info map[string]any
		s.JSON("GET", "/api/v1/info", nil, 200, &info)
		if info["last_activity_at"] == nil {
			t.Fatalf("info after a run has no last_activity_at: %v", info)
		}
	})
}

// counterLen is the length of the counter file a sandbox process appends to.
func counterLen(s *System, path string) int {
	data, _ := os.ReadFile(s.SandboxPath(path))
	return len(data)
}

// growsWithin reports whether the counter file grows within d.
func growsWithin(s *System, path string, d time.Duration) bool {
	from := counterLen(s, path)
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if counterLen(s, path) > from {
			return true
		}
	}
	return false
}

// TestPrepareFreezesWorkload: with a v1 freezer cgroup of its own, the
// agent makes its workload's freezer cgroup; a prepare with
// freeze_workload stops every user process (a counter stops) while the
// agent answers, resume thaws it, and a prepare that fails after the
// freeze thaws it again.
func TestPrepareFreezesWorkload(t *testing.T) {
	RequireCgroupV1(t)
	if _, err := os.Stat(cgroupV1Root + "/freezer/tasks"); err != nil {
		t.Skip("no cgroup v1 freezer hierarchy here")
	}
	s, op := lifecycleSystem(t, Options{CgroupV1: &CgroupV1{Freezer: true}}, "sbx-unused", randHex(32))
	base := "/sandboxes/" + s.SandboxID
	s.JSON("POST", "/api/v1/processes", map[string]any{"name": "counter", "command": "sh", "args": []string{"-c",
		"i=0; while :; do echo $i >> /tmp/counter; i=$((i+1)); sleep 0.05; done"}}, 201, nil)
	if !growsWithin(s, "/tmp/counter", 10*time.Second) {
		t.Fatal("the counter never counted")
	}

	rule(t, s, "a failed prepare thaws the workload", func(t *testing.T) {
		code, out := op.call("POST", base+"/prepare", map[string]any{"freeze_workload": true, "filesystems": []string{"/"}})
		if code != http.StatusConflict || out["rolled_back"] != true {
			t.Fatalf("prepare: %d %v", code, out)
		}
		if !growsWithin(s, "/tmp/counter", 10*time.Second) {
			t.Fatal("the workload stays frozen after a failed prepare")
		}
	})

	rule(t, s, "prepare freezes the workload, not the agent", func(t *testing.T) {
		code, out := op.call("POST", base+"/prepare", map[string]any{"freeze_workload": true})
		if code != http.StatusOK || out["workload_frozen"] != true {
			t.Fatalf("prepare: %d %v\nagent log:\n%s", code, out, tail(s.AgentLog(), 20))
		}
		if growsWithin(s, "/tmp/counter", time.Second) {
			t.Fatal("the counter counts with the workload frozen")
		}
		if code, st := op.call("GET", base+"/lifecycle", nil); code != 200 || st["state"] != "prepared" {
			t.Fatalf("the agent does not answer while the workload is frozen: %d %v", code, st)
		}
		code, out = op.call("POST", base+"/resume", map[string]any{})
		if code != http.StatusOK {
			t.Fatalf("resume: %d %v", code, out)
		}
		if !growsWithin(s, "/tmp/counter", 10*time.Second) {
			t.Fatal("the counter does not count after the resume")
		}
	})
}

// lastActivity reads GET /api/v1/info's last_activity_at (zero: null).
func lastActivity(t *testing.T, s *System) time.Time {
	t.Helper()
	var info map[string]any
	s.JSON("GET", "/api/v1/info", nil, 200, &info)
	v, ok := info["last_activity_at"]
	if !ok {
		t.Fatalf("info has no last_activity_at: %v", info)
	}
	if v == nil {
		return time.Time{}
	}
	at, err := time.Parse(time.RFC3339Nano, v.(string))
	if err != nil {
		t.Fatalf("last_activity_at %q: %v", v, err)
	}
	return at
}

// TestLastActivity: a busy main command and polling info and health are
// not activity; a file request is, and an attached PTY is activity for as
// long as it stays attached.
func TestLastActivity(t *testing.T) {
	s := ptySystem(t, Options{Main: []string{"sh", "-c", "while :; do date > /tmp/main; sleep 0.05; done"}})
	for i := 0; i < 5; i++ {
		s.JSON("GET", "/api/v1/health", nil, 200, nil)
		if at := lastActivity(t, s); !at.IsZero() {
			t.Fatalf("activity %v with only a main command and polling", at)
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := time.Now()
	s.JSON("GET", "/api/v1/files/list?path=/tmp", nil, 200, nil)
	at := lastActivity(t, s)
	if at.Before(before.Add(-time.Second)) {
		t.Fatalf("a file request is not activity: %v (asked at %v)", at, before)
	}
	p := ptyCreate(t, s, map[string]any{"command": "sleep", "args": []string{"600"}})
	c := ptyDial(t, s, p)
	c.ready()
	time.Sleep(1500 * time.Millisecond)
	asked := time.Now()
	if held := lastActivity(t, s); held.Before(asked.Add(-100 * time.Millisecond)) {
		t.Fatalf("an attached PTY is not activity now: last %v, asked at %v", held, asked)
	}
	c.c.CloseNow()
	var ended time.Time
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ended = lastActivity(t, s)
		time.Sleep(300 * time.Millisecond)
		if lastActivity(t, s).Equal(ended) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("activity still moves 10 s after the PTY detached")
		}
	}
}
