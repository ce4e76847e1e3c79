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
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The pressure suite: tl-agent as PID 1 of a podman container (runc, the
// project's containers.conf) under a pids limit, attacked from inside by
// its own workload while API clients keep using it. Inside a container
// the agent's threads share the workload's pids budget; the Go runtime
// aborts (`fatal error: newosproc`) when it cannot create a thread, and
// with PID 1 the whole sandbox dies. These tests prove it does not: PID 1
// stays, health answers throughout (figures logged: probes answered of
// sent, the slowest answer), and a fork the kernel refuses is answered
// with the one retryable status.
//
// No image build: the container's root is an overlay over this machine's
// root (--rootfs /:O; writes go to a throwaway upper layer, as in the
// harness's namespace sandbox), with this tree's tl-agent bound in.

const (
	pressurePids     = 200 // --pids-limit of every pressure container
	pressureClients  = 16  // concurrent API clients during the fork bomb
	pressureDuration = 20 * time.Second
	fifoReads        = 300
)

// requirePodman skips, with the reason, where podman is not installed.
func requirePodman(t *testing.T) {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("podman is not installed: the pressure suite needs a container runtime's pids limit (scripts/deps.sh installs podman)")
	}
}

// pressureSandbox starts a proxy and a container running this tree's agent
// under the pids limit, and waits until it serves.
func pressureSandbox(t *testing.T, extra ...string) (*System, *container) {
	t.Helper()
	requirePodman(t)
	s := Start(t, Options{NoAgent: true})
	c := runContainer(t, s, "/usr/local/bin/tl-agent", pressureArgs(t, extra...), "TL_AGENT_MOUNT=false", "TL_AGENT_LOG_LEVEL=info")
	logAbort(t, c)
	c.serving(s)
	return s, c
}

// pressureArgs are the podman flags of a pressure container. runContainer
// puts its image argument last; with --rootfs the first positional
// argument is the root and the next one the command.
func pressureArgs(t *testing.T, extra ...string) []string {
	args := append([]string{"--pids-limit", strconv.Itoa(pressurePids),
		"-v", filepath.Join(Binaries(t), "tl-agent") + ":/usr/local/bin/tl-agent:ro"}, extra...)
	return append(args, "--rootfs", "/:O")
}

// logAbort logs the runtime's abort message, at the head of a long
// goroutine dump, when t failed.
func logAbort(t *testing.T, c *container) {
	// Registered after runContainer's: runs before it removes the container.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, line := range strings.Split(c.logs(), "\n") {
			if strings.HasPrefix(line, "fatal error") || strings.HasPrefix(line, "runtime:") || strings.HasPrefix(line, "panic") {
				t.Logf("agent: %s", line)
			}
		}
	})
}

// prober asks for health every 100 ms until stopped and keeps figures.
type prober struct {
	sent, answered atomic.Int64
	maxLatency     atomic.Int64 // nanoseconds
	mu             sync.Mutex
	failures       []string // the first few
	stop           chan struct{}
	done           chan struct{}
}

func startProber(s *System) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			p.probe(s)
		}
	}()
	return p
}

func (p *prober) probe(s *System) {
	p.sent.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/health", nil))
	var body []byte
	if err == nil {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
	}
	lat := time.Since(start)
	if err == nil && resp.StatusCode == 200 && strings.Contains(string(body), `"healthy":true`) {
		p.answered.Add(1)
		for {
			m := p.maxLatency.Load()
			if int64(lat) <= m || p.maxLatency.CompareAndSwap(m, int64(lat)) {
				break
			}
		}
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.failures) < 5 {
		if err != nil {
			p.failures = append(p.failures, err.Error())
		} else {
			p.failures = append(p.failures, fmt.Sprintf("%d %s", resp.StatusCode, body))
		}
	}
}

// finish stops the prober and checks that every probe was answered.
func (p *prober) finish(t *testing.T) {
	t.Helper()
	close(p.stop)
	<-p.done
	sent, answered := p.sent.Load(), p.answered.Load()
	t.Logf("health probes: %d answered of %d sent, slowest %v", answered, sent, time.Duration(p.maxLatency.Load()))
	if sent == 0 || answered != sent {
		p.mu.Lock()
		defer p.mu.Unlock()
		t.Errorf("health answered %d of %d probes (PID 1 must answer throughout); first failures: %q", answered, sent, p.failures)
	}
}

