package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tensorlake/tl-agent/internal/handover"
	"github.com/tensorlake/tl-agent/supervisor"
)

// upgradeAgent is an agent wired for upgrades with a test reaper (only
// the children it starts) and the given parts.
func upgradeAgent(t *testing.T, parts ...handoverPart) *Agent {
	t.Helper()
	a, _ := lifecycleAgent(t, false)
	r := supervisor.NewReaper(zerolog.Nop(), false)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { r.Run(stop); close(done) }()
	t.Cleanup(func() { close(stop); <-done })
	a.upg.reaper, a.upg.parts = r, parts
	a.upg.markReady()
	return a
}

// fakeBinary writes a shell script that answers `version` and
// `upgrade-check` as a new build would (check is the script's body for
// upgrade-check).
func fakeBinary(t *testing.T, version, check string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tl-agent-next")
	script := "#!/bin/sh\ncase \"$1\" in\nversion) echo " + version + " ;;\nupgrade-check) " + check + " ;;\nesac\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func upgradeReq(t *testing.T, a *Agent, req UpgradeRequest) (int, map[string]any, func()) {
	t.Helper()
	code, raw, after := call(t, a, "upgrade", req)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return code, out, after
}

// Bad calls are refused before anything runs; one call at a time.
func TestUpgradeCallRefusals(t *testing.T) {
	a, _ := lifecycleAgent(t, false)
	if code, out, _ := upgradeReq(t, a, UpgradeRequest{Path: "/bin/true"}); code != http.StatusConflict || out["code"] != "UPGRADE_UNAVAILABLE" {
		t.Fatalf("an agent not wired by Main: %d %v", code, out)
	}
	a = upgradeAgent(t)
	for _, req := range []UpgradeRequest{{Path: ""}, {Path: "rel/tl-agent"}, {Path: "/x", SHA256: "abc"}, {Path: "/x", SHA256: strings.Repeat("g", 64)}} {
		if code, out, _ := upgradeReq(t, a, req); code != http.StatusBadRequest || out["code"] != "INVALID_REQUEST" {
			t.Errorf("%+v: %d %v", req, code, out)
		}
	}
	a.life.take()
	if code, out, _ := upgradeReq(t, a, UpgradeRequest{Path: "/bin/true"}); code != http.StatusConflict || out["code"] != "BUSY" {
		t.Fatalf("while another call runs: %d %v", code, out)
	}
	a.life.release()
	a.life.prepared = true
	if code, out, _ := upgradeReq(t, a, UpgradeRequest{Path: "/bin/true"}); code != http.StatusConflict || out["code"] != "PREPARED" {
		t.Fatalf("while prepared: %d %v", code, out)
	}
	a.life.prepared = false
	b := upgradeAgent(t)
	b.upg.ready = make(chan struct{})
	if code, out, _ := upgradeReq(t, b, UpgradeRequest{Path: "/bin/true"}); code != http.StatusConflict || out["code"] != "STARTING" {
		t.Fatalf("while booting: %d %v", code, out)
	}
	// Every refusal released the call's slot.
	if !a.life.take() {
		t.Fatal("a refused upgrade kept the lifecycle slot")
	}
}

// The pre-flight: the new binary's version, then its check of the state
// (fd 3, the agent's section inside), within their deadlines, output
// bounded; only an accepting check gives a plan.
func TestUpgradePreflight(t *testing.T) {
	a := upgradeAgent(t)
	ok := `head -c 10 <&3 | grep -q '"format"' && echo '{"ok":true,"version":"v2","protocol":2}'`
	for _, c := range []struct {
		name, version, check, want string
	}{
		{"accepts", "v2", ok, ""},
		{"no version", "''", ok, "not a version"},
		{"refuses", "v2", `echo '{"ok":false,"error":"pty section version 9"}'; exit 1`, "refuses the state: pty section version 9"},
		{"crashes", "v2", `echo panic: boom >&2; exit 2`, "panic: boom"},
		{"protocol", "v2", `echo '{"ok":true,"version":"v2","protocol":3}'`, "uplink protocol 3"},
		{"other version", "v2", `echo '{"ok":true,"version":"v3","protocol":2}'`, "reports version"},
		{"floods", "v2", `yes | head -c 1000000; exit 1`, "exit 1"},
		{"hangs", "v2", `sleep 600`, "no answer within"},
	} {
		a.upg.checkTimeout = 30 * time.Second
		if c.name == "hangs" {
			a.upg.checkTimeout = 300 * time.Millisecond
		}
		code, out, after := upgradeReq(t, a, UpgradeRequest{Path: fakeBinary(t, c.version, c.check)})
		if c.want == "" {
			if code != http.StatusAccepted || out["to"] != "v2" || after == nil {
				t.Fatalf("%s: %d %v", c.name, code, out)
			}
			a.life.release() // the exec step is not run here
			continue
		}
		msg, _ := out["error"].(string)
		if code != http.StatusConflict || out["code"] != "UPGRADE_REFUSED" || !strings.Contains(msg, c.want) {
			t.Errorf("%s: %d %v; want a refusal with %q", c.name, code, out, c.want)
		}
		if check, _ := out["check"].(string); len(check) > maxChildOutput {
			t.Errorf("%s: %d bytes of output kept, the bound is %d", c.name, len(check), maxChildOutput)
		}
	}
	st := a.upg.status()
	if st.Last == nil || st.Last.Result != "refused" || st.Upgrades != 0 || st.State != "idle" {
		t.Fatalf("status after the pre-flights: %+v", st)
	}
}

