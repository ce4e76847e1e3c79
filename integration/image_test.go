package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The sandbox image under a real container runtime: podman (with runc, as
// image/containers.conf sets it) builds the Dockerfile, runs tl-agent as
// PID 1 of a container connected to the harness's tl-proxy on this
// machine (--network=host: the proxy listens on loopback), and the smoke
// set goes through the proxy. Then `podman stop` must end in an orderly
// shutdown.
//
// Budget: the first build on a fresh machine makes the Debian base with
// debootstrap (~30 s), the local Go builder (~15 s) and the image (~1 min);
// later runs reuse the cached base and layers. imageBuildBudget bounds all
// image builds of one test binary together.
const (
	imageBuildBudget = 15 * time.Minute
	podmanTimeout    = 2 * time.Minute
	stopTimeout      = 15 // seconds podman waits after SIGTERM before SIGKILL
)

var (
	imageMu       sync.Mutex
	imageBuilt    = map[string]error{} // target -> result of its one build
	imageDeadline time.Time            // set by the first build
)

// podman runs podman with the project's containers.conf and a deadline.
func podman(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), podmanTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(Root(), "image", "containers.conf"))
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// buildImage builds a Dockerfile target once per test binary with
// image/build.sh, within imageBuildBudget, and returns its tag.
func buildImage(t *testing.T, target string) string {
	t.Helper()
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed (make test runs scripts/deps.sh, which installs it): %v", err)
	}
	tag := "localhost/tl-" + target + ":it"
	imageMu.Lock()
	defer imageMu.Unlock()
	err, done := imageBuilt[target]
	if !done {
		if imageDeadline.IsZero() {
			imageDeadline = time.Now().Add(imageBuildBudget)
		}
		ctx, cancel := context.WithDeadline(context.Background(), imageDeadline)
		defer cancel()
		start := time.Now()
		cmd := exec.CommandContext(ctx, filepath.Join(Root(), "image", "build.sh"), target)
		cmd.Env = append(os.Environ(), "TL_ENGINE=podman", "TL_SANDBOX_IMAGE="+tag, "TL_SANDBOX_SLIM_IMAGE="+tag, "TL_EXISTING_IMAGE="+tag, "TL_DESKTOP_IMAGE="+tag, "TL_PROXY_IMAGE="+tag,
			"CONTAINERS_CONF="+filepath.Join(Root(), "image", "containers.conf"))
		out, berr := cmd.CombinedOutput()
		if berr != nil {
			err = fmt.Errorf("image/build.sh %s (image build budget %v): %v\n%s", target, imageBuildBudget, berr, tail(string(out), 40))
		}
		imageBuilt[target] = err
		t.Logf("image build (%s): %v", target, time.Since(start))
	}
	if err != nil {
		t.Fatalf("%v", err)
	}
	return tag
}

// container is one `podman run` of the sandbox image.
type container struct {
	t       *testing.T
	name    string
	init    bool // --init: the runtime's init is PID 1, the agent its child
	started time.Time
}

// runContainer starts the image with the agent configured by environment
// (the way Kubernetes and compose files configure it) to dial s's proxy.
func runContainer(t *testing.T, s *System, img string, extra []string, env ...string) *container {
	t.Helper()
	c := &container{t: t, name: "tl-it-" + randHex(4)}
	args := []string{"run", "-d", "--pull=never", "--name", c.name, "--network=host", "--hostname", c.name,
		"--stop-timeout", strconv.Itoa(stopTimeout)}
	env = append([]string{
		"TL_AGENT_PROXY=" + s.UplinkAddr, "TL_AGENT_SANDBOX_ID=" + s.SandboxID,
		"TL_AGENT_TOKEN=" + s.Token, "TL_AGENT_LOG_LEVEL=debug",
	}, env...)
	for _, e := range env {
		args = append(args, "-e", e)
	}
	args = append(append(args, extra...), img)
	for _, a := range extra {
		c.init = c.init || a == "--init"
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := podman(t, "logs", c.name)
			t.Logf("container %s log (tail):\n%s", c.name, tail(logs, 60))
		}
		_, _ = podman(t, "rm", "-f", "-t", "0", c.name)
	})
	c.started = time.Now()
	if out, err := podman(t, args...); err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	return c
}