// sandboxFile reads a file inside the sandbox through the files API.
func sandboxFile(s *System, path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(s.Request(ctx, "GET", "/api/v1/files?path="+path, nil))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return string(b), nil
}

// agentThreads is PID 1's thread count, read through the files API (no
// fork needed, so it works with the pids limit full).
func agentThreads(s *System) int {
	st, err := sandboxFile(s, "/proc/1/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(st, "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return -1
}

// pidsCurrent is the container's pids count (cgroup v1 or v2 layout).
func pidsCurrent(s *System) int {
	for _, p := range []string{"/sys/fs/cgroup/pids/pids.current", "/sys/fs/cgroup/pids.current"} {
		if v, err := sandboxFile(s, p); err == nil {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return -1
}

// tally counts the answers of each kind of request.
type tally struct {
	mu     sync.Mutex
	counts map[string]int // "op status code"
}

func (t *tally) add(op string, status int, code string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts = map[string]int{}
	}
	t.counts[fmt.Sprintf("%s %d %s", op, status, code)]++
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make([]string, 0, len(t.counts))
	for k := range t.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %-60s %d", k, t.counts[k])
	}
	return b.String()
}

// apiCall is one request of a hammering client: it returns the status,
// the error code of a JSON error answer, and whether a 503 carried
// Retry-After.
func apiCall(s *System, timeout time.Duration, method, path string, body string) (int, string, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	resp, err := http.DefaultClient.Do(s.Request(ctx, method, path, r))
	if err != nil {
		return 0, "", false, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e struct{ Code string }
	if resp.StatusCode >= 400 {
		_ = json.Unmarshal(data, &e)
	}
	return resp.StatusCode, e.Code, resp.Header.Get("Retry-After") != "", nil
}

// hammer is one client: it cycles through the API until stop, recording
// every answer in tl. Sessions it creates are killed at once.
func hammer(s *System, id int, stop <-chan struct{}, tl *tally, retryMissing *atomic.Int64) {
	ops := []struct{ name, method, path, body string }{
		{"run", "POST", "/api/v1/processes/run", `{"command":"true"}`},
		{"pty", "POST", "/api/v1/pty", `{"command":"sleep","args":["1"]}`},
		{"read", "GET", "/api/v1/files?path=/etc/hostname", ""},
		{"write", "PUT", fmt.Sprintf("/api/v1/files?path=pressure/%d", id), strings.Repeat("x", 4096)},
		{"list", "GET", "/api/v1/files/list?path=/etc", ""},
		{"processes", "GET", "/api/v1/processes", ""},
		{"start", "POST", "/api/v1/processes", `{"command":"true","stdout_mode":"discard","stderr_mode":"discard"}`},
	}
	for i := id; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		op := ops[i%len(ops)]
		status, code, retry, err := apiCall(s, 30*time.Second, op.method, op.path, op.body)
		if err != nil {
			code = "transport: " + err.Error()
		}
		if status == 503 && code == "RESOURCES_EXHAUSTED" && !retry {
			retryMissing.Add(1)
		}
		tl.add(op.name, status, code)
	}
}

// TestPressureForkBomb: a fork bomb fills the pids limit while 16 clients
// use every part of the API that forks, opens files or lists folders.
// Wanted: PID 1 stays up, health answers every probe, forks the kernel
// refuses answer 503 RESOURCES_EXHAUSTED with Retry-After (never a 500 or
// a 400), and once the bomb is killed everything works again.
func TestPressureForkBomb(t *testing.T) {
	s, c := pressureSandbox(t)
	t.Logf("agent threads at start: %d", agentThreads(s))
	probe := startProber(s)

	// Four loops that each start sleeps as fast as fork allows: the limit
	// stays full, and every pid freed is taken again at once.
	bomb := `for i in 1 2 3 4; do (while :; do sleep 600 & done) & done; wait`
	var started struct{ Pid int }
	s.JSON("POST", "/api/v1/processes", map[string]any{
		"command": "bash", "args": []string{"-c", bomb}, "stdout_mode": "discard", "stderr_mode": "discard",
	}, 201, &started)
	deadline := time.Now().Add(60 * time.Second)
	for pidsCurrent(s) < pressurePids-5 {
		if time.Now().After(deadline) {
			t.Fatalf("the fork bomb did not fill the pids limit: %d of %d", pidsCurrent(s), pressurePids)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("pids limit full: %d of %d", pidsCurrent(s), pressurePids)

	var tl tally
	var retryMissing atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < pressureClients; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); hammer(s, i, stop, &tl, &retryMissing) }(i)
	}
	maxThreads := 0
	for end := time.Now().Add(pressureDuration); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		maxThreads = max(maxThreads, agentThreads(s))
	}
	close(stop)
	wg.Wait()
	t.Logf("%d clients for %v with the pids limit full; answers:%s", pressureClients, pressureDuration, tl.String())
	t.Logf("agent threads: at most %d seen under load (pids %d of %d)", maxThreads, pidsCurrent(s), pressurePids)

	t.Run("refused forks are one retryable status", func(t *testing.T) {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		exhausted := 0
		for k, n := range tl.counts {
			f := strings.SplitN(k, " ", 3)
			op, status := f[0], f[1]
			switch {
			case strings.HasPrefix(f[2], "transport"), status == "500", status == "502", status == "400":
				t.Errorf("%d answers %q: a client of a live PID 1 gets an answer, and a refused fork is 503 RESOURCES_EXHAUSTED", n, k)
			case status == "503" && f[2] == "RESOURCES_EXHAUSTED":
				exhausted += n
			case status == "503":
				t.Errorf("%d answers %q (op %s): the only 503 of a live agent is RESOURCES_EXHAUSTED", n, k, op)
			}
		}
		if exhausted == 0 {
			t.Errorf("no request got 503 RESOURCES_EXHAUSTED: the bomb did not keep the limit full")
		}
		if n := retryMissing.Load(); n > 0 {
			t.Errorf("%d RESOURCES_EXHAUSTED answers without Retry-After", n)
		}
	})

	// The bomb's process group is killed; then the sandbox works again.
	resp := s.Do("DELETE", fmt.Sprintf("/api/v1/processes/%d", started.Pid), nil)
	resp.Body.Close()
	deadline = time.Now().Add(60 * time.Second)
	for pidsCurrent(s) > pressurePids/2 {
		if time.Now().After(deadline) {
			t.Fatalf("pids did not drop after killing the bomb: %d", pidsCurrent(s))
		}
		_, _, _, _ = apiCall(s, 30*time.Second, "POST", "/api/v1/processes/run", `{"command":"pkill","args":["-KILL","-x","sleep"],"user":"root"}`)
		time.Sleep(500 * time.Millisecond)
	}
	probe.finish(t)
	rest, peak := agentRSS(s)
	t.Logf("PID 1 RSS after the bomb: %d KiB, peak %d KiB", rest, peak)
	runOK(t, s, "true")
	c.stop()
}

