package services

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/identity"
	"github.com/tensorlake/tl-agent/process"
	"github.com/tensorlake/tl-agent/supervisor"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func names(svcs []Service) string {
	var n []string
	for _, s := range svcs {
		n = append(n, s.ServiceName())
	}
	return strings.Join(n, ",")
}

func TestLoadOrdersByDependency(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"a-web.json": `{"command": "web", "depends_on": ["db", "cache"]}`,
		"b-db.json":  `{"name": "db", "command": "db"}`,
		"cache.json": `{"command": "cache", "depends_on": ["db"]}`,
		"notes.txt":  `not a service`,
	})
	svcs, errs := Load(dir)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	if got := names(svcs); got != "db,cache,a-web" {
		t.Fatalf("boot order %s, want db,cache,a-web (each after what it depends on)", got)
	}
}

func TestLoadSkipsInvalidFilesWithTheReason(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"ok.json":       `{"command": "true"}`,
		"syntax.json":   `{"command": `,
		"typo.json":     `{"command": "x", "depends_onn": ["ok"]}`,
		"nocmd.json":    `{"args": ["x"]}`,
		"badready.json": `{"command": "x", "ready": {"type": "exec"}}`,
		"timeout.json":  `{"command": "x", "timeout": 5}`,
		"unknown.json":  `{"command": "x", "depends_on": ["ghost"]}`,
		"after.json":    `{"command": "x", "depends_on": ["unknown"]}`,
		"cyc1.json":     `{"command": "x", "depends_on": ["cyc2"]}`,
		"cyc2.json":     `{"command": "x", "depends_on": ["cyc1"]}`,
		"dup.json":      `{"name": "ok", "command": "x"}`,
	})
	svcs, errs := Load(dir)
	if got := names(svcs); got != "ok" {
		t.Fatalf("loaded %s, want only ok", got)
	}
	all := ""
	for _, e := range errs {
		all += e.Error() + "\n"
	}
	for file, why := range map[string]string{
		"syntax.json": "invalid service JSON", "typo.json": `unknown field "depends_onn"`,
		"nocmd.json": "command is required", "badready.json": "ready.command is required",
		"timeout.json": "timeout is for run only", "unknown.json": `depends_on "ghost"`,
		"after.json": "depends on a service that cannot start", "cyc1.json": "cycle",
		"cyc2.json": "cycle", "ok.json": "already declared by " + filepath.Join(dir, "dup.json"),
	} {
		if !strings.Contains(all, filepath.Join(dir, file)+": ") || !strings.Contains(all, why) {
			t.Errorf("no error naming %s with %q in:\n%s", file, why, all)
		}
	}
}

func TestLoadMissingDirIsNoServices(t *testing.T) {
	svcs, errs := Load(filepath.Join(t.TempDir(), "none"))
	if len(svcs) != 0 || len(errs) != 0 {
		t.Fatalf("got %v %v", svcs, errs)
	}
}

// newTable is a real process table running as the test's user.
func newTable(t *testing.T) (*process.Table, *supervisor.Reaper) {
	t.Helper()
	r := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	go r.Run(stop)
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	u, err := identity.Lookup(me.Username)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := process.New(process.Config{ExitGrace: 200 * time.Millisecond, User: u}, zerolog.Nop(), r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close(); close(stop) })
	return tb, r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 400 {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestManagerBootsInOrderAndStopsInReverse(t *testing.T) {
	tb, _ := newTable(t)
	tmp := t.TempDir()
	flag := filepath.Join(tmp, "db-up")
	dir := writeFiles(t, map[string]string{
		// db becomes ready when it has written its flag: an exec probe.
		"db.json": `{"command": "sh", "args": ["-c", "sleep 0.3; touch ` + flag + `; exec sleep 60"],
			"ready": {"type": "exec", "command": "test", "args": ["-e", "` + flag + `"], "interval_ms": 50}}`,
		// web may start only once db is ready.
		"web.json": `{"command": "sh", "args": ["-c", "test -e ` + flag + ` || exit 7; exec sleep 60"], "depends_on": ["db"], "restart": {"policy": "never"}}`,
	})
	svcs, errs := Load(dir)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	m := New(svcs, tb, zerolog.Nop())
	if st := m.Status(); st.Ready || st.Services[0].State != StateWaiting {
		t.Fatalf("before Start: %+v", st)
	}
	m.Start()
	waitFor(t, "all ready", func() bool { return m.Status().Ready })
	mi, ok := tb.Managed("web")
	if !ok || mi.Status != "running" {
		t.Fatalf("web is %+v, want running: it started before db was ready", mi)
	}
	m.Stop(time.Now().Add(5 * time.Second))
	for _, s := range m.Status().Services {
		if s.State != StateStopped {
			t.Errorf("%s is %s after Stop", s.Name, s.State)
		}
	}
}

func TestManagerDependentOfFailedServiceFails(t *testing.T) {
	tb, _ := newTable(t)
	dir := writeFiles(t, map[string]string{
		"gone.json": `{"command": "/no/such/program"}`,
		"next.json": `{"command": "sleep", "args": ["60"], "depends_on": ["gone"]}`,
	})
	svcs, _ := Load(dir)
	m := New(svcs, tb, zerolog.Nop())
	m.Start()
	waitFor(t, "both failed", func() bool {
		st := m.Status()
		return st.Services[0].State == StateFailed && st.Services[1].State == StateFailed
	})
	st := m.Status()
	if st.Ready || !strings.Contains(st.Services[0].Error, "/no/such/program") || !strings.Contains(st.Services[1].Error, "gone") {
		t.Fatalf("status %+v", st)
	}
	if _, ok := tb.Managed("next"); ok {
		t.Fatal("next started although what it depends on could not")
	}
	m.Stop(time.Now().Add(time.Second))
}

func TestHooksRunInOrderAndHangIsKilled(t *testing.T) {
	_, r := newTable(t)
	dir := t.TempDir()
	phase := filepath.Join(dir, OnBoot+".d")
	if err := os.MkdirAll(phase, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	for name, body := range map[string]string{
		"10-first":  "#!/bin/sh\necho first >> " + out + "\n",
		"20-hang":   "#!/bin/sh\necho hang >> " + out + "\nexec sleep 60\n",
		"30-last":   "#!/bin/sh\necho \"$TL_HOOK\" >> " + out + "\nexit 3\n",
		".hidden":   "#!/bin/sh\necho hidden >> " + out + "\n",
		"40-noexec": "",
	} {
		mode := os.FileMode(0o755)
		if name == "40-noexec" {
			mode = 0o644
		}
		if err := os.WriteFile(filepath.Join(phase, name), []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	h := &Hooks{Dir: dir, Timeout: 500 * time.Millisecond, Reaper: r, Log: zerolog.Nop()}
	res := h.Run(context.Background(), OnBoot)
	if len(res) != 3 {
		t.Fatalf("ran %d hooks, want 3 (hidden and non-executable files are not hooks): %+v", len(res), res)
	}
	if !res[1].Killed || res[0].Exit != "exit 0" || res[2].Exit != "exit 3" || res[1].Exit != "signal SIGKILL" {
		t.Fatalf("results %+v", res)
	}
	b, _ := os.ReadFile(out)
	if string(b) != "first\nhang\non-boot\n" {
		t.Fatalf("hooks ran as %q", b)
	}
}