func (c *container) exec(args ...string) (string, error) {
	return podman(c.t, append([]string{"exec", c.name}, args...)...)
}

// argv0 is the program name of a process in the container.
func (c *container) argv0(pid int) string {
	out, _ := c.exec("cat", fmt.Sprintf("/proc/%d/cmdline", pid))
	argv0, _, _ := strings.Cut(out, "\x00")
	return argv0
}

func (c *container) logs() string {
	out, _ := podman(c.t, "logs", c.name)
	return out
}

// serving waits until the sandbox answers health through the proxy and
// returns the time since `podman run` began.
func (c *container) serving(s *System) time.Duration {
	c.t.Helper()
	s.WaitConnected(30 * time.Second)
	var health map[string]any
	s.JSON("GET", "/api/v1/health", nil, 200, &health)
	if health["healthy"] != true {
		c.t.Fatalf("health = %v", health)
	}
	return time.Since(c.started)
}

// stop is `podman stop` and the checks of an orderly shutdown: SIGTERM
// handled well within the stop timeout (no SIGKILL), exit code 0, the
// agent's shutdown log line, and no process of the sandbox left anywhere on
// this machine.
func (c *container) stop() {
	c.t.Helper()
	// A process the agent must end at shutdown, started behind its back
	// (podman exec is not the agent's child; it reparents to PID 1 or to
	// the agent as subreaper).
	marker := "31337" + strconv.Itoa(int(time.Now().UnixNano()%1e6))
	if out, err := c.exec("sh", "-c", "setsid sleep "+marker+" </dev/null >/dev/null 2>&1 &"); err != nil {
		c.t.Fatalf("start a stray process: %v %s", err, out)
	}
	if len(hostProcesses(marker)) == 0 {
		c.t.Fatalf("stray process sleep %s not seen on the host", marker)
	}
	start := time.Now()
	if out, err := podman(c.t, "stop", "-t", strconv.Itoa(stopTimeout), c.name); err != nil {
		c.t.Fatalf("podman stop: %v\n%s", err, out)
	}
	took := time.Since(start)
	code, err := podman(c.t, "inspect", "--format", "{{.State.ExitCode}}", c.name)
	if err != nil || code != "0" {
		c.t.Errorf("exit code after podman stop = %q (%v), want 0 (orderly shutdown); stop took %v", code, err, took)
	}
	if took >= stopTimeout*time.Second {
		c.t.Errorf("podman stop took %v: the agent did not end within the %ds timeout (SIGKILL)", took, stopTimeout)
	}
	// The agent's log: it started, took SIGTERM as a shutdown request, and
	// its last word is exit 0; as PID 1 it swept the stray process itself
	// with SIGTERM (with --init the stray belongs to the init).
	type logLine struct {
		Message    string `json:"message"`
		Signal     string `json:"signal"`
		ExitCode   *int   `json:"exit_code"`
		Terminated int    `json:"terminated"`
		Killed     int    `json:"killed"`
	}
	var started, requested bool
	var last logLine
	for _, line := range strings.Split(c.logs(), "\n") {
		var ev logLine
		if json.Unmarshal([]byte(line), &ev) != nil {
			continue
		}
		switch ev.Message {
		case "tl-agent starting":
			started = true
		case "shutdown requested":
			requested = requested || ev.Signal == "SIGTERM"
		case "tl-agent stopped":
			last = ev
		}
	}
	if !started || !requested {
		c.t.Errorf("agent log: started %v, SIGTERM shutdown requested %v", started, requested)
	}
	switch {
	case last.ExitCode == nil || *last.ExitCode != 0:
		c.t.Errorf("no \"tl-agent stopped\" line with exit_code 0 in the agent log")
	case !c.init && last.Terminated < 1:
		c.t.Errorf("the agent (PID 1) terminated %d processes at shutdown, want the stray one", last.Terminated)
	case last.Killed != 0:
		c.t.Errorf("the agent had to SIGKILL %d processes (a sleep dies on SIGTERM)", last.Killed)
	}
	if left := hostProcesses(marker); len(left) > 0 {
		c.t.Errorf("processes of the sandbox left on the host after stop: %v", left)
	}
	c.t.Logf("podman stop: %v", took)
}