// TestPressureFIFO: 300 reads of a FIFO (each used to leave an agent
// thread blocked in open(2) forever; about 220 crashed PID 1 under this
// pids limit) all get a prompt 400 NOT_A_REGULAR_FILE, and so does a
// listing of it; PID 1 answers health throughout.
func TestPressureFIFO(t *testing.T) {
	s, c := pressureSandbox(t)
	runOK(t, s, "mkfifo", "/tmp/fifo")
	probe := startProber(s)
	before := agentThreads(s)
	var tl tally
	var wg sync.WaitGroup
	sem := make(chan struct{}, 30)
	for i := 0; i < fifoReads; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			path := "/api/v1/files?path=/tmp/fifo"
			if i%10 == 0 {
				path = "/api/v1/files/list?path=/tmp/fifo"
			}
			status, code, _, err := apiCall(s, 10*time.Second, "GET", path, "")
			if err != nil {
				code = "transport: " + err.Error()
			}
			tl.add(strings.SplitN(path, "?", 2)[0], status, code)
		}(i)
	}
	wg.Wait()
	after := agentThreads(s)
	for i := 0; i < 50 && probe.sent.Load() < 10; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	probe.finish(t)
	t.Logf("%d FIFO reads; answers:%s", fifoReads, tl.String())
	t.Logf("agent threads: %d before, %d after", before, after)
	tl.mu.Lock()
	for k, n := range tl.counts {
		if k != "/api/v1/files 400 NOT_A_REGULAR_FILE" && k != "/api/v1/files/list 400 NOT_A_DIRECTORY" {
			t.Errorf("%d answers %q, want 400 NOT_A_REGULAR_FILE (read) or NOT_A_DIRECTORY (list)", n, k)
		}
	}
	tl.mu.Unlock()
	if after < 0 || after > before+4 {
		t.Errorf("agent threads %d before, %d after the FIFO reads: requests leave threads behind", before, after)
	}
	c.stop()
}