// A sha256 that differs refuses the binary before it runs; a FIFO or a
// device is refused at once (opening a FIFO does not wait for a writer).
func TestUpgradeChecksum(t *testing.T) {
	a := upgradeAgent(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fifo, "/dev/null", "/"} {
		code, out, _ := upgradeReq(t, a, UpgradeRequest{Path: p})
		if msg, _ := out["error"].(string); code != http.StatusConflict || !strings.Contains(msg, "not a regular file") {
			t.Errorf("%s: %d %v", p, code, out)
		}
	}
	p := fakeBinary(t, "v2", `echo '{"ok":true,"version":"v2","protocol":2}'`)
	code, out, _ := upgradeReq(t, a, UpgradeRequest{Path: p, SHA256: strings.Repeat("00", 32)})
	if msg, _ := out["error"].(string); code != http.StatusConflict || !strings.Contains(msg, "sha256 mismatch") {
		t.Fatalf("%d %v", code, out)
	}
}

// fakePart is a part that records what the flow asked of it.
type fakePart struct {
	calls  []string
	refuse bool
}

type fakeSection struct {
	Version int `json:"version"`
}

func (p *fakePart) Freeze() { p.calls = append(p.calls, "freeze") }
func (p *fakePart) Thaw()   { p.calls = append(p.calls, "thaw") }
func (p *fakePart) Save(w *handover.Writer) error {
	p.calls = append(p.calls, "save")
	return w.Put("fake", fakeSection{Version: 1})
}
func (p *fakePart) Restore(r *handover.Reader, _ *supervisor.Reaper) error {
	p.calls = append(p.calls, "restore")
	var s fakeSection
	if ok, err := r.Section("fake", &s); err != nil || !ok || s.Version != 1 || p.refuse {
		return errors.New("fake section refused")
	}
	return nil
}

// The agent's own section round-trips and is checked in the dry run: the
// identity, link secrets, environment and the old binary's reference.
func TestAgentSectionRoundTrip(t *testing.T) {
	part := &fakePart{}
	a := upgradeAgent(t, part)
	a.secrets.set([]byte("link-secret-0123456789"))
	w, old, err := a.snapshot(UpgradeRecord{ID: "x1", From: "test", To: "v2"})
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	b, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	r, err := handover.Decode(b, true)
	if err != nil {
		t.Fatal(err)
	}
	var sec agentSection
	if ok, err := r.Section("agent", &sec); !ok || err != nil {
		t.Fatalf("agent section: %v %v", ok, err)
	}
	if sec.SandboxID != "sbx-a" || sec.Token == "" || len(sec.LinkSecrets) != 1 || sec.Upgrade.ID != "x1" || sec.Started.IsZero() {
		t.Fatalf("agent section %+v", sec)
	}
	if err := checkAgentSection(sec, r); err != nil {
		t.Fatal(err)
	}
	if _, err := r.File(sec.OldBinary); err != nil {
		t.Fatalf("old binary ref: %v", err)
	}
	if err := part.Restore(r, nil); err != nil || strings.Join(part.calls, ",") != "save,restore" {
		t.Fatalf("part: %v, calls %v", err, part.calls)
	}
	for _, bad := range []agentSection{
		{Version: 2, SandboxID: "sbx-a", Token: "t"},
		{Version: 1, SandboxID: "Bad Id", Token: "t"},
		{Version: 1, SandboxID: "sbx-a"},
		{Version: 1, SandboxID: "sbx-a", Token: "t", MainPid: 12345},
		{Version: 1, SandboxID: "sbx-a", Token: "t", SSHHostKey: []byte("short")},
	} {
		if err := checkAgentSection(bad, r); err == nil {
			t.Errorf("section %+v was accepted", bad)
		}
	}
}