// hostProcesses lists this machine's processes whose command line holds
// marker.
func hostProcesses(marker string) []string {
	var found []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " ")
		if strings.Contains(cmd, marker) && !strings.Contains(cmd, "podman") {
			found = append(found, filepath.Base(filepath.Dir(p))+":"+cmd)
		}
	}
	return found
}

// routeWired tells whether the agent serves method+path at all: the
// agent's router answers unknown routes with "no route for". A capability
// not yet built skips its smoke step; once wired it must pass.
func routeWired(t *testing.T, s *System, method, path string) bool {
	t.Helper()
	resp := s.Do(method, path, nil)
	defer resp.Body.Close()
	var e struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return !(resp.StatusCode == 404 && strings.HasPrefix(e.Error, "no route for"))
}

func TestImageSandbox(t *testing.T) {
	RequireRoot(t)
	img := buildImage(t, "sandbox")
	size, _ := podman(t, "image", "inspect", "--format", "{{.Size}}", img)
	t.Logf("image size: %s bytes", size)

	keys := sshKeyPair(t)
	s := Start(t, Options{NoAgent: true, SSHKeys: keys + ".pub"})
	// No --init: tl-agent is PID 1. Writable root, a non-default uid for
	// tl-user from the environment.
	c := runContainer(t, s, img, nil, "TL_AGENT_UID=1234")
	t.Logf("podman run to serving: %v", c.serving(s))

	t.Run("pid1", func(t *testing.T) {
		if argv0 := c.argv0(1); argv0 != "/usr/local/bin/tl-agent" {
			t.Fatalf("PID 1 is %q, want tl-agent", argv0)
		}
		// The runtime's capability limits hold: no CAP_SYS_ADMIN (bit 21).
		st, _ := c.exec("grep", "CapEff", "/proc/1/status")
		if eff, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(st, "CapEff:")), 16, 64); err != nil || eff&(1<<21) != 0 {
			t.Fatalf("PID 1 capabilities %q: want no CAP_SYS_ADMIN", st)
		}
	})
	t.Run("hostname", func(t *testing.T) {
		// sethostname is refused without CAP_SYS_ADMIN: the runtime's name
		// stays, and the agent said why and carried on.
		out, err := c.exec("hostname")
		if err != nil || out != c.name {
			t.Fatalf("hostname = %q (%v), want the runtime's %q", out, err, c.name)
		}
		if !strings.Contains(c.logs(), "sethostname") {
			t.Errorf("agent log does not mention the refused sethostname")
		}
	})
	t.Run("mounts", func(t *testing.T) {
		// The runtime mounted what a sandbox needs; the image tells the
		// agent so (TL_AGENT_MOUNT=false) and nothing fails to mount.
		if logs := c.logs(); strings.Contains(logs, "mount failed") {
			t.Errorf("agent log has mount failures:\n%s", tail(logs, 20))
		}
		for _, fs := range []string{"/proc", "/dev/pts", "/dev/shm"} {
			if _, err := c.exec("mountpoint", "-q", fs); err != nil {
				t.Errorf("%s is not a mount point in the container", fs)
			}
		}
	})
	t.Run("healthcheck", func(t *testing.T) {
		if out, err := podman(t, "healthcheck", "run", c.name); err != nil {
			t.Fatalf("podman healthcheck run: %v %s", err, out)
		}
	})
	t.Run("user", func(t *testing.T) {
		out, err := c.exec("id", "-u", "tl-user")
		if err != nil || out != "1234" {
			t.Fatalf("id -u tl-user = %q (%v), want 1234 (TL_AGENT_UID)", out, err)
		}
	})
	t.Run("command", func(t *testing.T) { smokeCommand(t, s, c.name) })
	t.Run("files", func(t *testing.T) { smokeFilesAs(t, s, c, "1234") })
	t.Run("pty", func(t *testing.T) { smokePTY(t, s) })
	t.Run("ssh", func(t *testing.T) { smokeSSH(t, s, keys) })
	c.stop()
}

