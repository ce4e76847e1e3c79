package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bootImage writes an image's /etc/tl-agent: boot services and hooks.
// files maps paths under it to contents; those under hooks/ are
// executable (but a README).
func bootImage(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "hooks/") && filepath.Base(name) != "README" {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// orderServices are three services as the issue names them: web depends
// on db, db has an exec readiness probe, flaky fails twice and backs off;
// plus a file that is not JSON.
func orderServices(extra map[string]string) map[string]string {
	f := map[string]string{
		"services.d/db.json": `{"command": "sh", "args": ["-c", "trap 'echo db got TERM; exit 0' TERM; sleep 0.5; touch /tmp/db-up; while :; do sleep 0.1; done"],
			"ready": {"type": "exec", "command": "test", "args": ["-e", "/tmp/db-up"], "interval_ms": 100}}`,
		"services.d/web.json": `{"command": "sh", "args": ["-c", "test -e /tmp/db-up || exit 9; trap 'echo web got TERM; exit 0' TERM; while :; do sleep 0.1; done"],
			"depends_on": ["db"], "restart": {"policy": "never"}}`,
		"services.d/flaky.json": `{"command": "sh", "args": ["-c", "n=$(cat /tmp/flaky 2>/dev/null || echo 0); echo $((n+1)) > /tmp/flaky; [ $n -ge 2 ] || exit 1; exec sleep 600"],
			"restart": {"policy": "on_failure", "initial_backoff_ms": 200}}`,
		"services.d/broken.json": `{"command": "sh", "args": [`,
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

// logIndex is the position of the first agent log line holding all of
// parts, or -1.
func logIndex(log string, parts ...string) int {
	for i, line := range strings.Split(log, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return i
		}
	}
	return -1
}

type infoBody struct {
	ServicesReady bool `json:"services_ready"`
	Services      []struct {
		Name, State, Error string
	} `json:"services"`
}

func waitInfo(t *testing.T, s *System, what string, cond func(infoBody) bool) infoBody {
	t.Helper()
	var in infoBody
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		in = infoBody{}
		s.JSON("GET", "/api/v1/info", nil, 200, &in)
		if cond(in) {
			return in
		}
	}
	t.Fatalf("info never showed %s: %+v", what, in)
	return in
}

// TestBootServices: an image's services come up in dependency order after
// its on-boot hooks, the failing one backs off, info says when all are
// ready, they are processes like any other, and shutdown runs the
// pre-shutdown hooks and stops them in reverse order.
func TestBootServices(t *testing.T) {
	RequireRoot(t)
	etc := bootImage(t, orderServices(map[string]string{
		"hooks/on-boot.d/10-mark":      "#!/bin/sh\necho hook-says-hello\ntouch /tmp/on-boot\n",
		"hooks/on-boot.d/20-hang":      "#!/bin/sh\nexec sleep 600\n",
		"hooks/pre-shutdown.d/10-bye":  "#!/bin/sh\necho bye-from-hook\n",
		"hooks/pre-shutdown.d/README":  "not executable: not a hook\n",
		"hooks/post-resume.d/10-thawn": "#!/bin/sh\necho thawed\n",
		"hooks/pre-snapshot.d/10-sync": "#!/bin/sh\necho \"syncing for $TL_HOOK\"\nexit 4\n",
	}))
	s := Start(t, Options{EtcTLAgent: etc, AgentArgs: []string{"--hook-timeout", "1s"}})

	in := waitInfo(t, s, "all services ready", func(in infoBody) bool { return in.ServicesReady })
	t.Run("info lists the valid services in boot order", func(t *testing.T) {
		var got []string
		for _, sv := range in.Services {
			got = append(got, sv.Name+"="+sv.State)
		}
		if strings.Join(got, ",") != "db=ready,flaky=ready,web=ready" {
			t.Fatalf("services %v", got)
		}
	})
	log := s.AgentLog()
	t.Run("an invalid file is logged with its name and skipped", func(t *testing.T) {
		if logIndex(log, "boot service skipped", "broken.json", "invalid service JSON") < 0 {
			t.Fatalf("no log line names broken.json and why:\n%s", tail(log, 40))
		}
	})
	t.Run("on-boot hooks run first; a hung one is killed at its deadline", func(t *testing.T) {
		hung := logIndex(log, "hook ended", "20-hang", `"killed_at_deadline":true`)
		if logIndex(log, "hook output", "hook-says-hello") < 0 || hung < 0 {
			t.Fatalf("hook output or the hung hook's kill not logged:\n%s", tail(log, 40))
		}
		if first := logIndex(log, "service started"); first < hung {
			t.Fatalf("a service started (line %d) before the on-boot hooks ended (line %d)", first, hung)
		}
	})
	t.Run("web starts only once db is ready", func(t *testing.T) {
		ready, web := logIndex(log, "service ready", `"service":"db"`), logIndex(log, "service started", `"service":"web"`)
		if ready < 0 || web < ready {
			t.Fatalf("db ready at line %d, web started at line %d", ready, web)
		}
	})
	t.Run("the failing service backed off and is a supervised process", func(t *testing.T) {
		var p struct {
			Managed struct {
				Name         string `json:"name"`
				RestartCount int    `json:"restart_count"`
				Status       string `json:"status"`
			} `json:"managed"`
		}
		s.JSON("GET", "/api/v1/processes/flaky", nil, 200, &p)
		if p.Managed.Name != "flaky" || p.Managed.RestartCount < 2 || p.Managed.Status != "running" {
			t.Fatalf("flaky: %+v", p.Managed)
		}
	})
	t.Run("a service killed through the API is stopped and info is not ready", func(t *testing.T) {
		if r := s.Do("DELETE", "/api/v1/processes/flaky", nil); r.StatusCode != 204 {
			t.Fatalf("DELETE flaky: %d", r.StatusCode)
		}
		waitInfo(t, s, "flaky stopped", func(in infoBody) bool {
			return !in.ServicesReady && len(in.Services) == 3 && in.Services[1].State == "stopped"
		})
	})
	t.Run("the control socket runs a phase's hooks on demand", func(t *testing.T) {
		out, err := exec.Command("curl", "-sS", "--unix-socket", s.ControlSocket(), "-X", "POST", "http://agent/hooks/pre-snapshot").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"name":"10-sync","exit":"exit 4"`) {
			t.Fatalf("POST /hooks/pre-snapshot: %v %s", err, out)
		}
		if logIndex(s.AgentLog(), "hook output", "syncing for pre-snapshot") < 0 {
			t.Fatal("the pre-snapshot hook's output is not in the log")
		}
		out, _ = exec.Command("curl", "-sS", "--unix-socket", s.ControlSocket(), "-X", "POST", "http://agent/hooks/nope").CombinedOutput()
		if !strings.Contains(string(out), "INVALID_PHASE") {
			t.Fatalf("an unknown phase: %s", out)
		}
	})
	t.Run("post-resume hooks run after a pause", func(t *testing.T) {
		f := newFreezer(t)
		f.addTree(s.AgentPid())
		f.freeze()
		time.Sleep(4 * time.Second) // over the pause detector's 2 s
		if err := f.thaw(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(20 * time.Second); logIndex(s.AgentLog(), "hook output", "thawed") < 0; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no post-resume hook output after a 4 s freeze:\n%s", tail(s.AgentLog(), 20))
			}
		}
	})
	t.Run("shutdown: pre-shutdown hooks, then web before db", func(t *testing.T) {
		if err := s.SignalAgent(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		s.WaitAgentExit(30 * time.Second)
		log := s.AgentLog()
		bye := logIndex(log, "hook output", "bye-from-hook")
		web, db := logIndex(log, "service stopped", `"service":"web"`), logIndex(log, "service stopped", `"service":"db"`)
		if bye < 0 || web < bye || db < web {
			t.Fatalf("pre-shutdown hook at line %d, web stopped at %d, db at %d: want that order\n%s", bye, web, db, tail(log, 30))
		}
		if logIndex(log, "README") >= 0 {
			t.Fatal("a non-executable file ran as a hook")
		}
	})
}

// TestProvisionRejectsBadServiceFiles: the image build's check names the
// bad file and why, and fails.
func TestProvisionRejectsBadServiceFiles(t *testing.T) {
	RequireRoot(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	etc := bootImage(t, orderServices(nil))
	if out, err := exec.Command("cp", "-a", etc, filepath.Join(root, "etc", "tl-agent")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	cmd := exec.Command(filepath.Join(Binaries(t), "tl-agent"), "provision", "--root", root, "--hostname", "")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	want := fmt.Sprintf("boot service: %s: invalid service JSON", filepath.Join(root, "/etc/tl-agent/services.d/broken.json"))
	if err == nil || !strings.Contains(stderr.String(), want) {
		t.Fatalf("provision --root: err %v, stderr:\n%s\nwant it to fail with %q", err, stderr.String(), want)
	}
	if strings.Count(stderr.String(), "boot service:") != 1 {
		t.Fatalf("only broken.json is bad; stderr:\n%s", stderr.String())
	}
}

// TestImageBootServices: the same services in the sandbox image under
// podman (the files mounted where an image bakes them): up in order, and
// `podman stop` stops them in reverse order within the stop timeout, with
// the orderly shutdown's checks (container.stop).
func TestImageBootServices(t *testing.T) {
	RequireRoot(t)
	img := buildImage(t, "sandbox")
	etc := bootImage(t, orderServices(nil))
	s := Start(t, Options{NoAgent: true})
	c := runContainer(t, s, img, []string{"-v", etc + ":/etc/tl-agent:ro"})
	c.serving(s)
	waitInfo(t, s, "all services ready", func(in infoBody) bool { return in.ServicesReady })
	c.stop()
	log := c.logs()
	web, db := logIndex(log, "service stopped", `"service":"web"`), logIndex(log, "service stopped", `"service":"db"`)
	flaky := logIndex(log, "service stopped", `"service":"flaky"`)
	if web < 0 || flaky < web || db < flaky {
		t.Fatalf("stopped: web at line %d, flaky at %d, db at %d: want web, flaky, db (reverse boot order)\n%s", web, flaky, db, tail(log, 30))
	}
}