// An exec that fails (here: a file without an execute bit, EACCES) undoes
// everything: the parts thaw, the reaper reaps again, the gate opens, the
// kept fds are close-on-exec again, and the status says why.
func TestUpgradeExecFailureUndone(t *testing.T) {
	part := &fakePart{}
	a := upgradeAgent(t, part)
	p := filepath.Join(t.TempDir(), "not-executable")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	a.upg.setState("upgrading")
	a.execUpgrade(&upgradePlan{bin: bin, path: p, rec: UpgradeRecord{ID: "e1", From: "test", To: "v2"}})
	if got := strings.Join(part.calls, ","); got != "freeze,save,thaw" {
		t.Fatalf("part calls %q, want freeze,save,thaw", got)
	}
	st := a.upg.status()
	if st.State != "idle" || st.Last == nil || st.Last.Result != "failed" || !strings.Contains(st.Last.Error, "permission denied") {
		t.Fatalf("status %+v %+v", st, st.Last)
	}
	if !a.gate.wait(context.Background(), 0) {
		t.Fatal("the gate stayed closed")
	}
	// The reaper reaps again.
	proc, err := a.upg.reaper.Start(exec.Command("true"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-proc.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the reaper did not resume")
	}
}

// saveOnly is a part with no fds: Save and Restore, no Freeze.
type saveOnly struct{ calls []string }

func (*saveOnly) Routes(*http.ServeMux)                              {}
func (*saveOnly) Save(*handover.Writer) error                        { return nil }
func (*saveOnly) Restore(*handover.Reader, *supervisor.Reaper) error { return nil }

type frozenCap struct{ fakePart }

func (*frozenCap) Routes(*http.ServeMux) {}
func (p *frozenCap) Freeze()             { p.calls = append(p.calls, "freeze") }
func (p *frozenCap) Thaw()               { p.calls = append(p.calls, "thaw") }

// Parts are found by what they implement: Save and Restore make a part,
// Freeze and Thaw are called when it has them; other capabilities are
// left out.
func TestHandoverPartsFound(t *testing.T) {
	so, fc := &saveOnly{}, &frozenCap{}
	got := handoverParts(Parts{Caps: []Capability{fc, noPart{}, so}})
	if len(got) != 2 || got[0] != handoverPart(fc) || got[1] != handoverPart(so) {
		t.Fatalf("parts %v", got)
	}
	for _, p := range got {
		freeze(p)
		thaw(p)
	}
	if strings.Join(fc.calls, ",") != "freeze,thaw" || len(so.calls) != 0 {
		t.Fatalf("calls %v %v", fc.calls, so.calls)
	}
}

type noPart struct{}

func (noPart) Routes(*http.ServeMux) {}

type stopping struct{}

func (stopping) ShutdownRequested() bool { return true }

// A shutdown signal that came meanwhile stops the exec (the new binary
// would never see it): undone, reported, and the shutdown goes on.
func TestUpgradeNoExecWhileShuttingDown(t *testing.T) {
	a := upgradeAgent(t)
	a.upg.sigs = stopping{}
	p := filepath.Join(t.TempDir(), "not-executable") // were the check gone, the exec still fails
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	a.execUpgrade(&upgradePlan{bin: bin, path: p, rec: UpgradeRecord{ID: "s1"}})
	if st := a.upg.status(); st.Last == nil || st.Last.Result != "failed" || !strings.Contains(st.Last.Error, "shutting down") {
		t.Fatalf("status %+v", st.Last)
	}
}

// A child's output in an answer is printable and bounded so the answer
// fits a lifecycle stream whatever the child printed.
func TestUpgradeAnswerText(t *testing.T) {
	garbage := strings.Repeat("\x00<\xff", 20000)
	got := answerText(garbage)
	raw, _ := json.Marshal(map[string]string{"check": got, "error": answerText(garbage)})
	if len(raw) > 64<<10 || strings.ContainsRune(got, 0) {
		t.Fatalf("answer of %d bytes (the lifecycle bound is 64 KiB)", len(raw))
	}
	if answerText("line 1\nok\t2") != "line 1\nok\t2" {
		t.Fatal("newlines and tabs must stay")
	}
}