func TestImageReadOnlyInit(t *testing.T) {
	RequireRoot(t)
	img := buildImage(t, "sandbox")
	s := Start(t, Options{NoAgent: true})
	// --init: podman's catatonit is PID 1 and the agent its child (a child
	// subreaper). Read-only root with tmpfs where a sandbox writes.
	c := runContainer(t, s, img, []string{"--init", "--read-only", "--tmpfs", "/home", "--tmpfs", "/root"})
	t.Logf("podman run to serving (read-only, --init): %v", c.serving(s))
	if argv0 := c.argv0(1); strings.Contains(argv0, "tl-agent") || argv0 == "" {
		t.Fatalf("PID 1 is %q, want the runtime's init", argv0)
	}
	if out, err := c.exec("touch", "/etc/x"); err == nil {
		t.Fatalf("root is writable: %s", out)
	}
	if !strings.Contains(c.logs(), "read-only") {
		t.Errorf("agent log does not say that /etc is read-only (provisioning skipped)")
	}
	if out, err := podman(t, "healthcheck", "run", c.name); err != nil {
		t.Fatalf("podman healthcheck run: %v %s", err, out)
	}
	// Unhealthy while the uplink is down, healthy again once it is back.
	s.KillProxy()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := podman(t, "healthcheck", "run", c.name); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthcheck still passes with the proxy gone")
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.StartProxy()
	s.WaitConnected(30 * time.Second)
	if out, err := podman(t, "healthcheck", "run", c.name); err != nil {
		t.Fatalf("podman healthcheck run after reconnect: %v %s", err, out)
	}
	c.stop()
}

// TestImageReadOnlyBaked is the recipe for read-only roots: tl-user is
// provisioned at build time (`tl-agent provision`, with no host name: the
// build cannot set one), and only /home is writable, a tmpfs.
func TestImageReadOnlyBaked(t *testing.T) {
	RequireRoot(t)
	base := buildImage(t, "sandbox")
	dir := t.TempDir()
	recipe := "FROM " + base + "\nRUN [\"/usr/local/bin/tl-agent\", \"provision\", \"--hostname\", \"\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Containerfile"), []byte(recipe), 0o644); err != nil {
		t.Fatal(err)
	}
	img := "localhost/tl-readonly:it"
	if out, err := podman(t, "build", "--format", "docker", "--network=host", "-t", img, dir); err != nil {
		t.Fatalf("podman build (tl-agent provision at build time): %v\n%s", err, tail(out, 20))
	}
	s := Start(t, Options{NoAgent: true})
	// A tmpfs on /home, not on the home itself: podman copies the image's
	// /home into it (tmpcopyup), so the home keeps tl-user as its owner.
	c := runContainer(t, s, img, []string{"--read-only", "--tmpfs", "/home"})
	c.serving(s)
	if out, err := c.exec("id", "-u", "tl-user"); err != nil || out != "1000" {
		t.Fatalf("id -u tl-user = %q (%v), want 1000 (baked)", out, err)
	}
	t.Run("files", func(t *testing.T) { smokeFilesAs(t, s, c, "1000") })
	c.stop()
}

// TestImageExisting is the recipe for users' own images: the `existing`
// target adds the static tl-agent to a bare Debian (no sudo, no userland
// beyond minbase) and sets the entrypoint; the agent provisions tl-user
// there natively.
func TestImageExisting(t *testing.T) {
	RequireRoot(t)
	img := buildImage(t, "existing")
	s := Start(t, Options{NoAgent: true})
	c := runContainer(t, s, img, nil)
	t.Logf("podman run to serving (existing image): %v", c.serving(s))
	if argv0 := c.argv0(1); argv0 != "/usr/local/bin/tl-agent" {
		t.Fatalf("PID 1 is %q, want tl-agent", argv0)
	}
	if out, err := c.exec("id", "-u", "tl-user"); err != nil || out != "1000" {
		t.Errorf("id -u tl-user = %q (%v), want 1000", out, err)
	}
	c.stop()
}