// runOK runs a command as root in the sandbox through the API and checks
// its exit code is 0.
func runOK(t *testing.T, s *System, cmd string, args ...string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"command": cmd, "args": args, "user": "root"})
	resp := s.Do("POST", "/api/v1/processes/run", string(body))
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != 200 || !strings.Contains(string(data), `"exit_code":0`) {
		t.Fatalf("run %s %v: %d %s", cmd, args, resp.StatusCode, data)
	}
}

// TestPressureDiskFull: an upload that fills the disk answers 507
// NO_SPACE naming the target (not the temporary file beside it), and
// leaves nothing behind.
func TestPressureDiskFull(t *testing.T) {
	s, c := pressureSandbox(t, "--tmpfs", "/mnt/small:size=64k")
	resp := s.Do("PUT", "/api/v1/files?path=/mnt/small/big.bin", make([]byte, 1<<20))
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	var e struct{ Error, Code string }
	_ = json.Unmarshal(data, &e)
	if resp.StatusCode != 507 || e.Code != "NO_SPACE" {
		t.Errorf("upload to a full disk: %d %s, want 507 NO_SPACE", resp.StatusCode, data)
	}
	if !strings.Contains(e.Error, "/mnt/small/big.bin") || strings.Contains(e.Error, "tl-upload") {
		t.Errorf("error %q: must name the target /mnt/small/big.bin, not the temporary file", e.Error)
	}
	var list struct{ Entries []struct{ Name string } }
	s.JSON("GET", "/api/v1/files/list?path=/mnt/small", nil, 200, &list)
	if len(list.Entries) != 0 {
		t.Errorf("left behind on the full disk: %+v", list.Entries)
	}
	c.stop()
}

// TestPressureInheritedFDs: an fd the launcher leaks to the agent (here a
// pipe, fd 3, handed over with --preserve-fds) reaches no child: a process
// started through the API sees only 0, 1, 2 and what it opened itself.
func TestPressureInheritedFDs(t *testing.T) {
	requirePodman(t)
	s := Start(t, Options{NoAgent: true})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	c := &container{t: t, name: "tl-it-" + randHex(4), started: time.Now()}
	args := []string{"run", "-d", "--pull=never", "--name", c.name, "--network=host", "--preserve-fds", "1"}
	for _, e := range []string{"TL_AGENT_PROXY=" + s.UplinkAddr, "TL_AGENT_SANDBOX_ID=" + s.SandboxID,
		"TL_AGENT_TOKEN=" + s.Token, "TL_AGENT_MOUNT=false"} {
		args = append(args, "-e", e)
	}
	args = append(append(args, pressureArgs(t)...), "/usr/local/bin/tl-agent")
	t.Cleanup(func() { _, _ = podman(t, "rm", "-f", "-t", "0", c.name) })
	cmd := exec.Command("podman", args...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(Root(), "image", "containers.conf"))
	cmd.ExtraFiles = []*os.File{w}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("podman run --preserve-fds 1: %v\n%s", err, out)
	}
	logAbort(t, c)
	c.serving(s)
	if st, err := sandboxFile(s, "/proc/1/fdinfo/3"); err != nil || st == "" {
		t.Fatalf("the agent did not get the leaked fd 3 (the test sets nothing up): %v", err)
	}
	// ls lists its own folder fd too: /proc/self/fd is opened as 3.
	resp := s.Do("POST", "/api/v1/processes/run", map[string]any{"command": "ls", "args": []string{"/proc/self/fd"}})
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	var fds []string
	for _, line := range strings.Split(string(data), "\n") {
		var ev struct{ Line *string }
		if d, ok := strings.CutPrefix(line, "data: "); ok && json.Unmarshal([]byte(d), &ev) == nil && ev.Line != nil {
			fds = append(fds, *ev.Line)
		}
	}
	if strings.Join(fds, " ") != "0 1 2 3" {
		t.Errorf("a child of the API has fds %q, want 0 1 2 and its own 3 (inherited fds must be close-on-exec)", fds)
	}
}