// smokeCommand runs a command as tl-user through POST /api/v1/processes/run.
func smokeCommand(t *testing.T, s *System, hostname string) {
	if !routeWired(t, s, "GET", "/api/v1/processes") {
		t.Skip("processes capability not wired in this build")
	}
	resp := s.Do("POST", "/api/v1/processes/run", map[string]any{
		"command": "bash", "args": []string{"-lc", "id -u; hostname; echo $HOME"},
	})
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("processes/run: status %d", resp.StatusCode)
	}
	var lines []string
	exit := -1
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Line     *string `json:"line"`
			ExitCode *int    `json:"exit_code"`
		}
		if json.Unmarshal([]byte(data), &ev) != nil {
			continue
		}
		if ev.Line != nil {
			lines = append(lines, *ev.Line)
		}
		if ev.ExitCode != nil {
			exit = *ev.ExitCode
		}
	}
	want := []string{"1234", hostname, "/home/tl-user"}
	if exit != 0 || strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("run: lines %q exit %d, want %q exit 0", lines, exit, want)
	}
}

// smokeFilesAs writes a file through the API, reads it back, and checks
// that it belongs to tl-user (uid) inside the container.
func smokeFilesAs(t *testing.T, s *System, c *container, uid string) {
	if !routeWired(t, s, "GET", "/api/v1/files/list?path=/") {
		t.Skip("files capability not wired in this build")
	}
	data := []byte(randHex(4096))
	resp := s.Do("PUT", "/api/v1/files?path=smoke/round-trip.txt", data)
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("PUT file: status %d", resp.StatusCode)
	}
	resp = s.Do("GET", "/api/v1/files?path=/home/tl-user/smoke/round-trip.txt", nil)
	var got bytes.Buffer
	_, _ = got.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("GET file: status %d, %d bytes back of %d", resp.StatusCode, got.Len(), len(data))
	}
	if out, err := c.exec("stat", "-c", "%u", "/home/tl-user/smoke/round-trip.txt"); err != nil || out != uid {
		t.Fatalf("owner of the written file = %q (%v), want %s", out, err, uid)
	}
}

// smokePTY opens a shell session and talks to it over the WebSocket.
func smokePTY(t *testing.T, s *System) {
	if !routeWired(t, s, "GET", "/api/v1/pty") {
		t.Skip("pty capability not wired in this build")
	}
	var sess struct {
		SessionID string `json:"session_id"`
		Token     string `json:"token"`
	}
	resp := s.Do("POST", "/api/v1/pty", map[string]any{"command": "bash", "rows": 24, "cols": 80})
	if err := json.NewDecoder(resp.Body).Decode(&sess); resp.StatusCode/100 != 2 || err != nil {
		t.Fatalf("POST /api/v1/pty: status %d (%v)", resp.StatusCode, err)
	}
	resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, s.WSURL()+"/api/v1/pty/"+sess.SessionID+"/ws", &websocket.DialOptions{
		Host: s.SandboxID + ".local",
		HTTPHeader: map[string][]string{
			"Authorization": {"Bearer " + s.APIKey}, "X-PTY-Token": {sess.Token},
		},
	})
	if err != nil {
		t.Fatalf("pty ws: %v", err)
	}
	defer ws.CloseNow()
	_ = ws.Write(ctx, websocket.MessageBinary, []byte{2})
	_ = ws.Write(ctx, websocket.MessageBinary, append([]byte{0}, "echo tl-$((6*7)); exit 3\n"...))
	var out bytes.Buffer
	for {
		_, msg, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("pty read: %v; output so far %q", err, out.String())
		}
		if len(msg) == 0 {
			continue
		}
		switch msg[0] {
		case 0:
			out.Write(msg[1:])
		case 3:
			if !strings.Contains(out.String(), "tl-42") || len(msg) != 5 || msg[4] != 3 {
				t.Fatalf("pty: output %q, exit frame %x", out.String(), msg)
			}
			return
		}
	}
}

// smokeSSH logs in with OpenSSH through the proxy's SSH front door and
// copies a file up and back with scp.
func smokeSSH(t *testing.T, s *System, key string) {
	if _, err := os.Stat(filepath.Join(Root(), "sshd")); err != nil {
		t.Skip("ssh capability (sshd/) not in this tree")
	}
	host, port, _ := strings.Cut(s.SSHAddr, ":")
	opts := []string{"-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR"}
	run := func(name string, args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	got := run("ssh", append(opts, "-p", port, s.SandboxID+"@"+host, "id -un; pwd")...)
	if got != "tl-user\n/home/tl-user" {
		t.Fatalf("ssh: %q, want tl-user in /home/tl-user", got)
	}
	dir := t.TempDir()
	src, back := filepath.Join(dir, "up"), filepath.Join(dir, "back")
	data := []byte(randHex(64 << 10))
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	target := s.SandboxID + "@" + host + ":scp-smoke"
	run("scp", append(opts, "-P", port, src, target)...)
	run("scp", append(opts, "-P", port, target, back)...)
	if b, _ := os.ReadFile(back); !bytes.Equal(b, data) {
		t.Fatalf("scp round trip: %d bytes back of %d", len(b), len(data))
	}
}

// sshKeyPair makes a throwaway ed25519 key and returns its private path.
func sshKeyPair(t *testing.T) string {
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	return key
}

// TestImageProxy runs the proxy image and the sandbox image as two
// containers: the agent dials the proxy container's uplink port. Both use
// the host's network (no container network stack needed on this machine);
// docs/image.md has the pod and user-network variants.
func TestImageProxy(t *testing.T) {
	RequireRoot(t)
	proxyImg, sandboxImg := buildImage(t, "proxy"), buildImage(t, "sandbox")
	dir := t.TempDir()
	token, key := randHex(32), "tl_test_"+randHex(16)
	cfg := fmt.Sprintf(`{"sandboxes": {"sbx-ctr": {"token": %q}}, "api_keys": {%q: "tester"}, "domain": "sandbox.localhost"}`, token, key)
	if err := os.WriteFile(filepath.Join(dir, "proxy.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	uplinkAddr, httpAddr := freeAddr(t), freeAddr(t)
	proxy := "tl-it-proxy-" + randHex(4)
	t.Cleanup(func() { _, _ = podman(t, "rm", "-f", "-t", "0", proxy) })
	// Flags after the image name come after the entrypoint's, and the last
	// one given wins: the container listens on this test's free ports.
	if out, err := podman(t, "run", "-d", "--pull=never", "--name", proxy, "--network=host", "-v", dir+":/etc/tl-proxy:ro",
		"--tmpfs", "/var/lib/tl-proxy", proxyImg,
		"--uplink-addr", uplinkAddr, "--http-addr", httpAddr, "--ssh-addr", ""); err != nil {
		t.Fatalf("podman run proxy: %v\n%s", err, out)
	}
	// A System with no processes of its own: the API helpers only.
	s := &System{t: t, SandboxID: "sbx-ctr", Token: token, APIKey: key, UplinkAddr: uplinkAddr, HTTPAddr: httpAddr}
	c := runContainer(t, s, sandboxImg, nil)
	t.Logf("podman run to serving (proxy in a container): %v", c.serving(s))
	c.stop()
	if out, err := podman(t, "stop", "-t", strconv.Itoa(stopTimeout), proxy); err != nil {
		t.Fatalf("podman stop proxy: %v %s", err, out)
	}
	if code, err := podman(t, "inspect", "--format", "{{.State.ExitCode}}", proxy); err != nil || code != "0" {
		logs, _ := podman(t, "logs", proxy)
		t.Fatalf("proxy exit code %q (%v), want 0\n%s", code, err, tail(logs, 20))
	}
}
